"""Tests for streaming_vlm.models: the tiny offline checkpoint and the checkpoint loader."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from streaming_vlm.models import (
    QWEN_SPECIAL_TOKENS,
    LoadedModel,
    ModelLoadError,
    build_tiny_model,
    build_tiny_tokenizer,
    default_attn_implementation,
    load_model,
    resolve_device,
    resolve_dtype,
)

MB = 1024 * 1024


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="module")
def loaded(tiny_dir: Path) -> LoadedModel:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        return load_model(str(tiny_dir), device="cpu", dtype="auto")


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


def _video_prompt(tokenizer, n_video_tokens: int) -> list[int]:
    tid = tokenizer.convert_tokens_to_ids
    return (
        [tid("<|im_start|>")]
        + tokenizer.encode("user\n", add_special_tokens=False)
        + [tid("<|vision_start|>")]
        + [tid("<|video_pad|>")] * n_video_tokens
        + [tid("<|vision_end|>")]
        + tokenizer.encode("Commentate on this match", add_special_tokens=False)
        + [tid("<|im_end|>")]
        + tokenizer.encode("\n", add_special_tokens=False)
        + [tid("<|im_start|>")]
        + tokenizer.encode("assistant\n", add_special_tokens=False)
    )


# ------------------------------------------------------------------------------------------------------------
# The checkpoint on disk
# ------------------------------------------------------------------------------------------------------------


def test_tiny_checkpoint_files_and_size(tiny_dir: Path) -> None:
    names = {p.name for p in tiny_dir.iterdir()}
    for required in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "preprocessor_config.json",
    ):
        assert required in names
    total = sum(p.stat().st_size for p in tiny_dir.rglob("*") if p.is_file())
    assert total < 10 * MB

    pre = json.loads((tiny_dir / "preprocessor_config.json").read_text())
    assert pre["patch_size"] == 14
    assert pre["temporal_patch_size"] == 2
    assert pre["merge_size"] == 2
    assert pre["image_processor_type"] == "Qwen2VLImageProcessor"
    assert len(pre["image_mean"]) == 3 and len(pre["image_std"]) == 3
    assert pre["min_pixels"] == 3136 and pre["max_pixels"] == 12845056


def test_config_facts(loaded: LoadedModel) -> None:
    config = loaded.model.config
    assert config.model_type == "qwen2_5_vl"
    text, vision = config.text_config, config.vision_config

    assert text.num_hidden_layers >= 2
    assert text.num_key_value_heads < text.num_attention_heads
    assert text.num_attention_heads % text.num_key_value_heads == 0
    head_dim = text.hidden_size // text.num_attention_heads
    section = text.rope_parameters["mrope_section"]
    assert len(section) == 3 and all(s > 0 for s in section)
    assert sum(section) == head_dim // 2
    assert text.rope_parameters["rope_theta"] == pytest.approx(1e6)
    assert text.max_position_embeddings == 32768
    assert text.vocab_size % 64 == 0 and text.vocab_size >= len(loaded.tokenizer)
    assert not config.tie_word_embeddings

    assert list(vision.fullatt_block_indexes)
    assert vision.depth > len(vision.fullatt_block_indexes)
    assert 0 not in vision.fullatt_block_indexes  # block 0 uses window attention
    assert vision.out_hidden_size == text.hidden_size
    assert vision.patch_size == 14 and vision.spatial_merge_size == 2 and vision.temporal_patch_size == 2
    assert vision.window_size == 112
    assert vision.tokens_per_second == 2


def test_config_token_ids_match_tokenizer(loaded: LoadedModel) -> None:
    config, tok = loaded.model.config, loaded.tokenizer
    assert config.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    assert config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert config.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert config.vision_end_token_id == tok.convert_tokens_to_ids("<|vision_end|>")
    assert config.text_config.eos_token_id == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert config.text_config.pad_token_id == tok.pad_token_id == tok.convert_tokens_to_ids("<|endoftext|>")


# ------------------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------------------


def test_load_model_offline(loaded: LoadedModel, tiny_dir: Path) -> None:
    assert isinstance(loaded, LoadedModel)
    assert loaded.model.__class__.__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert loaded.device == torch.device("cpu")
    assert loaded.dtype == torch.float32
    assert next(loaded.model.parameters()).dtype == torch.float32
    assert Path(loaded.path) == tiny_dir.resolve()
    assert loaded.tokenizer.is_fast


def test_load_model_in_bfloat16(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lm = load_model(tiny_dir, device="cpu", dtype="bf16", attn_implementation="eager")
    assert lm.dtype == torch.bfloat16
    assert next(lm.model.parameters()).dtype == torch.bfloat16
    assert lm.model.config._attn_implementation == "eager"


def test_generation_defaults_from_checkpoint(loaded: LoadedModel, tiny_dir: Path) -> None:
    on_disk = json.loads((tiny_dir / "generation_config.json").read_text())
    expected = {
        k: on_disk[k] for k in ("temperature", "top_p", "top_k", "repetition_penalty") if k in on_disk
    }
    assert expected  # the tiny checkpoint sets them all
    assert loaded.generation_defaults == expected
    tok = loaded.tokenizer
    eos_ids = [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]
    assert on_disk["eos_token_id"] == eos_ids
    assert on_disk["pad_token_id"] == tok.pad_token_id


def test_generation_defaults_only_keys_that_are_set(tmp_path: Path, tiny_dir: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dir, copy)
    (copy / "generation_config.json").write_text(json.dumps({"temperature": 0.3, "do_sample": True}))
    assert load_model(copy, device="cpu").generation_defaults == {"temperature": 0.3}
    (copy / "generation_config.json").unlink()
    assert load_model(copy, device="cpu").generation_defaults == {}


def _assert_load_error(target, *fragments: str) -> str:
    with pytest.raises(ModelLoadError) as excinfo:
        load_model(target, device="cpu")
    message = str(excinfo.value)
    assert "\n" not in message
    assert "Traceback" not in message
    assert str(target) in message
    for fragment in fragments:
        assert fragment in message
    return message


def test_load_errors_missing_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _assert_load_error(tmp_path / "does-not-exist", "no such directory")


def test_load_errors_directory_without_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    empty = tmp_path / "empty"
    empty.mkdir()
    _assert_load_error(empty, "no config.json")


def test_load_errors_not_qwen2_5_vl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    other = tmp_path / "qwen2-text"
    config = Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    Qwen2ForCausalLM(config).save_pretrained(other)
    _assert_load_error(other, "qwen2", "qwen2_5_vl")


def test_load_errors_corrupt_files(tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    bad_json = tmp_path / "bad-json"
    bad_json.mkdir()
    (bad_json / "config.json").write_text("{not json")
    _assert_load_error(bad_json, "config.json")

    bad_weights = tmp_path / "bad-weights"
    shutil.copytree(tiny_dir, bad_weights)
    (bad_weights / "model.safetensors").write_bytes(b"this is not a safetensors file")
    _assert_load_error(bad_weights, "weights")

    no_weights = tmp_path / "no-weights"
    shutil.copytree(tiny_dir, no_weights)
    (no_weights / "model.safetensors").unlink()
    _assert_load_error(no_weights, "no weight files")

    partial = tmp_path / "partial"
    shutil.copytree(tiny_dir, partial)
    tensors = load_file(partial / "model.safetensors")
    dropped = sorted(tensors)[-1]
    del tensors[dropped]
    save_file(tensors, str(partial / "model.safetensors"), metadata={"format": "pt"})
    _assert_load_error(partial, "missing")


def test_load_errors_unfetchable_hub_id(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # so the id cannot name a local directory
    _assert_load_error("streaming-vlm-tests/no-such-model", "hub")


# ------------------------------------------------------------------------------------------------------------
# Device / dtype / attention selection
# ------------------------------------------------------------------------------------------------------------


def test_resolve_dtype() -> None:
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    for name, dtype in (
        ("bf16", torch.bfloat16),
        ("bfloat16", torch.bfloat16),
        ("fp16", torch.float16),
        ("float16", torch.float16),
        ("fp32", torch.float32),
        ("float32", torch.float32),
    ):
        assert resolve_dtype(name, cpu) == dtype
    with pytest.raises(ValueError, match="bf16"):
        resolve_dtype("bogus", cpu)


def test_resolve_device_and_attention() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(ValueError):
        resolve_device("not-a-device")
    assert default_attn_implementation(torch.device("cpu")) == "sdpa"
    assert default_attn_implementation("cpu") == "sdpa"


# ------------------------------------------------------------------------------------------------------------
# Tokenizer
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def test_tokenizer_round_trips_arbitrary_text(tokenizer) -> None:
    samples = [
        "Time=12.0-13.0s The striker shoots... GOAL!",
        "héllo wörld, naïve café — “quotes” ‘single’",
        "e\u0301 (decomposed) vs \u00e9 (composed)",
        "中文解说：球进了！ 日本語 한국어 Ελληνικά русский",
        "emoji ⚽🏀🎾🔥 👩‍👩‍👧 flags 🇫🇷",
        "control \x00\x01\x7f tabs\tand\r\nnewlines\n\n\n  spaces   ",
        "",
        " leading space and trailing space ",
    ]
    for text in samples:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text


def test_tokenizer_newline_is_its_own_token(tokenizer) -> None:
    newline = tokenizer.encode("\n", add_special_tokens=False)
    assert len(newline) == 1
    ids = tokenizer.encode("assistant\nHello", add_special_tokens=False)
    assert newline[0] in ids


def test_special_tokens_are_single_ids(tokenizer) -> None:
    ids = [tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS]
    assert len(set(ids)) == len(QWEN_SPECIAL_TOKENS)
    assert ids == sorted(ids)  # Qwen's order, contiguous after the learned vocabulary
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    for token, tid in zip(QWEN_SPECIAL_TOKENS, ids, strict=True):
        assert tokenizer.encode(token, add_special_tokens=False) == [tid]
    text = "<|im_start|>user\n<|vision_start|><|video_pad|><|video_pad|><|vision_end|>hi<|im_end|>"
    encoded = tokenizer.encode(text, add_special_tokens=False)
    assert encoded.count(tokenizer.convert_tokens_to_ids("<|video_pad|>")) == 2
    assert tokenizer.decode(encoded) == text
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.bos_token is None
    assert tokenizer.encode("hi", add_special_tokens=True) == tokenizer.encode("hi", add_special_tokens=False)


def test_tokenizer_is_deterministic(tokenizer) -> None:
    again = build_tiny_tokenizer()
    assert again.get_vocab() == tokenizer.get_vocab()
    text = "Time=3.0-4.0s previous text ... You are a helpful assistant. Commentate on this match"
    assert again.encode(text) == tokenizer.encode(text)
    assert len(tokenizer) == 512


def test_saved_tokenizer_matches_built_one(loaded: LoadedModel, tokenizer) -> None:
    text = "system\nYou are a helpful assistant.\n<|im_start|>user\nTime=1.0-2.0s"
    assert loaded.tokenizer.encode(text) == tokenizer.encode(text)
    assert loaded.tokenizer.get_vocab() == tokenizer.get_vocab()


# ------------------------------------------------------------------------------------------------------------
# Determinism, overrides, forward pass
# ------------------------------------------------------------------------------------------------------------


def test_rebuild_is_deterministic(tmp_path: Path, tiny_dir: Path) -> None:
    state = torch.random.get_rng_state()
    again = build_tiny_model(tmp_path / "again", seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched
    first, second = _weights(tiny_dir), _weights(again)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    vocab_again = json.loads((again / "tokenizer.json").read_text())["model"]["vocab"]
    assert vocab_again == json.loads((tiny_dir / "tokenizer.json").read_text())["model"]["vocab"]

    other = _weights(build_tiny_model(tmp_path / "other", seed=1))
    assert not torch.equal(first["model.embed_tokens.weight"], other["model.embed_tokens.weight"])


def test_weights_are_not_degenerate(tiny_dir: Path) -> None:
    weights = _weights(tiny_dir)
    embed = weights["model.embed_tokens.weight"]
    assert 0.01 < embed.std().item() < 0.05
    assert not torch.equal(weights["lm_head.weight"], embed)  # untied


def test_overrides_make_a_bigger_model(tmp_path: Path) -> None:
    bigger = build_tiny_model(
        tmp_path / "bigger", num_hidden_layers=4, hidden_size=256, intermediate_size=512
    )
    config = json.loads((bigger / "config.json").read_text())
    text = config["text_config"]
    assert text["num_hidden_layers"] == 4
    assert text["hidden_size"] == 256
    section = text["rope_parameters"]["mrope_section"]
    assert sum(section) == 256 // 4 // 2 and all(s > 0 for s in section)
    assert config["vision_config"]["out_hidden_size"] == 256
    with pytest.raises(TypeError, match="not_a_field"):
        build_tiny_model(tmp_path / "bad", not_a_field=1)


def test_forward_with_two_frame_video(loaded: LoadedModel) -> None:
    model, tok = loaded.model, loaded.tokenizer
    grid_t, grid_h, grid_w = 1, 8, 8  # 2 frames -> 1 temporal patch; 8x8 patches -> 16 tokens after 2x2 merge
    n_video_tokens = grid_t * grid_h * grid_w // 4
    input_ids = torch.tensor([_video_prompt(tok, n_video_tokens)])
    generator = torch.Generator().manual_seed(0)
    pixel_values_videos = torch.randn(grid_t * grid_h * grid_w, 3 * 2 * 14 * 14, generator=generator)
    video_grid_thw = torch.tensor([[grid_t, grid_h, grid_w]])
    with torch.no_grad():
        out = model(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            pixel_values_videos=pixel_values_videos,
            video_grid_thw=video_grid_thw,
        )
    vocab = model.config.text_config.vocab_size
    assert out.logits.shape == (1, input_ids.shape[1], vocab)
    assert torch.isfinite(out.logits).all()
    assert out.logits[0, -1].std() > 0  # not degenerate

    # The video actually reaches the language model: other pixels, other logits.
    with torch.no_grad():
        out2 = model(
            input_ids=input_ids,
            pixel_values_videos=pixel_values_videos + 1.0,
            video_grid_thw=video_grid_thw,
        )
    assert not torch.allclose(out.logits[0, -1], out2.logits[0, -1])
