"""Training arguments: typed dataclasses, read from a YAML file with command-line overrides.

Contract
--------
* :class:`ModelArguments` and :class:`DataArguments` hold what is ours; everything else is a standard
  ``transformers.TrainingArguments`` field. Names follow the reference launch scripts
  (``--pretrained_model_name_or_path``, ``--train_annotation_paths``, ``--eval_annotation_paths``,
  ``--text_sink``, ``--text_sliding_window`` ...), so their command lines keep working.
* The data arguments that are stream settings (``text_sink``, ``text_sliding_window``, ``fps``, the pixel
  budgets, ``max_frames``, ``query``) take their defaults, help texts and checks from ``streaming_vlm/settings.py``
  (:data:`TRAINING_ALIASES` maps a reference name to its setting); :meth:`DataArguments.sample_config` builds the
  samples' :class:`SampleConfig` from them. A window may be ``null``, ``unlimited`` (``none``, ``inf``) or a count.
* :func:`parse_args` reads ``--config FILE.yaml`` (keys are argument names), turns it into argument strings
  placed *before* the command-line ones, so the command line wins; ``null`` in the YAML sets a field to
  ``None``. Unknown YAML keys raise :class:`ConfigError`; unknown command-line flags are an argparse error.
* Machine-dependent flags are adapted, with a warning, so that GPU configs also run on a CPU-only machine
  (tests, smoke runs): without CUDA, ``tf32`` is dropped, ``bf16`` falls back to float32, and a DeepSpeed run
  sets ``use_cpu`` (so that accelerate builds a gloo process group).
  ``--deepspeed none`` turns DeepSpeed off. ``overwrite_output_dir`` (gone from transformers 5) is accepted
  and ignored: training resumes from the newest complete checkpoint in ``output_dir`` instead.
  ``warmup_ratio`` becomes ``warmup_steps`` (a float below 1 is a ratio) where transformers dropped it.

Nothing is parsed at import time.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from streaming_vlm.argtypes import count_or_unlimited
from streaming_vlm.data.sample import DEFAULT_MAX_SAMPLE_TOKENS, SampleConfig
from streaming_vlm.settings import SETTING_NAMES, SettingsError, setting_field

__all__ = ["TRAINING_ALIASES", "ConfigError", "DataArguments", "ModelArguments", "load_config", "parse_args"]

logger = logging.getLogger(__name__)

# Reference launch-line flags that transformers no longer has; accepted and ignored, with the reason.
RETIRED_ARGUMENTS = {
    "overwrite_output_dir": "removed in transformers 5; training resumes from the newest complete checkpoint "
    "in output_dir (use a new output_dir to start over)",
}

# Reference flags that transformers renamed: old name -> new name. Translated only when the installed
# TrainingArguments no longer has the old name.
RENAMED_ARGUMENTS = {
    "warmup_ratio": "warmup_steps",  # transformers 5 reads a float warmup_steps in [0, 1) as a ratio
}

_NONE_WORDS = ("", "none", "null")

TRAINING_ALIASES = {"text_sliding_window": "text_window"}
"""Data arguments that keep the reference's name for a stream setting: training name -> setting name."""

_WINDOW_ARGUMENTS = ("text_sink", "text_sliding_window")
"""Data arguments that take a count or ``unlimited``; they bypass ``HfArgumentParser``'s int-only type."""


class ConfigError(ValueError):
    """A configuration file or value that cannot be used; the message names the file or key."""


@dataclass
class ModelArguments:
    pretrained_model_name_or_path: str = field(
        metadata={"help": "Qwen2.5-VL checkpoint: hub id (Qwen/Qwen2.5-VL-7B-Instruct) or local directory."}
    )
    freeze_vision_tower: bool = field(
        default=True, metadata={"help": "Freeze the vision tower (model.model.visual), as the reference does."}
    )
    train_merger: bool = field(
        default=False,
        metadata={"help": "Keep the vision tower's patch merger trainable when the tower is frozen."},
    )
    vision_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Learning rate of the trainable vision-tower parameters (merger included), following the "
                          "same schedule; default: learning_rate. A tower trained from scratch learns faster higher."},
    )
    load_dtype: str = field(
        default="auto",
        metadata={"help": "dtype the weights are loaded and updated in: auto (bf16/fp16 under DeepSpeed, whose "
                          "optimizer keeps float32 master weights; float32 otherwise, with bf16/fp16 as autocast: "
                          "mixed precision), float32, bfloat16 or float16."},
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={"help": "sdpa, flash_attention_2 or eager; default: flash_attention_2 on CUDA when installed."},
    )


@dataclass
class DataArguments:
    train_annotation_paths: list[str] = field(
        default_factory=list,
        metadata={"help": "Training JSONL files (relative to dataset_path); list a file twice to upsample it."},
    )
    eval_annotation_paths: list[str] | None = field(
        default=None, metadata={"help": "Evaluation JSONL files (relative to dataset_path)."}
    )
    dataset_path: str | None = field(
        default_factory=lambda: os.environ.get("DATASET_PATH"),
        metadata={"help": "Root of relative annotation and video paths (default: $DATASET_PATH)."},
    )
    # stream settings under the reference's names: default, help and checks from streaming_vlm/settings.py
    text_sink: int | None = setting_field("text_sink")
    text_sliding_window: int | None = setting_field("text_window")
    fps: float = setting_field("fps")
    min_pixels: int = setting_field("min_pixels")
    max_pixels: int = setting_field("max_pixels")
    total_pixels: int = setting_field("total_pixels")
    max_frames: int = setting_field("max_frames")
    query: str = setting_field("query")
    max_sample_tokens: int | None = field(
        default=DEFAULT_MAX_SAMPLE_TOKENS,
        metadata={"help": f"Tokens per sample at most, vision and text (default {DEFAULT_MAX_SAMPLE_TOKENS}: the "
                          "longest legitimate sample under the default budgets, a 4-minute clip, has ~33,600; a 24-s "
                          "window ~20,300). A longer record is a bad sample, rejected before its frames are decoded. "
                          "null: no cap."},
    )
    weighted_words: list[str] | None = field(
        default=None,
        metadata={"help": "Words of the commentary whose token (each must be one token after a space) counts "
                          "word_loss_weight times in the loss, e.g. the few words that carry a fact the model must "
                          "keep; the loss stays a weighted mean over the window's supervised tokens."},
    )
    word_loss_weight: float = field(
        default=1.0, metadata={"help": "Loss weight of the weighted_words' tokens (every other token: 1)."}
    )
    frame_cache_mb: int = field(
        default=0,
        metadata={"help": "Keep whole decoded videos (RGB at fps, before resizing) in memory up to this many MB per "
                          "process, so that a video's windows decode it once instead of once each; the samples are "
                          "the same. For datasets whose decoded frames fit (the demo's: ~1.3 GB); a larger video is "
                          "decoded window by window. 0: off."},
    )
    max_bad_sample_fraction: float = field(
        default=0.05,
        metadata={"help": "Stop when the distinct lines that cannot be used (a line retried or upsampled counts once) "
                          "exceed this fraction of the data's distinct lines: whether a run stops depends on the "
                          "data, not on the sampling order."},
    )

    def __post_init__(self) -> None:
        if isinstance(self.train_annotation_paths, str):
            self.train_annotation_paths = [self.train_annotation_paths]
        if isinstance(self.eval_annotation_paths, str):
            self.eval_annotation_paths = [self.eval_annotation_paths]
        if not self.train_annotation_paths:
            raise ConfigError("train_annotation_paths is required: one or more annotation JSONL files")
        try:
            sample = self.sample_config()
            sample.check_chunks()
        except SettingsError as exc:
            raise ConfigError(_in_training_names(str(exc))) from None
        for name in _SETTING_ARGUMENTS:  # as the settings hold them: 'unlimited' is None, an int fps a float
            setattr(self, name, getattr(sample, TRAINING_ALIASES.get(name, name)))
        if isinstance(self.weighted_words, str):
            self.weighted_words = [self.weighted_words]
        if not self.word_loss_weight > 0:
            raise ConfigError(f"word_loss_weight must be > 0, got {self.word_loss_weight}")
        if not 0.0 <= self.max_bad_sample_fraction <= 1.0:
            raise ConfigError(f"max_bad_sample_fraction must be in [0, 1], got {self.max_bad_sample_fraction}")
        if self.frame_cache_mb < 0:
            raise ConfigError(f"frame_cache_mb must be >= 0 (0: off), got {self.frame_cache_mb}")

    def sample_config(self) -> SampleConfig:
        """The :class:`SampleConfig` these arguments describe (``SettingsError`` for a bad value)."""
        values = {TRAINING_ALIASES.get(name, name): getattr(self, name) for name in _SETTING_ARGUMENTS}
        return SampleConfig(**values, max_sample_tokens=self.max_sample_tokens)


_SETTING_ARGUMENTS = tuple(f.name for f in dataclasses.fields(DataArguments)
                           if TRAINING_ALIASES.get(f.name, f.name) in SETTING_NAMES)
"""The data arguments that are stream settings (under their training names)."""


def _in_training_names(message: str) -> str:
    """A settings message with each setting that training knows by another name called by that name."""
    for training, setting in TRAINING_ALIASES.items():
        message = message.replace("--" + setting.replace("_", "-"), "--" + training).replace(setting, training)
    return message


def _argument_parser():
    from transformers import HfArgumentParser, TrainingArguments

    return HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping in a YAML config file (empty file: ``{}``); :class:`ConfigError` if unreadable."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({' '.join(str(exc).split())})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of argument names to values, got {type(values).__name__}")
    return values


def _as_argv(key: str, value: Any) -> list[str]:
    """One YAML entry as command-line strings (``--key=value``, or ``--key v1 v2`` for lists)."""
    if isinstance(value, bool):
        return [f"--{key}={'true' if value else 'false'}"]
    if isinstance(value, (list, tuple)):
        return [f"--{key}", *(str(v) for v in value)] if value else []
    if isinstance(value, dict):
        return [f"--{key}={json.dumps(value)}"]
    return [f"--{key}={value}"]


def _renamed(old: str, value: Any, known: set[str], source: str) -> tuple[str, Any]:
    """``(name, value)`` to use for a reference argument that transformers may have renamed."""
    new = RENAMED_ARGUMENTS.get(old)
    if new is None or old in known:
        return old, value
    if old == "warmup_ratio":
        try:
            ratio = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: warmup_ratio must be a number, got {value!r}") from None
        if not 0.0 <= ratio < 1.0:
            raise ConfigError(f"{source}: warmup_ratio must be in [0, 1), got {ratio}")
        return new, ratio
    return new, value


def _yaml_to_argv(values: dict[str, Any], known: set[str], source: str, parser) -> list[str]:
    values = dict(_renamed(k, v, known, source) for k, v in values.items())
    unknown = [k for k in values if k not in known and k not in RETIRED_ARGUMENTS]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), known, n=1)
            hints.append(f"{key} (did you mean {close[0]}?)" if close else str(key))
        raise ConfigError(
            f"{source}: unknown key(s): {', '.join(hints)}; keys must be ModelArguments, DataArguments or "
            "TrainingArguments fields"
        )
    argv: list[str] = []
    for key, value in values.items():
        if key in RETIRED_ARGUMENTS:
            logger.warning("%s: ignoring %s: %s", source, key, RETIRED_ARGUMENTS[key])
        elif value is None:
            parser.set_defaults(**{key: None})
        elif key in _WINDOW_ARGUMENTS:  # a number is checked by DataArguments
            parser.set_defaults(**{key: _window(value, f"{source}: {key}")})
        else:
            argv += _as_argv(key, value)
    return argv


def _window(value: Any, where: str) -> Any:
    """A window's value for ``set_defaults``: text (``unlimited``, a count) read now, since argparse would parse a
    string default with the field's int type; :class:`ConfigError` naming ``where`` for other text."""
    if not isinstance(value, str):
        return value
    try:
        return count_or_unlimited(value)
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _adapt_to_machine(ns: argparse.Namespace) -> None:
    import torch

    if str(ns.deepspeed).strip().lower() in _NONE_WORDS or ns.deepspeed is None:
        ns.deepspeed = None
    if torch.cuda.is_available():
        return
    if ns.tf32:
        logger.warning("tf32 needs a CUDA GPU; none here, so it is left off")
        ns.tf32 = None
    if ns.bf16 and not ns.use_cpu:
        logger.warning("bf16 training needs a GPU here (or --use_cpu true); training in float32 instead")
        ns.bf16 = False
    if ns.deepspeed and not ns.use_cpu:
        # accelerate sets up a (gloo) process group on a CPU-only machine only when told it is a CPU run
        logger.info("DeepSpeed without CUDA: running on CPU with a gloo process group")
        ns.use_cpu = True


def parse_args(argv: Sequence[str] | None = None):
    """``(ModelArguments, DataArguments, TrainingArguments)`` from ``--config FILE.yaml`` and the command line.

    Command-line ``--key value`` pairs override the file. ``--help`` prints every argument and exits.
    """
    from transformers import TrainingArguments

    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    for name in RETIRED_ARGUMENTS:
        pre.add_argument(f"--{name}", nargs="?", const="true", default=None)
    known = {f.name for dtype in (ModelArguments, DataArguments, TrainingArguments) for f in dataclasses.fields(dtype)}
    renamed = [old for old in RENAMED_ARGUMENTS if old not in known]
    for name in renamed:
        pre.add_argument(f"--{name}", default=None)
    for name in _WINDOW_ARGUMENTS:  # read here: HfArgumentParser would take only an int
        pre.add_argument(f"--{name}", f"--{name.replace('_', '-')}", default=argparse.SUPPRESS)
    early, rest = pre.parse_known_args(argv)
    for name, reason in RETIRED_ARGUMENTS.items():
        if getattr(early, name) is not None:
            logger.warning("ignoring --%s: %s", name, reason)
    for old in renamed:
        if getattr(early, old) is not None:
            new, value = _renamed(old, getattr(early, old), known, f"--{old}")
            rest.append(f"--{new}={value}")

    parser = _argument_parser()
    from_file = _yaml_to_argv(load_config(early.config), known, str(early.config), parser) if early.config else []
    for name in _WINDOW_ARGUMENTS:  # the command line beats the file
        if name in vars(early):
            parser.set_defaults(**{name: _window(getattr(early, name), f"--{name}")})
    ns = parser.parse_args(from_file + rest)
    _adapt_to_machine(ns)

    values = vars(ns)
    out = []
    for dtype in (ModelArguments, DataArguments, TrainingArguments):
        names = {f.name for f in dataclasses.fields(dtype) if f.init}
        out.append(dtype(**{k: v for k, v in values.items() if k in names}))
    model_args, data_args, training_args = out
    return model_args, data_args, training_args
