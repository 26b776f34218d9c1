"""Training: the collator's tensors, the token-mean loss, real steps on a tiny model, auto-resume, argument
parsing, bad-data handling, W&B mode, and two-process DeepSpeed ZeRO-3 training that resumes from its checkpoint.

Everything runs on the CPU with the tiny random Qwen2.5-VL and synthetic videos written here.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from streaming_vlm.data.annotations import build_seek_index
from streaming_vlm.data.collator import EmptyBatchError, StreamingCollator
from streaming_vlm.data.sample import IGNORE_INDEX, SampleBuilder, SampleConfig, TrainingSample
from streaming_vlm.synthetic import write_synthetic_video

REPO = Path(__file__).resolve().parents[1]
SMALL_PIXELS = ["--min_pixels", "3136", "--max_pixels", "12544"]  # 12 LLM tokens per 1-s chunk of 160x112 video


def record(video: str, words: list, previous: str = "earlier words", start: float = 0, end: float = 4) -> list:
    """One annotation line in the Inf-Stream-Train format, written by hand."""
    return [
        {
            "role": "user",
            "content": [
                {"type": "video", "video": video, "video_start": start, "video_end": end},
                {"type": "text", "text": "", "previous": previous},
            ],
        },
        {"role": "assistant", "content": [{"type": "text_stream", "text_stream": words}]},
    ]


WORDS_A = [[0.2, 0.6, "red"], [1.1, 1.5, "ball"], [2.2, 2.5, "goal"]]
WORDS_B = [[0.1, 0.4, "the"], [0.5, 0.9, "striker"], [1.2, 1.6, "shoots"], [3.0, 3.4, "and"], [3.5, 3.9, "scores"]]


def write_jsonl(path: Path, lines: list) -> Path:
    """Write lines (objects become JSON, strings go verbatim) and the seek index beside them."""
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    path.write_text(text, encoding="utf-8")
    build_seek_index(path)
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sft_data")
    write_synthetic_video(root / "clip.mp4", 4)
    write_jsonl(root / "train_with_seeks.jsonl", [record("clip.mp4", WORDS_A), record("clip.mp4", WORDS_B)])
    write_jsonl(root / "repeat_with_seeks.jsonl", [record("clip.mp4", WORDS_A)])
    write_jsonl(root / "one_bad_with_seeks.jsonl", [record("clip.mp4", WORDS_B), "{broken"])
    return root


@pytest.fixture(scope="module")
def builder(tiny_model_dir) -> SampleBuilder:
    from transformers import AutoTokenizer

    from streaming_vlm.preprocess import VisionSpec

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = SampleConfig(min_pixels=3136, max_pixels=12544)
    return SampleBuilder(tokenizer, VisionSpec.from_pretrained(tiny_model_dir), config, tokens_per_second=2)


# ------------------------------------------------------------------------------------------------------------
# Collator
# ------------------------------------------------------------------------------------------------------------


def _sample(ids, labels, positions, frames=None, grid=None) -> TrainingSample:
    ids = torch.tensor(ids)
    return TrainingSample(
        input_ids=ids,
        labels=torch.tensor(labels),
        position_ids=torch.tensor(positions),
        video_frames=frames if frames is not None else torch.zeros(0, 28, 28, 3, dtype=torch.uint8),
        video_grid_thw=torch.tensor(grid if grid is not None else []).reshape(-1, 3),
    )


def test_collator_pads_right_and_concatenates_videos():
    frames1 = torch.full((2, 28, 28, 3), 1, dtype=torch.uint8)  # one chunk of 2 x 2 patches
    frames2 = torch.arange(4 * 28 * 56 * 3).remainder(251).to(torch.uint8).reshape(4, 28, 56, 3)  # 2 chunks of 2 x 4
    s1 = _sample([5, 6, 7], [-100, 6, 7], [[0, 1, 2], [0, 1, 1], [0, 2, 3]], frames1, [[1, 2, 2]])
    s2 = _sample(
        [8, 9, 10, 11, 12],
        [-100, -100, 10, 11, 12],
        [[0, 1, 2, 3, 4], [0, 1, 1, 2, 4], [0, 1, 2, 2, 4]],
        frames2,
        [[1, 2, 4], [1, 2, 4]],
    )
    batch = StreamingCollator(pad_token_id=99)([s1, None, s2])

    assert set(batch) == {
        "input_ids",
        "labels",
        "attention_mask",
        "position_ids",
        "video_frames",
        "video_grid_thw",
    }
    assert torch.equal(batch["input_ids"], torch.tensor([[5, 6, 7, 99, 99], [8, 9, 10, 11, 12]]))
    assert torch.equal(batch["labels"], torch.tensor([[-100, 6, 7, -100, -100], [-100, -100, 10, 11, 12]]))
    assert torch.equal(batch["attention_mask"], torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]))
    assert batch["position_ids"].shape == (3, 2, 5)
    expected_positions = torch.tensor(
        [
            [[0, 1, 2, 0, 0], [0, 1, 2, 3, 4]],
            [[0, 1, 1, 0, 0], [0, 1, 1, 2, 4]],
            [[0, 2, 3, 0, 0], [0, 1, 2, 2, 4]],
        ]
    )
    assert torch.equal(batch["position_ids"], expected_positions)
    assert torch.equal(batch["video_frames"], torch.cat([frames1.reshape(-1), frames2.reshape(-1)]))
    assert batch["video_frames"].dtype == torch.uint8
    assert torch.equal(batch["video_grid_thw"], torch.tensor([[1, 2, 2], [1, 2, 4], [1, 2, 4]]))
    assert all(t.dtype == torch.long for k, t in batch.items() if k != "video_frames")


def test_collator_text_only_batch_and_empty_batch():
    s = _sample([1, 2], [-100, 2], [[0, 1]] * 3)
    batch = StreamingCollator(pad_token_id=0, position_pad=7)([s, _sample([3], [3], [[0]] * 3)])
    assert "pixel_values_videos" not in batch and "video_grid_thw" not in batch
    assert torch.equal(batch["position_ids"][:, 1], torch.tensor([[0, 7]] * 3))
    with pytest.raises(EmptyBatchError, match="all 2 sample"):
        StreamingCollator(pad_token_id=0)([None, None])
    with pytest.raises(ValueError, match="disagree"):
        StreamingCollator(pad_token_id=0)([_sample([1, 2], [1, 2], [[0, 1]] * 2)])


# ------------------------------------------------------------------------------------------------------------
# Loss
# ------------------------------------------------------------------------------------------------------------


def _text_sample(generator, length: int, supervised: list[int]) -> TrainingSample:
    ids = torch.randint(0, 300, (length,), generator=generator)
    labels = torch.full((length,), IGNORE_INDEX)
    labels[supervised] = ids[supervised]
    return TrainingSample(
        ids,
        labels,
        torch.arange(length).expand(3, -1).clone(),
        torch.zeros(0, 28, 28, 3, dtype=torch.uint8),
        torch.zeros(0, 3, dtype=torch.long),
    )


def _hand_nll(model, batch) -> list[torch.Tensor]:
    """Negative log-likelihood of every supervised token, from the full logits, one at a time."""
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]
    ).logits
    logp = torch.log_softmax(logits.double(), dim=-1)
    out = []
    labels = batch["labels"]
    for b in range(labels.shape[0]):
        for i in range(1, labels.shape[1]):
            if labels[b, i] != IGNORE_INDEX:
                out.append(-logp[b, i - 1, labels[b, i]])
    return out


def test_loss_is_the_token_mean_over_the_accumulation_window(tiny_model_dir, tmp_path):
    from transformers import Qwen2_5_VLForConditionalGeneration, TrainingArguments

    from streaming_vlm.train.trainer import StreamingSFTTrainer

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", gradient_accumulation_steps=2)
    trainer = StreamingSFTTrainer(model=model, args=args)
    g = torch.Generator().manual_seed(0)
    collate = StreamingCollator(pad_token_id=0)
    # micro-batch A: two rows (one padded), 2 + 1 targets, plus a label at position 0 that nothing predicts
    batch_a = collate([_text_sample(g, 7, [0, 3, 4]), _text_sample(g, 4, [2])])
    # micro-batch B: one longer row with 6 targets
    batch_b = collate([_text_sample(g, 12, [5, 6, 7, 8, 9, 11])])

    batches, n = trainer.get_batch_samples(iter([batch_a, batch_b]), 2, torch.device("cpu"))
    assert len(batches) == 2 and int(n) == 9

    model.eval()
    with torch.no_grad():
        loss_a = trainer.compute_loss(model, batch_a, num_items_in_batch=n)
        loss_b = trainer.compute_loss(model, batch_b, num_items_in_batch=n)
        nll_a, nll_b = _hand_nll(model, batch_a), _hand_nll(model, batch_b)
        assert len(nll_a) == 3 and len(nll_b) == 6
        hand = torch.stack(nll_a + nll_b).mean()
        torch.testing.assert_close((loss_a + loss_b).double(), hand, rtol=1e-5, atol=1e-6)
        # without a window count (evaluation) it is the micro-batch's own token mean
        torch.testing.assert_close(
            trainer.compute_loss(model, batch_a).double(), torch.stack(nll_a).mean(), rtol=1e-5, atol=1e-6
        )

    # the Trainer does not divide an already window-normalised loss by the accumulation steps again
    step_loss = trainer.training_step(model, batch_a, num_items_in_batch=n)
    torch.testing.assert_close(step_loss, loss_a, rtol=1e-5, atol=1e-6)

    trainer.log({"loss": 1.0})
    assert trainer.state.log_history[-1]["supervised_tokens"] == 9
    trainer.log({"eval_loss": 1.0})
    assert "supervised_tokens" not in trainer.state.log_history[-1]


def test_weighted_words_make_the_loss_a_weighted_mean_over_the_window(tiny_model_dir, tmp_path):
    from transformers import Qwen2_5_VLForConditionalGeneration, TrainingArguments

    from streaming_vlm.train.trainer import StreamingSFTTrainer

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    collate = StreamingCollator(pad_token_id=0)
    batch_a = collate([_text_sample(g, 9, [1, 3, 4, 6]), _text_sample(g, 5, [2, 4])])
    batch_b = collate([_text_sample(g, 12, [5, 6, 8, 9, 11])])
    heavy = {int(batch_a["labels"][0, 3]), int(batch_b["labels"][0, 8])}  # two targets' token ids weigh 4
    weights = torch.ones(model.config.get_text_config().vocab_size)
    weights[sorted(heavy)] = 4.0
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", gradient_accumulation_steps=2)
    trainer = StreamingSFTTrainer(model=model, args=args, token_weights=weights)

    def hand(batch):  # (nll, weight) of every supervised target, read from the labels independently
        nll = _hand_nll(model, batch)
        targets = [int(t) for t in batch["labels"][:, 1:].reshape(-1) if t != IGNORE_INDEX]
        return nll, [4.0 if t in heavy else 1.0 for t in targets]

    batches, n = trainer.get_batch_samples(iter([batch_a, batch_b]), 2, torch.device("cpu"))
    model.eval()
    with torch.no_grad():
        (nll_a, w_a), (nll_b, w_b) = hand(batch_a), hand(batch_b)
        assert len(nll_a) == 6 and len(nll_b) == 5 and sum(w_a + w_b) >= 11 + 6  # the heavy tokens are targets
        assert float(n) == pytest.approx(sum(w_a + w_b))
        loss = trainer.compute_loss(model, batch_a, num_items_in_batch=n) + trainer.compute_loss(
            model, batch_b, num_items_in_batch=n
        )
        nll, w = torch.stack(nll_a + nll_b), torch.tensor(w_a + w_b, dtype=torch.float64)
        torch.testing.assert_close(loss.double(), (nll * w).sum() / w.sum(), rtol=1e-5, atol=1e-6)
        # the weighted mean differs from the plain one (the test would not tell them apart otherwise)
        assert abs(float(loss) - float(nll.mean())) > 1e-3
        torch.testing.assert_close(  # evaluation: the micro-batch's own weighted mean
            trainer.compute_loss(model, batch_a).double(),
            (torch.stack(nll_a) * torch.tensor(w_a, dtype=torch.float64)).sum() / sum(w_a),
            rtol=1e-5,
            atol=1e-6,
        )
    trainer.log({"loss": 1.0})
    assert trainer.state.log_history[-1]["supervised_tokens"] == 11  # tokens, not weights


def test_right_padded_batches_drop_the_mask_under_sdpa_with_the_same_loss_and_gradients(tiny_model_dir, tmp_path):
    from transformers import Qwen2_5_VLForConditionalGeneration, TrainingArguments

    from streaming_vlm.train.trainer import StreamingSFTTrainer

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32,
                                                               attn_implementation="sdpa")
    trainer = StreamingSFTTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to="none"))
    g = torch.Generator().manual_seed(2)
    # rows of 31, 9 and 20 tokens: 22 and 11 pads after the shorter rows' last real token
    batch = StreamingCollator(pad_token_id=0)(
        [_text_sample(g, 31, [3, 8, 17, 30]), _text_sample(g, 9, [2, 5, 8]), _text_sample(g, 20, [4, 19])]
    )
    seen: list[dict] = []
    model.register_forward_pre_hook(lambda _m, _a, kw: seen.append(dict(kw)), with_kwargs=True)

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    fast = trainer.compute_loss(model, batch)
    assert "attention_mask" not in seen[-1]  # the causal rule alone (SDPA's causal kernel)
    fast_grads = grads(fast)
    # the reference: the same token mean from the full logits computed with the padding mask
    nll = _hand_nll(model, batch)
    assert seen[-1]["attention_mask"] is batch["attention_mask"]
    reference = torch.stack(nll).mean()
    torch.testing.assert_close(fast.double(), reference, rtol=1e-6, atol=1e-7)
    ref_grads = grads(reference.float())
    assert fast_grads.keys() == ref_grads.keys() and len(fast_grads) > 10
    for name, grad in fast_grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)

    # a mask that is not right padding (a pad before a real token) goes to the model as it is
    odd = dict(batch, attention_mask=batch["attention_mask"].clone())
    odd["attention_mask"][0, 2] = 0
    trainer.compute_loss(model, odd)
    assert seen[-1]["attention_mask"] is odd["attention_mask"]
    # under eager attention the mask is kept whatever its shape
    model.config._attn_implementation = "eager"
    trainer.compute_loss(model, batch)
    assert seen[-1]["attention_mask"] is batch["attention_mask"]


def test_word_token_weights_weigh_each_words_one_token(tiny_model_dir):
    from transformers import AutoTokenizer

    from streaming_vlm.data.dataset import DatasetSetupError
    from streaming_vlm.train.trainer import word_token_weights

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    vocab = len(tokenizer) + 8
    def one_token(word):
        return len(tokenizer.encode(" " + word, add_special_tokens=False)) == 1

    single = [w for w in ("the", "a", "and", "is", "of", "to", "in") if one_token(w)][:2]
    assert len(single) == 2, "the tiny tokenizer should hold a few common words as one token"
    weights = word_token_weights(tokenizer, single, 3.0, vocab)
    ids = [tokenizer.encode(" " + w, add_special_tokens=False)[0] for w in single]
    assert weights.shape == (vocab,) and weights[ids].tolist() == [3.0, 3.0]
    assert float(weights.sum()) == vocab - 2 + 6.0
    assert word_token_weights(tokenizer, single, 1.0, vocab) is None
    assert word_token_weights(tokenizer, [], 3.0, vocab) is None
    long_word = "antidisestablishmentarianism"
    assert not one_token(long_word)
    with pytest.raises(DatasetSetupError, match="antidisestablishmentarianism.* not one"):
        word_token_weights(tokenizer, [long_word], 3.0, vocab)
    with pytest.raises(DatasetSetupError, match="word_loss_weight must be > 0"):
        word_token_weights(tokenizer, single, -1.0, vocab)


# ------------------------------------------------------------------------------------------------------------
# Real training steps
# ------------------------------------------------------------------------------------------------------------


def _argv(tiny_model_dir, data_dir, out, *extra) -> list[str]:
    return [
        "--pretrained_model_name_or_path", str(tiny_model_dir),
        "--dataset_path", str(data_dir),
        "--output_dir", str(out),
        "--report_to", "none",
        "--dataloader_num_workers", "0",
        "--disable_tqdm", "true",
        "--logging_steps", "1",
        *SMALL_PIXELS,
        *extra,
    ]  # fmt: skip


def test_five_steps_reduce_the_loss_and_touch_only_trainable_parameters(tiny_model_dir, data_dir, tmp_path):
    from streaming_vlm.train.args import parse_args
    from streaming_vlm.train.trainer import build_trainer

    # one record listed five times (the upsampling path), one sample per step: the same batch every step
    argv = _argv(
        tiny_model_dir, data_dir, tmp_path / "out",
        "--train_annotation_paths", *["repeat_with_seeks.jsonl"] * 5,
        "--eval_annotation_paths", "train_with_seeks.jsonl",
        "--max_steps", "5", "--learning_rate", "1e-3", "--lr_scheduler_type", "constant",
        "--per_device_train_batch_size", "1", "--gradient_checkpointing", "true", "--save_strategy", "no",
    )  # fmt: skip
    trainer = build_trainer(*parse_args(argv))
    assert len(trainer.train_dataset) == 5
    model = trainer.model
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any(".visual." in f".{name}" for name in trainable)

    trainer.train()

    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    losses = [entry["loss"] for entry in logs]
    assert len(losses) == 5 and losses[-1] < losses[0] - 0.5, losses
    assert all(entry["supervised_tokens"] == logs[0]["supervised_tokens"] > 0 for entry in logs)
    for name, p in model.named_parameters():
        changed = not torch.equal(p.detach(), before[name])
        assert changed == (name in trainable), f"{name}: changed={changed}, trainable={name in trainable}"
    metrics = trainer.evaluate()
    assert torch.isfinite(torch.tensor(metrics["eval_loss"]))


def test_train_merger_keeps_only_the_merger_of_the_vision_tower_trainable(tiny_model_dir, tmp_path):
    from transformers import TrainingArguments

    from streaming_vlm.train.args import ModelArguments
    from streaming_vlm.train.trainer import prepare_model

    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    model, tokenizer = prepare_model(ModelArguments(str(tiny_model_dir), train_merger=True), args)
    visual = model.model.visual
    assert all(p.requires_grad for p in visual.merger.parameters())
    assert not any(p.requires_grad for n, p in visual.named_parameters() if not n.startswith("merger."))
    assert all(p.requires_grad for p in model.model.language_model.parameters())
    assert model.config.use_cache is False and tokenizer.pad_token_id is not None


def test_vision_learning_rate_gives_the_tower_its_own_scheduled_groups(tiny_model_dir, data_dir, tmp_path):
    from streaming_vlm.train.args import parse_args
    from streaming_vlm.train.trainer import build_trainer

    argv = _argv(
        tiny_model_dir, data_dir, tmp_path / "out", "--train_annotation_paths", "repeat_with_seeks.jsonl",
        "--freeze_vision_tower", "false", "--learning_rate", "1e-3", "--vision_learning_rate", "4e-3",
        "--weight_decay", "0.1", "--lr_scheduler_type", "linear", "--max_steps", "2", "--save_strategy", "no",
    )  # fmt: skip
    trainer = build_trainer(*parse_args(argv))
    model = trainer.model
    tower = {id(p) for p in model.model.visual.parameters()}
    trainer.create_optimizer_and_scheduler(num_training_steps=2)
    groups = trainer.optimizer.param_groups
    for g in groups:
        ids = {id(p) for p in g["params"]}
        assert not ids or ids <= tower or not ids & tower  # no group mixes tower and language model
        assert g["lr"] == (4e-3 if ids & tower else 1e-3)
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in model.parameters()}
    assert sorted(g["weight_decay"] for g in groups if {id(p) for p in g["params"]} & tower) == [0.0, 0.1]
    trainer.optimizer.step()
    trainer.lr_scheduler.step()  # one of two linear steps: every rate halves, the ratio stays
    assert sorted({g["lr"] for g in groups}) == pytest.approx([5e-4, 2e-3])


def test_weights_are_float32_master_copies_unless_deepspeed_keeps_them(tiny_model_dir):
    from types import SimpleNamespace

    from streaming_vlm.train.args import ModelArguments
    from streaming_vlm.train.trainer import load_dtype

    def dtype(load="auto", deepspeed=None, bf16=True):
        return load_dtype(ModelArguments(str(tiny_model_dir), load_dtype=load),
                          SimpleNamespace(deepspeed=deepspeed, bf16=bf16, fp16=False))

    assert dtype() == torch.float32  # bf16 without DeepSpeed: autocast over float32 weights
    assert dtype(deepspeed="configs/zero3.json") == torch.bfloat16
    assert dtype(deepspeed="configs/zero3.json", bf16=False) == torch.float32
    assert dtype("bfloat16") == torch.bfloat16
    with pytest.raises(ValueError, match="load_dtype must be"):
        dtype("int8")


def test_auto_resume_picks_the_newest_complete_checkpoint(tmp_path):
    from streaming_vlm.train.trainer import find_resume_checkpoint

    assert find_resume_checkpoint(tmp_path / "missing") is None
    assert find_resume_checkpoint(tmp_path) is None
    for step, complete in ((2, True), (10, True), (9, True), (12, False)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"")
        if complete:
            (d / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-final").mkdir()
    (tmp_path / "checkpoint-final" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-99").write_text("a file, not a checkpoint")
    # checkpoint-12 has no trainer_state.json (cut short): ignored; 10 beats 9 numerically, not by name
    assert find_resume_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")


# ------------------------------------------------------------------------------------------------------------
# Arguments
# ------------------------------------------------------------------------------------------------------------


def test_resumed_run_equals_the_uninterrupted_run(tiny_model_dir, data_dir, tmp_path):
    """Two steps, a checkpoint, then a resumed third: the weights of three steps in one go (the resumed run starts
    from the checkpoint's weights, not from the pretrained ones)."""
    from safetensors.torch import load_file

    from streaming_vlm.train.args import parse_args
    from streaming_vlm.train.trainer import run_training

    def train(out, steps):
        run_training(*parse_args(_argv(
            tiny_model_dir, data_dir, out,
            "--train_annotation_paths", *["repeat_with_seeks.jsonl"] * 5,
            "--max_steps", str(steps), "--learning_rate", "1e-3", "--lr_scheduler_type", "constant",
            "--per_device_train_batch_size", "1", "--save_strategy", "steps", "--save_steps", "2",
        )))  # fmt: skip
        return load_file(out / "model.safetensors")

    straight = train(tmp_path / "straight", 3)
    after_two = train(tmp_path / "cut", 2)
    resumed = train(tmp_path / "cut", 3)
    assert straight.keys() == resumed.keys()
    assert any(not torch.equal(after_two[k], resumed[k]) for k in resumed)
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], msg=k)


def test_yaml_config_with_command_line_overrides(tmp_path):
    from streaming_vlm.train.args import ConfigError, parse_args

    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "# a test run\n"
        "# Launch: python -m streaming_vlm.train --config run.yaml\n"
        "pretrained_model_name_or_path: some/model\n"
        "train_annotation_paths: [a.jsonl, a.jsonl, b.jsonl]\n"
        "learning_rate: 1e-5\n"  # YAML 1.1 reads this as a string: converted by the argument's type
        "text_sink: null\n"
        "text_sliding_window: 128\n"
        "gradient_accumulation_steps: 64\n"
        "freeze_vision_tower: true\n"
        "output_dir: out\n"
        "report_to: none\n"
    )
    model_args, data_args, training_args = parse_args(
        ["--config", str(cfg), "--text_sliding_window", "64", "--learning_rate", "3e-4", "--train_merger", "true"]
    )
    assert model_args.pretrained_model_name_or_path == "some/model"
    assert model_args.freeze_vision_tower is True and model_args.train_merger is True
    assert data_args.train_annotation_paths == ["a.jsonl", "a.jsonl", "b.jsonl"]
    assert data_args.text_sink is None and data_args.text_sliding_window == 64
    assert training_args.learning_rate == pytest.approx(3e-4)
    assert training_args.gradient_accumulation_steps == 64
    sample_config = data_args.sample_config()
    assert sample_config.text_sink is None and sample_config.text_window == 64

    _, _, training_args = parse_args(["--config", str(cfg)])
    assert training_args.learning_rate == pytest.approx(1e-5)

    bad = tmp_path / "bad.yaml"
    bad.write_text("pretrained_model_name_or_path: m\ntrain_annotation_paths: [a]\nlearnig_rate: 1\n")
    unknown = r"bad\.yaml: unknown key\(s\): learnig_rate \(did you mean learning_rate\?\)"
    with pytest.raises(ConfigError, match=unknown):
        parse_args(["--config", str(bad)])
    with pytest.raises(SystemExit):
        parse_args(["--config", str(cfg), "--no_such_flag", "1"])
    with pytest.raises(ConfigError, match="train_annotation_paths is required"):
        parse_args(["--pretrained_model_name_or_path", "m", "--output_dir", "o", "--report_to", "none"])


def test_data_arguments_are_the_stream_settings_under_the_reference_names(tmp_path):
    """Defaults, help and checks of the data arguments that are stream settings come from settings.py; a window
    takes 'unlimited' as inference does (YAML and command line, the command line winning); a bad value is one
    ConfigError naming the argument as training spells it."""
    import dataclasses

    from streaming_vlm import settings
    from streaming_vlm.train.args import TRAINING_ALIASES, ConfigError, DataArguments, parse_args

    ours = {f.name: f for f in dataclasses.fields(DataArguments)}
    for name in ("text_sink", "text_sliding_window", "fps", "min_pixels", "max_pixels", "total_pixels", "max_frames",
                 "query"):  # fmt: skip
        setting = {f.name: f for f in dataclasses.fields(settings.StreamSettings)}[TRAINING_ALIASES.get(name, name)]
        assert (ours[name].default, dict(ours[name].metadata)) == (setting.default, {"help": setting.metadata["help"]})
    base = ["--pretrained_model_name_or_path", "m", "--train_annotation_paths", "a.jsonl", "--output_dir", "o",
            "--report_to", "none"]
    cfg = tmp_path / "run.yaml"
    cfg.write_text("text_sink: unlimited\ntext_sliding_window: 7\nfps: 4\n")
    _, data_args, _ = parse_args(["--config", str(cfg), *base, "--text_sliding_window", "none"])
    assert (data_args.text_sink, data_args.text_sliding_window, data_args.fps) == (None, None, 4.0)
    assert data_args.sample_config() == SampleConfig(text_sink=None, text_window=None, fps=4.0)
    _, data_args, _ = parse_args(["--config", str(cfg), *base, "--text-sink", "3"])
    assert (data_args.text_sink, data_args.text_sliding_window) == (3, 7)
    bad = {
        "--fps=3": "even whole number of frames per chunk, got 3 * 1 = 3",
        "--min_pixels=5000 --max_pixels=3136": "--min-pixels (5000) is larger than --max-pixels (3136)",
        "--text_sliding_window=-1": "--text_sliding_window: expected an integer >= 0 or 'unlimited', got '-1'",
        "--text_sliding_window=lots": "--text_sliding_window: expected an integer >= 0 or 'unlimited', got 'lots'",
    }
    for flags, words in bad.items():
        with pytest.raises(ConfigError) as caught:
            parse_args([*base, *flags.split()])
        assert str(caught.value) == words or str(caught.value).endswith(words), flags
    cfg.write_text("text_sliding_window: -2\n")
    with pytest.raises(ConfigError, match=r"^text_sliding_window must be >= 0 or None \(unlimited\), got -2$"):
        parse_args(["--config", str(cfg), *base])


def test_reference_launch_line_names_still_parse(tmp_path):
    from streaming_vlm.train.args import parse_args

    # the reference scripts' flags (DeepSpeed is exercised by the two-process test below)
    argv = (
        "--deepspeed none --overwrite_output_dir True --output_dir OUT --run_name StreamingVLM_SFT_stage_1 "
        "--save_on_each_node True --do_train True --per_device_train_batch_size 1 --gradient_accumulation_steps 64 "
        "--learning_rate 1e-5 --warmup_ratio 0.03 --optim adamw_torch --lr_scheduler_type cosine "
        "--num_train_epochs 1 --bf16 True --tf32 True --gradient_checkpointing True --use_liger_kernel True "
        "--logging_steps 1 --report_to none --ignore_data_skip False --save_strategy steps --save_steps 20 "
        "--save_total_limit 10 --load_best_model_at_end False --greater_is_better False "
        "--metric_for_best_model eval_loss --prediction_loss_only true --eval_strategy steps --eval_steps 100 "
        "--per_device_eval_batch_size 1 --pretrained_model_name_or_path Qwen/Qwen2.5-VL-7B-Instruct "
        "--train_annotation_paths train_s12w24_with_seeks.jsonl train_s12w24_with_seeks.jsonl "
        "train_livecc_with_seeks.jsonl --eval_annotation_paths valid_s12w24_with_seeks.jsonl "
        "--dataloader_num_workers 32 --text_sink 512 --text_sliding_window 512"
    ).split()
    model_args, data_args, training_args = parse_args(argv)
    assert model_args.pretrained_model_name_or_path == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert len(data_args.train_annotation_paths) == 3
    assert (data_args.text_sink, data_args.text_sliding_window) == (512, 512)
    assert training_args.gradient_accumulation_steps == 64 and training_args.learning_rate == pytest.approx(1e-5)
    warmup = getattr(training_args, "warmup_ratio", None) or training_args.warmup_steps
    assert warmup == pytest.approx(0.03)
    if not torch.cuda.is_available():  # machine-dependent flags adapted on a CPU-only machine
        assert not training_args.tf32 and not training_args.bf16


@pytest.mark.parametrize("name", ["sft_stage1.yaml", "sft_stage2.yaml"])
def test_stage_configs_hold_the_reference_hyper_parameters(name):
    from streaming_vlm.train.args import parse_args

    path = REPO / "configs" / name
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("# ") and any(f"--config configs/{name}" in line for line in lines[:6])
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert raw["deepspeed"] == "configs/zero3.json" and raw["bf16"] is True and raw["tf32"] is True
    model_args, data_args, training_args = parse_args(["--config", str(path), "--deepspeed", "none"])
    assert training_args.learning_rate == pytest.approx(1e-5)
    assert str(getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type)) == "cosine"
    assert (getattr(training_args, "warmup_ratio", None) or training_args.warmup_steps) == pytest.approx(0.03)
    assert training_args.num_train_epochs == 1 and training_args.per_device_train_batch_size == 1
    assert training_args.gradient_accumulation_steps == 64
    assert training_args.gradient_checkpointing and training_args.logging_steps == 1
    assert (training_args.save_steps, training_args.save_total_limit, training_args.eval_steps) == (20, 10, 100)
    assert training_args.report_to == ["wandb"]
    assert (data_args.text_sink, data_args.text_sliding_window) == (512, 512)
    assert model_args.freeze_vision_tower
    if name == "sft_stage1.yaml":
        assert model_args.pretrained_model_name_or_path == "Qwen/Qwen2.5-VL-7B-Instruct"
        assert data_args.train_annotation_paths == [
            "train_s12w24_with_seeks.jsonl", "train_s12w24_with_seeks.jsonl", "train_livecc_with_seeks.jsonl"
        ]  # fmt: skip
        assert data_args.eval_annotation_paths == ["valid_s12w24_with_seeks.jsonl", "valid_livecc_with_seeks.jsonl"]
    else:
        assert model_args.pretrained_model_name_or_path == "checkpoints/sft_stage1"
        assert data_args.train_annotation_paths == ["fg/train_fg_with_seeks.jsonl"]


def test_zero3_json_has_the_reference_settings_and_no_optimizer():
    ds = json.loads((REPO / "configs" / "zero3.json").read_text())
    assert "optimizer" not in ds and "scheduler" not in ds
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert ds["bf16"]["enabled"] == "auto" and ds["gradient_accumulation_steps"] == "auto"


def test_train_subcommand_passes_its_arguments_through(capsys):
    from streaming_vlm.cli import build_parser
    from streaming_vlm.train.args import parse_args

    args = build_parser().parse_args(["train", "--config", "configs/sft_stage1.yaml", "--max_steps", "3"])
    assert args.train_args == ["--config", "configs/sft_stage1.yaml", "--max_steps", "3"]
    with pytest.raises(SystemExit) as exc:
        parse_args(["--help"])
    assert exc.value.code == 0 and "--train_annotation_paths" in capsys.readouterr().out


def test_a_bad_config_is_a_one_line_error_from_the_entry_point(tmp_path, capsys):
    from streaming_vlm.train.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("pretrained_model_name_or_path: m\ntrain_annotation_paths: [a]\nlerning_rate: 1\n")
    assert main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown key(s): lerning_rate" in err[0]


def test_scripts_are_short_recipes():
    for name in ("sft_stage_1.sh", "sft_stage_2.sh"):
        text = (REPO / "scripts" / name).read_text()
        assert "set -euo pipefail" in text and "torchrun --standalone" in text and '"$@"' in text
        assert not re.search(r"WANDB_API_KEY=\S", text), "no credentials in scripts"
        subprocess.run(["bash", "-n", str(REPO / "scripts" / name)], check=True)


# ------------------------------------------------------------------------------------------------------------
# Bad data
# ------------------------------------------------------------------------------------------------------------


def test_bad_records_are_skipped_logged_and_summarised(builder, data_dir, tmp_path, caplog):
    from streaming_vlm.data.dataset import BadSampleReport, StreamingSFTDataset

    video = str(data_dir / "clip.mp4")
    path = write_jsonl(
        tmp_path / "mixed_with_seeks.jsonl",
        [
            record(video, WORDS_A),  # line 1: good
            record("no/such/video.mp4", WORDS_A),  # line 2: missing video
            "",  # line 3: blank (not indexed, but counted in line numbers)
            '[{"role": "user", "content": [',  # line 4: malformed JSON
            record(video, []),  # line 5: empty transcript
            record(video, WORDS_B),  # line 6: good
        ],
    )
    failure_log = tmp_path / "out" / "bad_samples.jsonl"
    ds = StreamingSFTDataset(
        [path], builder, dataset_path=data_dir, failure_log=failure_log, max_bad_sample_fraction=1.0
    )
    report = BadSampleReport({"train": ds.bad_lines})
    assert len(ds) == 5

    with caplog.at_level(logging.WARNING, logger="streaming_vlm.data.dataset"):
        # retries step by 3 of the 5 indexes (about 0.618 n, coprime with n): 3 -> 1 -> 4 and 2 -> 0
        sample = ds[3]  # lines 5 and 2 fail; replaced by line 6
        other = ds[2]  # line 4 fails; replaced by line 1
    assert torch.equal(sample.input_ids, ds.build(4).input_ids)
    assert torch.equal(other.input_ids, ds.build(0).input_ids)
    assert ds.failures == 3 and ds.attempts == 5

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3 and all("\n" not in w for w in warnings)
    for line, problem in ((2, "video not found"), (4, "malformed JSON"), (5, "empty transcript")):
        assert any(w.startswith(f"skipping {path}:{line}: AnnotationError: ") and problem in w for w in warnings), (
            line, warnings
        )  # fmt: skip

    entries = [json.loads(x) for x in failure_log.read_text().splitlines()]
    assert [(e["line"], e["error"], e["split"]) for e in entries] == [
        (n, "AnnotationError", "train") for n in (5, 2, 4)
    ]
    assert all(e["file"] == str(path) for e in entries)

    state = SimpleNamespace(is_world_process_zero=True)
    with caplog.at_level(logging.WARNING, logger="streaming_vlm.data.dataset"):
        report.on_train_end(None, state, None)
    (summary,) = report.summaries
    first = f"(first: {path}:5: empty transcript"
    assert summary.startswith(f"train data: 3 distinct lines skipped (3 attempts): 3 AnnotationError {first}")
    assert summary.endswith(f"; details in {failure_log}") and summary in caplog.text

    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=StreamingCollator(pad_token_id=0))
    batch = next(iter(loader))
    assert batch["input_ids"].shape[0] == 2 and batch["position_ids"].shape[:2] == (3, 2)


def test_corrupt_video_is_skipped(builder, data_dir, tmp_path, caplog):
    from streaming_vlm.data.dataset import StreamingSFTDataset

    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    path = write_jsonl(tmp_path / "c_with_seeks.jsonl", [record(str(corrupt), WORDS_A), record("clip.mp4", WORDS_A)])
    ds = StreamingSFTDataset([path], builder, dataset_path=data_dir, failure_log=None, max_bad_sample_fraction=1.0)
    with caplog.at_level(logging.WARNING, logger="streaming_vlm.data.dataset"):
        sample = ds[0]
    assert sample.num_supervised > 0
    assert any(f"{path}:1: VideoError: " in r.getMessage() for r in caplog.records)


def test_mostly_bad_data_stops_with_a_clear_error(builder, data_dir, tmp_path):
    from streaming_vlm.data.dataset import BadDataError, StreamingSFTDataset

    lines = [record("clip.mp4", WORDS_A)] + ["{not json"] * 3 + [record("missing.mp4", WORDS_A)] * 26
    path = write_jsonl(tmp_path / "bad_with_seeks.jsonl", lines)
    log = tmp_path / "bad_samples.jsonl"
    ds = StreamingSFTDataset([path], builder, dataset_path=data_dir, failure_log=log)
    # 0.05 x 30 lines = 1.5 bad lines allowed: the second distinct bad line stops it
    too_many = (r"train data: 2 distinct lines of 30 could not be used \(2 AnnotationError\), more than "
                r"max_bad_sample_fraction=0\.05 allows \(1\.5 lines\); first: .*:2: malformed JSON")
    with pytest.raises(BadDataError, match=too_many):
        for i in range(len(ds)):
            ds[i]
    assert len(log.read_text().splitlines()) == 2

    # retries are bounded even when the fraction check is off: max_attempts indexes, then an error
    # (indexes 3, 22, 11 are bad; the fourth try, 0, would be the good line)
    ds = StreamingSFTDataset([path], builder, dataset_path=data_dir, max_bad_sample_fraction=1.0, max_attempts=3)
    with pytest.raises(BadDataError, match="3 samples tried for index 3 could not be built"):
        ds[3]
    assert ds.attempts == 3


def test_annotation_paths_resolve_under_the_dataset_path(builder, data_dir, tmp_path):
    from streaming_vlm.data.dataset import StreamingSFTDataset

    ds = StreamingSFTDataset(["train_with_seeks.jsonl", "train_with_seeks.jsonl"], builder, dataset_path=data_dir)
    assert len(ds) == 4 and ds.locate(3) == (data_dir / "train_with_seeks.jsonl", ds.locate(1)[1])
    with pytest.raises(FileNotFoundError, match="annotation file not found: tried nope.jsonl"):
        StreamingSFTDataset(["nope.jsonl"], builder, dataset_path=tmp_path)


# ------------------------------------------------------------------------------------------------------------
# W&B and optional kernels
# ------------------------------------------------------------------------------------------------------------


def test_wandb_is_offline_unless_a_key_is_set():
    from streaming_vlm.train.trainer import configure_wandb

    env: dict[str, str] = {}
    assert configure_wandb(["wandb"], env) == "offline" and env == {"WANDB_MODE": "offline"}
    env = {"WANDB_API_KEY": "set-by-the-user"}
    assert configure_wandb("wandb", env) == "online" and "WANDB_MODE" not in env
    env = {"WANDB_MODE": "disabled"}
    assert configure_wandb(["wandb"], env) == "disabled"
    env = {}
    assert configure_wandb(["none"], env) is None and env == {}


@pytest.mark.skipif(
    torch.cuda.is_available() and importlib.util.find_spec("liger_kernel") is not None,
    reason="Liger can run here",
)
def test_liger_falls_back_with_a_warning(caplog):
    from streaming_vlm.train.trainer import disable_unavailable_liger

    args = SimpleNamespace(use_liger_kernel=True)
    with caplog.at_level(logging.WARNING, logger="streaming_vlm.train.trainer"):
        assert disable_unavailable_liger(args) is False
    assert args.use_liger_kernel is False and "use_liger_kernel requested but" in caplog.text


# ------------------------------------------------------------------------------------------------------------
# DeepSpeed ZeRO-3, two processes
# ------------------------------------------------------------------------------------------------------------


def _torchrun(config: Path, cwd: Path, *extra: str, env_extra: dict | None = None,
              timeout: float = 600) -> subprocess.CompletedProcess:
    # DeepSpeed builds its CPU communication op in every launch; a private build directory (shared by the launches
    # of one test) keeps a lock that another, killed run left in ~/.cache from hanging this one
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               TORCH_EXTENSIONS_DIR=str(cwd / "torch_extensions"), **(env_extra or {}))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "streaming_vlm.train",
        "--config",
        str(config),
        *extra,
    ]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _log_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("{'") or "resuming" in line]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed (extra: train)")
def test_deepspeed_zero3_two_processes_train_save_and_resume(tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "out"
    config = tmp_path / "zero3_smoke.yaml"
    config.write_text(
        "# Two-process ZeRO-3 smoke run on the tiny model (CPU, gloo).\n"
        f"# Launch: torchrun --standalone --nproc_per_node=2 -m streaming_vlm.train --config {config.name}\n"
        + yaml.safe_dump(
            {
                "pretrained_model_name_or_path": str(tiny_model_dir),
                # 6 items, 4 distinct lines, one bad (its draw is built from the next line), all drawn in run one
                "train_annotation_paths": ["train_with_seeks.jsonl", "train_with_seeks.jsonl",
                                           "one_bad_with_seeks.jsonl"],
                "max_bad_sample_fraction": 0.5,
                "eval_annotation_paths": ["train_with_seeks.jsonl"],
                "dataset_path": str(data_dir),
                "min_pixels": 3136,
                "max_pixels": 12544,
                "deepspeed": str(REPO / "configs" / "zero3.json"),
                "output_dir": str(out),
                "max_steps": 2,
                "save_steps": 2,
                "eval_strategy": "steps",
                "eval_steps": 2,
                "per_device_train_batch_size": 1,
                "gradient_accumulation_steps": 2,
                "learning_rate": 1.0e-3,
                "gradient_checkpointing": True,
                "logging_steps": 1,
                "report_to": "none",
                "dataloader_num_workers": 0,
                "disable_tqdm": True,
            }
        )
    )
    first = _torchrun(config, tmp_path)
    assert first.returncode == 0, (first.stdout + first.stderr)[-6000:]
    checkpoint = out / "checkpoint-2"
    assert (checkpoint / "trainer_state.json").is_file()
    shards = sorted(p.name for p in (checkpoint / "global_step2").iterdir())  # one ZeRO partition per rank
    assert any(s.startswith("zero_pp_rank_0_") for s in shards) and any(s.startswith("zero_pp_rank_1_") for s in shards)
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == 2
    from transformers import Qwen2_5_VLForConditionalGeneration

    tiny = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir)
    total = sum(p.numel() for p in tiny.parameters())
    trainable = total - sum(p.numel() for p in tiny.model.visual.parameters())
    log = first.stdout + first.stderr
    assert f": {trainable} of {total} parameters trainable" in log  # full sizes, not ZeRO-3's empty placeholders
    # the bad line's records came through the batches and every rank's were counted together, once per line
    assert re.search(r"train data: 1 distinct line skipped \(\d+ attempts\): 1 AnnotationError \(first: "
                     r".*one_bad_with_seeks\.jsonl:2: malformed JSON", log), log[-6000:]
    print("\n".join(_log_lines(first)))

    second = _torchrun(config, tmp_path, "--max_steps", "3")
    assert second.returncode == 0, (second.stdout + second.stderr)[-6000:]
    assert f"resuming from {checkpoint}" in second.stdout + second.stderr
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    steps = [entry["step"] for entry in state["log_history"] if "loss" in entry]
    assert steps == [1, 2, 3]  # the history of the first run, continued
    assert (out / "checkpoint-3" / "trainer_state.json").is_file() and (out / "model.safetensors").is_file()
    assert "terminate called" not in second.stderr
    print("\n".join(_log_lines(second)))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed (extra: train)")
def test_a_build_lock_left_by_a_killed_build_is_a_one_line_error_not_a_silent_hang(tiny_model_dir, data_dir, tmp_path):
    # torch waits for an op's build lock with no limit: before the fix this launch never returned
    lock = tmp_path / "torch_extensions" / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir(parents=True)
    lock.write_bytes(b"")
    out = tmp_path / "out"
    config = tmp_path / "zero3_lock.yaml"
    config.write_text(yaml.safe_dump({
        "pretrained_model_name_or_path": str(tiny_model_dir),
        "train_annotation_paths": ["train_with_seeks.jsonl"],
        "dataset_path": str(data_dir),
        "deepspeed": str(REPO / "configs" / "zero3.json"),
        "output_dir": str(out),
        "max_steps": 1,
        "report_to": "none",
    }))
    started = time.monotonic()
    proc = _torchrun(config, tmp_path, env_extra={"STREAMING_VLM_BUILD_LOCK_WAIT_S": "3"}, timeout=300)
    took = time.monotonic() - started
    assert proc.returncode != 0, (proc.stdout + proc.stderr)[-4000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("streaming-vlm train: error")]
    assert len(errors) == 1, proc.stderr[-4000:]  # printed once (rank 0), every rank stopping with it
    assert str(lock) in errors[0] and "killed" in errors[0] and "delete the file" in errors[0]
    # no traceback from our code (torchrun adds its own ChildFailedError summary when a child exits 1)
    assert not re.search(r'File ".*streaming_vlm', proc.stderr) and "BuildLockError" not in proc.stderr
    assert f"waiting for {lock}" in proc.stderr
    assert lock.is_file()  # never deleted for the user: a live build elsewhere may own it
    assert not (out / "checkpoint-1").exists()
    print(f"stopped in {took:.1f} s: {errors[0]}")
