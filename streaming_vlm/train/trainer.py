"""Supervised fine-tuning of Qwen2.5-VL on streaming commentary: the Trainer subclass and the run around it.

Contract
--------
* :class:`StreamingSFTTrainer` is ``transformers.Trainer`` with these differences:

  - **Loss = token mean over the whole gradient-accumulation window**, across processes. Qwen2.5-VL sets
    ``accepts_loss_kwargs = False``, so the stock Trainer never counts ``num_items_in_batch`` for it;
    :meth:`~StreamingSFTTrainer.get_batch_samples` counts the supervised (shifted) label tokens of the window
    itself (summed over ranks when ``average_tokens_across_devices``), and :meth:`~StreamingSFTTrainer.compute_loss`
    returns ``sum of token cross-entropy in this micro-batch / tokens in the window``, times the world size
    because DDP/DeepSpeed average gradients over ranks. Summed over the window this is exactly the mean over
    its tokens, however they are split into micro-batches. Logits are computed only where the next token is
    supervised (``logits_to_keep``), which saves the (L, vocab) tensor for vision and prompt tokens.
  - **No padding mask under SDPA when the batch is right-padded** (the collator's layout): a real token attends
    only to tokens before it, all real, so the causal rule alone gives every real token the same attention, and
    pads carry no labels. Without the mask SDPA runs its causal kernel, which skips the blocks above the diagonal
    (stage 1 of the demo: 17 % less time per forward and backward). ``tests/test_train.py`` checks that the loss
    and every gradient equal those with the mask.
  - **Chosen words can weigh more** (``weighted_words``, ``word_loss_weight``): each supervised token is weighted
    by its target's entry in ``token_weights`` (1 but for those words' tokens), and the "token count" above is the
    sum of the weights, so the loss is the weighted mean over the window (exactly the token mean without them).
  - ``supervised_tokens`` (tokens behind each training log entry, all ranks) is added to the training logs.
  - **Pixels are made on the training device.** Batches carry resized uint8 ``video_frames`` (a quarter of the
    bytes of float pixels through the DataLoader workers); :meth:`~StreamingSFTTrainer._prepare_inputs` moves
    them to the device and turns them into ``pixel_values_videos`` with ``vision_spec``
    (:func:`~streaming_vlm.data.sample.video_pixel_values`: identical to the one-go CPU preprocessing).
  - **Bad lines are counted across processes.** ``_prepare_inputs`` also pops the batch's ``bad_lines``, gathers
    every rank's (one small all-reduce per micro-batch, an all-gather only when some rank has any) and adds them
    to the split's :class:`~streaming_vlm.data.dataset.BadLineTracker`; every rank then holds the same counts
    and raises the same :class:`~streaming_vlm.data.dataset.BadDataError` (``every_rank``) at the same step.

* :func:`prepare_model` loads the model for training: weights in float32 (mixed precision through the Trainer's
  autocast) unless DeepSpeed keeps the master copy (:func:`load_dtype`), the vision tower frozen (optionally
  keeping its merger trainable), ``use_cache`` off, non-reentrant activation checkpointing; it logs the
  trainable and total parameter counts (:func:`count_parameters`: full sizes under ZeRO-3 too).
* ``vision_learning_rate`` gives the vision tower its own optimizer groups and rate (same schedule).
* :func:`run_training` wires everything: W&B mode, Liger fallback, datasets (failures logged to
  ``<output_dir>/bad_samples.jsonl`` and summarised at the end), auto-resume from the newest complete
  checkpoint in ``output_dir`` unless ``resume_from_checkpoint`` names one (or is ``false``: start fresh),
  training, final save (with the source's preprocessor configs).

Nothing here runs at import time.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer

from streaming_vlm.data.annotations import AnnotationError
from streaming_vlm.data.collator import StreamingCollator
from streaming_vlm.data.dataset import (
    BadLineTracker,
    BadSampleReport,
    DatasetSetupError,
    StreamingSFTDataset,
    gather_records,
)
from streaming_vlm.data.frames import FrameCache
from streaming_vlm.data.sample import IGNORE_INDEX, SampleBuilder, video_pixel_values
from streaming_vlm.preprocess import VisionSpec
from streaming_vlm.settings import CHECKPOINT_FILE
from streaming_vlm.train.build_lock import wait_for_build_lock

__all__ = [
    "StreamingSFTTrainer",
    "build_trainer",
    "configure_wandb",
    "count_parameters",
    "disable_unavailable_liger",
    "find_resume_checkpoint",
    "prepare_model",
    "run_training",
    "word_token_weights",
]

logger = logging.getLogger(__name__)

BAD_SAMPLES_FILE = "bad_samples.jsonl"
_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")


class StreamingSFTTrainer(Trainer):
    """``Trainer`` with a token-mean loss over the accumulation window and supervised-token logging."""

    # compute_loss already divides by the window's token count: the Trainer must not divide by the steps again
    loss_is_scaled_for_ga = True

    def __init__(self, *args, vision_learning_rate: float | None = None, vision_spec: VisionSpec | None = None,
                 bad_lines: Mapping[str, BadLineTracker] | None = None, token_weights: torch.Tensor | None = None,
                 **kwargs):
        """``vision_spec``: patch geometry and mean/std of the model's vision tower, needed for batches that carry
        ``video_frames``. ``bad_lines``: the tracker of each split (``train``, ``eval``) that the batches' bad-line
        records go to (``None``: they are dropped). ``token_weights``: float ``(vocab,)``, the loss weight of each
        target token (``None``: all 1; :func:`word_token_weights`)."""
        super().__init__(*args, **kwargs)
        self._supervised_since_log = 0
        self.token_weights = None if token_weights is None else token_weights.detach().float().cpu()
        self.vision_learning_rate = vision_learning_rate
        self.vision_spec = vision_spec
        self.bad_lines = dict(bad_lines or {})

    def create_optimizer(self, model=None):
        """The Trainer's optimizer; with ``vision_learning_rate``, the vision tower's parameters move to their own
        groups (same weight decay) at that rate, before any step and before the scheduler reads the rates."""
        optimizer = super().create_optimizer(model)
        if self.vision_learning_rate is None:
            return optimizer
        tower = {id(p) for p in (self.model if model is None else model).model.visual.parameters()}
        moved = []
        for group in optimizer.param_groups:
            ours = [p for p in group["params"] if id(p) in tower]
            group["params"] = [p for p in group["params"] if id(p) not in tower]
            if ours:
                moved.append({**group, "params": ours, "lr": self.vision_learning_rate})
        for group in moved:
            optimizer.add_param_group(group)
        logger.info("vision tower: %d parameters at learning rate %g",
                    sum(p.numel() for g in moved for p in g["params"]), self.vision_learning_rate)
        return optimizer

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """Resume's weight loading (without DeepSpeed or FSDP, which load their own shards).

        The stock loader reads ``model.safetensors`` with ``load_state_dict(strict=False)``, but transformers 5
        saves Qwen2.5-VL under its legacy key names (``model.layers.*``, ``visual.*``): no key matched, and a
        resumed run went on from the initial weights with only a warning. ``from_pretrained`` maps the names;
        every tensor must land.
        """
        target = self.accelerator.unwrap_model(self.model if model is None else model)
        dtype = next(target.parameters()).dtype
        source = type(target).from_pretrained(resume_from_checkpoint, dtype=dtype)
        target.load_state_dict(source.state_dict(), strict=True)
        logger.info("loaded the weights of %s", resume_from_checkpoint)

    def _target_weights(self, targets: torch.Tensor) -> torch.Tensor:
        """Float loss weight of each target (0 where ``IGNORE_INDEX``)."""
        supervised = targets != IGNORE_INDEX
        if self.token_weights is None:
            return supervised.float()
        weights = self.token_weights.to(targets.device)[targets.clamp(min=0)]
        return torch.where(supervised, weights, torch.zeros_like(weights))

    def _window_token_count(self, batches: list[dict[str, Any]], device, weighted: bool = True) -> torch.Tensor:
        """Supervised prediction targets (labels shifted by one) in ``batches``, summed over ranks if asked; when
        ``weighted`` and ``token_weights`` is set, the sum of their weights instead."""
        if weighted and self.token_weights is not None:
            weight = sum(float(self._target_weights(b["labels"][..., 1:]).sum()) for b in batches)
            total = torch.tensor(weight, dtype=torch.float32, device=device)
        else:
            count = sum(int((b["labels"][..., 1:] != IGNORE_INDEX).sum()) for b in batches)
            total = torch.tensor(count, dtype=torch.long, device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            total = self.accelerator.gather(total).sum()
        return total

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if num_items is None and batches and "labels" in batches[0]:
            tokens = self._window_token_count(batches, device, weighted=False)  # the log counts tokens, not weights
            num_items = tokens if self.token_weights is None else self._window_token_count(batches, device)
            self._supervised_since_log += int(tokens)
        elif num_items is not None:
            self._supervised_since_log += int(num_items)
        return batches, num_items

    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Count the batch's bad lines (all ranks), make ``pixel_values_videos`` from ``video_frames`` on the
        device, then the stock preparation (device placement, DeepSpeed's input dtype)."""
        inputs = dict(inputs)
        self._count_bad_lines(inputs.pop("bad_lines", []))
        frames = inputs.pop("video_frames", None)
        if frames is not None:
            if self.vision_spec is None:
                raise ValueError("the batch carries video_frames but the trainer has no vision_spec to preprocess them")
            inputs["pixel_values_videos"] = video_pixel_values(
                frames.to(self.args.device, non_blocking=True), inputs["video_grid_thw"], self.vision_spec
            )
        return super()._prepare_inputs(inputs)

    def _count_bad_lines(self, records: list[dict]) -> None:
        """Add every rank's bad-line records to the trackers; called by all ranks in step (once per micro-batch)."""
        if not self.bad_lines:
            return
        by_split: dict[str, list[dict]] = {}
        for record in gather_records(records, self.args.device):
            by_split.setdefault(str(record.get("split", "train")), []).append(record)
        for split, part in by_split.items():
            if split in self.bad_lines:
                self.bad_lines[split].add(part, every_rank=True)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Token cross-entropy summed over this micro-batch, divided by ``num_items_in_batch`` (the window's
        supervised tokens) when given, else by this micro-batch's own count (evaluation); with ``token_weights``
        both the sum and the counts are weighted."""
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        inputs.pop("skip_logits", None)  # Trainer's Liger eval flag: we always need logits
        targets = labels[:, 1:]  # targets[b, i] is predicted from position i
        keep = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)  # positions any row needs
        mask = inputs.get("attention_mask")
        if mask is not None and _sdpa(model) and _right_padded(mask):
            del inputs["attention_mask"]  # the causal rule alone is exact here (see the module doc)
        outputs = model(**inputs, logits_to_keep=keep, use_cache=False)
        logits = outputs.logits  # (B, len(keep), vocab)
        wanted = targets[:, keep]
        token_loss = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), wanted.reshape(-1), ignore_index=IGNORE_INDEX,
            reduction="none",
        )
        weights = self._target_weights(wanted.reshape(-1))
        loss_sum = (token_loss * weights).sum()
        if num_items_in_batch is None:
            loss = loss_sum / weights.sum().clamp(min=1e-12)
        else:
            loss = loss_sum / num_items_in_batch
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                loss = loss * self.args.world_size  # ranks' gradients are averaged, not summed
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log entry (evaluation entries carry eval_loss)
            logs["supervised_tokens"] = self._supervised_since_log
            self._supervised_since_log = 0
        super().log(logs, start_time)


def _sdpa(model) -> bool:
    """Whether ``model`` (possibly wrapped by DDP or DeepSpeed) attends with SDPA."""
    while hasattr(model, "module"):
        model = model.module
    return getattr(getattr(model, "config", None), "_attn_implementation", None) == "sdpa"


def _right_padded(mask: torch.Tensor) -> bool:
    """Whether every row of a ``(B, L)`` 0/1 attention mask is ones then zeros (pads only after real tokens)."""
    if mask.ndim != 2:
        return False
    mask = mask.bool()
    return bool((mask[:, 1:] <= mask[:, :-1]).all())


# ------------------------------------------------------------------------------------------------------------
# Setup helpers
# ------------------------------------------------------------------------------------------------------------


def configure_wandb(report_to, environ: MutableMapping[str, str] | None = None) -> str | None:
    """When W&B is a log target: offline unless ``WANDB_API_KEY`` is set (an explicit ``WANDB_MODE`` wins).

    Returns the W&B mode in effect, or ``None`` when W&B is not used.
    """
    environ = os.environ if environ is None else environ
    targets = [report_to] if isinstance(report_to, str) else list(report_to or [])
    if "wandb" not in targets and "all" not in targets:
        return None
    if not environ.get("WANDB_MODE") and not environ.get("WANDB_API_KEY"):
        environ["WANDB_MODE"] = "offline"
        logger.info("WANDB_API_KEY is not set: W&B logs offline (wandb sync later, or set the key)")
    return environ.get("WANDB_MODE", "online")


def disable_unavailable_liger(training_args) -> bool:
    """Turn ``use_liger_kernel`` off, with a warning, when it cannot run here; returns whether it stays on."""
    if not training_args.use_liger_kernel:
        return False
    reason = None
    if not torch.cuda.is_available():
        reason = "no CUDA device"
    elif importlib.util.find_spec("liger_kernel") is None:
        reason = "liger_kernel is not installed"
    else:
        try:
            from liger_kernel.transformers import apply_liger_kernel_to_qwen2_5_vl  # noqa: F401
        except Exception as exc:  # any import failure of an optional kernel package just means "not here"
            reason = f"its Qwen2.5-VL hook does not import ({type(exc).__name__}: {exc})"
    if reason is None:
        return True
    logger.warning("use_liger_kernel requested but %s: training without Liger kernels", reason)
    training_args.use_liger_kernel = False
    return False


def find_resume_checkpoint(output_dir: str | os.PathLike | None) -> str | None:
    """The newest complete checkpoint in ``output_dir``: the highest ``checkpoint-N`` holding
    ``trainer_state.json`` (written last by the Trainer, so a checkpoint cut short by a crash has none)."""
    if not output_dir or not Path(output_dir).is_dir():
        return None
    found = []
    for child in Path(output_dir).iterdir():
        match = _CHECKPOINT_DIR.match(child.name)
        if match and child.is_dir() and (child / "trainer_state.json").is_file():
            found.append((int(match.group(1)), child))
    return str(max(found)[1]) if found else None


def attach_deepspeed_to_process_group(training_args) -> None:
    """Let DeepSpeed's communication layer use the process group accelerate created.

    On GPUs accelerate initialises distributed through DeepSpeed and this is a no-op. On a CPU-only machine it
    creates a plain gloo group that DeepSpeed does not know about, so ZeRO-3's partitioned loading
    (``zero.Init`` inside ``from_pretrained``) would see a world of one process and reject the batch sizes.
    Starting DeepSpeed's communication there builds its shared-memory op under torch's build lock; a lock left
    by a killed build is waited for with a warning, then a one-line error (:mod:`streaming_vlm.train.build_lock`),
    never forever.
    """
    import torch.distributed as dist

    if training_args.deepspeed and dist.is_available() and dist.is_initialized():
        import deepspeed
        from deepspeed.accelerator import get_accelerator

        if not deepspeed.comm.is_initialized():
            builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
            if builder is not None and getattr(deepspeed.ops, "__compatible_ops__", {}).get(builder.NAME, False):
                wait_for_build_lock(builder.NAME)
        deepspeed.init_distributed(dist_backend=dist.get_backend())


_LOAD_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_dtype(model_args, training_args) -> torch.dtype:
    """The dtype of the trained weights: explicit, or (``auto``) half precision only under DeepSpeed, whose
    optimizer keeps float32 master weights; elsewhere float32, with ``bf16``/``fp16`` as the Trainer's autocast,
    because updates below half precision's resolution would be lost as the learning rate decays."""
    name = str(model_args.load_dtype).strip().lower()
    if name != "auto":
        if name not in _LOAD_DTYPES:
            raise ValueError(f"load_dtype must be auto, {', '.join(_LOAD_DTYPES)}; got {model_args.load_dtype!r}")
        return _LOAD_DTYPES[name]
    if training_args.deepspeed:
        if training_args.bf16:
            return torch.bfloat16
        if training_args.fp16:
            return torch.float16
    return torch.float32


def prepare_model(model_args, training_args):
    """``(model, tokenizer)`` ready for training (see the module docstring)."""
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    from streaming_vlm.models import default_attn_implementation

    path = model_args.pretrained_model_name_or_path
    device = "cuda" if torch.cuda.is_available() else "cpu"
    attn = model_args.attn_implementation or default_attn_implementation(device)
    # Created after TrainingArguments, so under ZeRO-3 from_pretrained loads the weights already partitioned.
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        path, dtype=load_dtype(model_args, training_args), attn_implementation=attn
    )
    tokenizer = AutoTokenizer.from_pretrained(path)
    model.config.use_cache = False

    if model_args.freeze_vision_tower:
        visual = model.model.visual
        visual.requires_grad_(False)
        if model_args.train_merger:
            visual.merger.requires_grad_(True)
    elif model_args.train_merger:
        logger.info("train_merger has no effect: the whole vision tower is trainable")

    # Non-reentrant checkpointing works with a frozen input side (no enable_input_require_grads needed).
    for name in ("activation_checkpointing_kwargs", "gradient_checkpointing_kwargs"):
        if hasattr(training_args, name) and not getattr(training_args, name):
            setattr(training_args, name, {"use_reentrant": False})
    trainable, total = count_parameters(model)
    logger.info("model %s: %d of %d parameters trainable (%s)", path, trainable, total, model.dtype)
    return model, tokenizer


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts. Under ZeRO-3 a parameter holds an empty placeholder and its
    full size is ``ds_numel``, which is counted instead of ``numel()``."""
    trainable = total = 0
    for p in model.parameters():
        n = int(getattr(p, "ds_numel", p.numel()))
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


def _copy_preprocessor_files(source: str, output_dir: str) -> None:
    """Keep the source checkpoint's preprocessor configs and stream defaults beside the saved model (a local
    directory, or a hub id already in the local cache; nothing is downloaded)."""
    for name in ("preprocessor_config.json", "video_preprocessor_config.json", "chat_template.json",
                 CHECKPOINT_FILE):
        src: Path | None = Path(source) / name
        if not src.is_file():
            src = None
            if not Path(source).exists():
                from huggingface_hub import try_to_load_from_cache

                try:
                    cached = try_to_load_from_cache(source, name)
                except ValueError:  # not a valid repo id
                    cached = None
                src = Path(cached) if isinstance(cached, str) else None
        if src is not None and not (Path(output_dir) / name).exists():
            shutil.copyfile(src, Path(output_dir) / name)


def word_token_weights(tokenizer, words: Sequence[str], weight: float, vocab_size: int) -> torch.Tensor | None:
    """Float ``(vocab_size,)`` loss weights: ``weight`` for the token of each of ``words`` as streamed commentary
    holds it (after a space), 1 for every other token; ``None`` when there are no words or the weight is 1.
    ``DatasetSetupError`` (a usage error) for a word that is not one token, which a weight per token cannot mean."""
    if not words or weight == 1.0:
        return None
    if not weight > 0:
        raise DatasetSetupError(f"word_loss_weight must be > 0, got {weight}", every_rank=True)
    weights = torch.ones(vocab_size)
    for word in words:
        ids = tokenizer.encode(" " + word.strip(), add_special_tokens=False)
        if len(ids) != 1 or not 0 <= ids[0] < vocab_size:
            raise DatasetSetupError(
                f"weighted_words: {word!r} is {len(ids)} tokens after a space, not one; weights are per token",
                every_rank=True,
            )
        weights[ids[0]] = weight
    return weights


def build_trainer(model_args, data_args, training_args) -> StreamingSFTTrainer:
    """Model, datasets, collator and callbacks assembled into a :class:`StreamingSFTTrainer`."""
    if training_args.output_dir is None:
        raise ValueError("output_dir is required")
    evaluating = str(getattr(training_args.eval_strategy, "value", training_args.eval_strategy)) != "no"
    if evaluating and not data_args.eval_annotation_paths:
        raise ValueError(f"eval_strategy={training_args.eval_strategy} needs eval_annotation_paths")
    configure_wandb(training_args.report_to)
    disable_unavailable_liger(training_args)

    attach_deepspeed_to_process_group(training_args)
    model, tokenizer = prepare_model(model_args, training_args)
    spec = VisionSpec.from_pretrained(model_args.pretrained_model_name_or_path)
    frame_cache = FrameCache(data_args.frame_cache_mb * 2**20) if data_args.frame_cache_mb else None
    builder = SampleBuilder(
        tokenizer, spec, data_args.sample_config(), tokens_per_second=model.config.vision_config.tokens_per_second,
        frame_cache=frame_cache,
    )
    failure_log = Path(training_args.output_dir) / BAD_SAMPLES_FILE

    def dataset(paths, split):
        try:  # the trainer counts bad lines across processes (the datasets' own stop is off)
            return StreamingSFTDataset(
                paths, builder, dataset_path=data_args.dataset_path, failure_log=failure_log,
                max_bad_sample_fraction=None, split=split,
            )  # fmt: skip
        except (FileNotFoundError, AnnotationError) as exc:
            raise DatasetSetupError(f"{split} data: {exc}", every_rank=True) from None

    train_dataset = dataset(data_args.train_annotation_paths, "train")
    eval_dataset = dataset(data_args.eval_annotation_paths, "eval") if data_args.eval_annotation_paths else None
    bad_lines = {
        ds.split: BadLineTracker(ds.total_lines, data_args.max_bad_sample_fraction, ds.split, failure_log)
        for ds in (train_dataset, eval_dataset) if ds is not None
    }
    return StreamingSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=StreamingCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[BadSampleReport(bad_lines)],
        vision_learning_rate=model_args.vision_learning_rate,
        vision_spec=spec,
        bad_lines=bad_lines,
        token_weights=word_token_weights(tokenizer, data_args.weighted_words or [], data_args.word_loss_weight,
                                         model.config.get_text_config().vocab_size),
    )


def run_training(model_args, data_args, training_args) -> dict[str, float]:
    """Train (resuming when a complete checkpoint exists), save the final model; returns the train metrics."""
    trainer = build_trainer(model_args, data_args, training_args)
    resume = training_args.resume_from_checkpoint
    if resume is not None and str(resume).strip().lower() in ("false", "no", "none"):
        resume = None  # explicitly start from the pretrained weights, whatever is in output_dir
    elif not resume:
        resume = find_resume_checkpoint(training_args.output_dir)
    if resume:
        logger.info("resuming from %s", resume)
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()
    trainer.save_state()
    if trainer.is_world_process_zero():
        _copy_preprocessor_files(model_args.pretrained_model_name_or_path, training_args.output_dir)
    metrics = dict(result.metrics)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    return metrics
