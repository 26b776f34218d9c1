"""Load Qwen2.5-VL checkpoints, and build a tiny random one that tests can use offline.

Contract:

* :func:`resolve_model_path` turns what ``--model`` names into a path or hub id (``tiny``: the tiny model,
  built on first use; ``demo``: the bundled demo checkpoint); :func:`add_load_arguments` adds ``--device`` and
  ``--dtype`` to a parser.
* :func:`load_model` takes a hub id (``mit-han-lab/StreamingVLM``, ``Qwen/Qwen2.5-VL-7B-Instruct``) or a
  local directory and returns a :class:`LoadedModel`: a ``Qwen2_5_VLForConditionalGeneration`` in eval mode
  with gradients off, on the requested device and dtype, its fast tokenizer, and the sampling defaults found
  in the checkpoint's ``generation_config.json``. Any failure to load (missing directory, no ``config.json``,
  a corrupt config or weight file, a model that is not ``qwen2_5_vl``, a hub id that cannot be fetched)
  raises :class:`ModelLoadError` whose message is a single line naming the path or id and the problem.
* :func:`build_tiny_tokenizer` trains a small byte-level BPE tokenizer shaped like Qwen's (same pre-tokenizer
  split, byte-level alphabet, the Qwen2.5-VL special tokens in Qwen's order after the learned vocabulary).
  It round-trips any text and gives the same ids on every build.
* :func:`build_tiny_model` writes a random-initialised Qwen2.5-VL checkpoint of a few MB (safetensors
  weights, config, tokenizer, ``generation_config.json``, ``preprocessor_config.json``) that
  ``from_pretrained`` loads with no network. It keeps the features the streaming engine depends on: grouped
  KV heads, M-RoPE with three non-empty sections, a vision tower with both windowed and full-attention
  blocks, 2x2 spatial merging and 2-frame temporal patches. Same seed, same weights.

Nothing here runs at import time, and no function touches the network unless given a hub id.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # transformers is imported where it is used, so importing this module stays cheap
    from transformers import (
        PreTrainedTokenizerBase,
        PreTrainedTokenizerFast,
        Qwen2_5_VLForConditionalGeneration,
    )

__all__ = [
    "DEMO_MODEL",
    "QWEN_SPECIAL_TOKENS",
    "LoadedModel",
    "ModelLoadError",
    "add_load_arguments",
    "build_tiny_model",
    "build_tiny_tokenizer",
    "default_attn_implementation",
    "load_model",
    "resolve_device",
    "resolve_dtype",
    "resolve_model_path",
]

QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen2's pre-tokenizer split: contractions, letter runs (with one leading non-letter), single digits,
# punctuation runs, newline runs and whitespace. Applied before the byte-level mapping (as Qwen2Tokenizer).
_QWEN_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

_VOCAB_MULTIPLE = 64

# Text tower of the tiny model. head_dim = 128 / 4 = 32, so M-RoPE sections must sum to 16.
_TINY_TEXT: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "hidden_act": "silu",
    "max_position_embeddings": 32768,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-6,
    "use_cache": True,
    "use_sliding_window": False,
    "attention_dropout": 0.0,
}
_TINY_ROPE_THETA = 1_000_000.0

# Vision tower: head_dim 64 / 4 = 16 (axial rope needs head_dim divisible by 4). Block 0 uses window attention
# (112 px windows = 4x4 merged tokens), block 1 full attention, like every 8th block of the real tower.
_TINY_VISION: dict[str, Any] = {
    "depth": 2,
    "hidden_size": 64,
    "hidden_act": "silu",
    "intermediate_size": 128,
    "num_heads": 4,
    "in_channels": 3,
    "out_hidden_size": 128,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [1],
    "tokens_per_second": 2,
    "initializer_range": 0.02,
}

_TINY_GENERATION = {
    "do_sample": True,
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 50,
    "repetition_penalty": 1.0,
}

_GENERATION_DEFAULT_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty")

_DTYPE_ALIASES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}


# ------------------------------------------------------------------------------------------------------------
# Tiny tokenizer
# ------------------------------------------------------------------------------------------------------------

_CORPUS_LINES = [
    "You are a helpful assistant.",
    "Commentate on this match",
    "Commentate on this match in real time.",
    "previous text",
    "system",
    "user",
    "assistant",
    "Time=12.0-13.0s",
    " ...",
    "And here comes the kick-off, the ball is rolling!",
    "He passes it back to the defender, who looks up and plays it long.",
    "What a save by the goalkeeper! That was heading for the top corner.",
    "The striker cuts inside, shoots... and it's a goal!",
    "It's 2-1 now, with 15 minutes left on the clock.",
    "The referee blows the whistle for a free kick on the edge of the box.",
    "She takes a quick look at the basket and drains the three-pointer.",
    "Rebound taken, fast break, and a thunderous dunk at the other end.",
    "That's his 23rd point of the night, and the crowd is on its feet.",
    "A yellow card for the midfielder after a late challenge.",
    "The corner is swung in, headed clear, and the counter-attack is on.",
    "He's offside! The flag goes up and the goal won't stand.",
    "Serve, return, a long rally from the baseline, and she wins the point.",
    "Break point saved with an ace down the T at 198 km/h.",
    "The batter swings and misses, strike three, and that's the inning.",
    "A beautiful through ball splits the defence; he's one on one with the keeper.",
    "Half-time here: the home side lead 1-0 after 45 minutes.",
    "Substitution for the visitors: number 9 comes off, number 17 comes on.",
    "They've had 62% of possession but only 3 shots on target.",
    "The lap times are dropping: 1:31.4, then 1:30.9, then 1:30.6.",
    "Into the final corner, he goes wide, and the car behind takes the lead!",
    "The players are walking out of the tunnel now.",
    "Let's take a look at the replay; you can see the foul clearly.",
    "I don't think that's a penalty, but the referee has pointed to the spot.",
    "We're into the 90th minute, with 4 minutes of added time.",
    "The fans are singing, the stadium is loud, what an atmosphere!",
    "Quarter 4, 2:10 to go, and the score is tied at 98.",
    "He dribbles past one, two, three players and lays it off.",
    "Good defending there, a well-timed tackle to win the ball back.",
    "The coach is not happy; he's shouting instructions from the touchline.",
    "Olympic record! 9.58 seconds, an incredible run.",
]

_CORPUS_WORDS = (
    "the ball goal shot pass player team match game score minute second keeper defender striker midfield "
    "corner free kick penalty referee crowd fans left right wing cross header save miss foul card yellow red "
    "half time first final point set serve rally basket dunk three lead chance great what and with from into "
    "over back down up now here there this that he she they we is are was has have it to of in on at for"
).split()


def _builtin_corpus() -> list[str]:
    """The deterministic English training corpus of the tiny tokenizer."""
    lines = list(_CORPUS_LINES)
    for i in range(0, 60, 3):
        lines.append(f"Time={i}.0-{i + 1}.0s")
        lines.append(f"Time={i + 0.5:.1f}-{i + 1.5:.1f}s ...")
    for i in range(0, 100, 7):
        lines.append(f"{i} {i * 3 % 100} {i / 4:.2f} {i}% {i}th minute, {i + 1}-{i % 5}")
    lines.append("0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000 3.14 0.5 1,000 (2) [3] {4} <5> #6 @7 $8 &9 *10")
    lines.append("! ? . , ; : ' \" - -- ... / \\ | _ ~ ` ^ ( ) [ ] { } < > # @ $ % & * + =")
    words = _CORPUS_WORDS
    for i in range(len(words)):
        a, b, c = words[i], words[(i * 7 + 3) % len(words)], words[(i * 13 + 5) % len(words)]
        lines.append(f"{a.capitalize()} {b} {c}, {c} {a}. {b.upper()}!")
    lines.append("system\nYou are a helpful assistant.\n")
    lines.append("user\nCommentate on this match\n\nassistant\nprevious text ...\n")
    return lines


def build_tiny_tokenizer(
    corpus: Iterable[str] | None = None,
    vocab_size: int = 512,
) -> PreTrainedTokenizerFast:
    """Train a small Qwen-shaped byte-level BPE tokenizer.

    ``vocab_size`` is the target total size including the 14 special tokens (fewer if the corpus runs out
    of merges). The learned vocabulary comes first (the 256 byte symbols, then merges), the special tokens
    after it in Qwen's order, as in Qwen's own vocabulary. eos is ``<|im_end|>``, pad ``<|endoftext|>``, no
    bos is prepended.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    n_special = len(QWEN_SPECIAL_TOKENS)
    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(byte_alphabet) + n_special:
        raise ValueError(f"vocab_size must be at least {len(byte_alphabet) + n_special}, got {vocab_size}")

    backend = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    # Qwen also applies an NFC normalizer; it is left out so that every string round-trips byte for byte.
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - n_special,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=sorted(byte_alphabet),
        special_tokens=[],
    )
    lines = list(corpus) if corpus is not None else _builtin_corpus()
    backend.train_from_iterator(lines, trainer=trainer)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS])

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL_TOKENS)})
    return tokenizer


# ------------------------------------------------------------------------------------------------------------
# Tiny model
# ------------------------------------------------------------------------------------------------------------


def _default_mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies into (t, h, w) in Qwen's 2:3:3 proportion, none empty."""
    half = head_dim // 2
    if half < 3:
        raise ValueError(f"head_dim {head_dim} is too small for three M-RoPE sections")
    hw = max(1, round(3 * half / 8))
    t = half - 2 * hw
    if t < 1:
        hw = (half - 1) // 2
        t = half - 2 * hw
    return [t, hw, hw]


def _tiny_text_config(
    vocab_size: int,
    token_ids: dict[str, int],
    overrides: dict[str, Any],
) -> dict[str, Any]:
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLTextConfig

    overrides = dict(overrides)
    mrope_section = overrides.pop("mrope_section", None)
    rope_theta = overrides.pop("rope_theta", _TINY_ROPE_THETA)
    allowed = {f.name for f in Qwen2_5_VLTextConfig.__dataclass_fields__.values()}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise TypeError(f"unknown text-config override(s): {', '.join(unknown)}")

    text: dict[str, Any] = dict(_TINY_TEXT)
    text.update(
        vocab_size=vocab_size,
        bos_token_id=token_ids["<|endoftext|>"],
        eos_token_id=token_ids["<|im_end|>"],
        pad_token_id=token_ids["<|endoftext|>"],
    )
    text.update(overrides)
    text.setdefault("max_window_layers", text["num_hidden_layers"])

    hidden, heads = text["hidden_size"], text["num_attention_heads"]
    if hidden % heads:
        raise ValueError(f"hidden_size {hidden} is not divisible by num_attention_heads {heads}")
    if heads % text["num_key_value_heads"]:
        raise ValueError(f"num_attention_heads {heads} is not divisible by num_key_value_heads")
    head_dim = hidden // heads
    if mrope_section is None:
        mrope_section = _default_mrope_section(head_dim)  # [4, 6, 6] for the default head_dim of 32
    mrope_section = [int(s) for s in mrope_section]
    if len(mrope_section) != 3 or min(mrope_section) < 1 or sum(mrope_section) != head_dim // 2:
        raise ValueError(
            f"mrope_section {mrope_section} must be 3 positive ints summing to head_dim/2 = {head_dim // 2}"
        )
    text["rope_parameters"] = {
        "rope_type": "default",
        "mrope_section": mrope_section,
        "rope_theta": float(rope_theta),
    }
    return text


def build_tiny_model(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    tokenizer: PreTrainedTokenizerBase | None = None,
    **overrides: Any,
) -> Path:
    """Write a random-initialised tiny Qwen2.5-VL checkpoint to ``out_dir`` and return its path.

    The directory holds ``config.json``, ``model.safetensors`` (float32), the tokenizer files,
    ``generation_config.json`` and ``preprocessor_config.json``; ``load_model(out_dir)`` reads it with no
    network. ``overrides`` replace text-config fields (``num_hidden_layers=4``, ``hidden_size=256`` ...);
    ``mrope_section`` and ``rope_theta`` are accepted too (``mrope_section`` is re-derived when the head size
    changes). Weights are drawn from torch's generator seeded with ``seed`` inside a forked RNG, so the
    caller's random state is untouched.
    """
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.utils import logging as hf_logging

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer is None:
        tokenizer = build_tiny_tokenizer()

    token_ids: dict[str, int] = {}
    for token in QWEN_SPECIAL_TOKENS:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if not isinstance(token_id, int) or token_id == tokenizer.unk_token_id:
            raise ValueError(f"tokenizer has no special token {token}")
        token_ids[token] = token_id
    vocab_size = int(math.ceil(len(tokenizer) / _VOCAB_MULTIPLE) * _VOCAB_MULTIPLE)

    text = _tiny_text_config(vocab_size, token_ids, overrides)
    if _TINY_VISION["out_hidden_size"] != text["hidden_size"]:
        vision = dict(_TINY_VISION, out_hidden_size=text["hidden_size"])
    else:
        vision = dict(_TINY_VISION)
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=token_ids["<|image_pad|>"],
        video_token_id=token_ids["<|video_pad|>"],
        vision_start_token_id=token_ids["<|vision_start|>"],
        vision_end_token_id=token_ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    config.dtype = torch.float32

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model = model.to(torch.float32).eval()

    generation = GenerationConfig(
        **_TINY_GENERATION,
        bos_token_id=token_ids["<|endoftext|>"],
        eos_token_id=[token_ids["<|im_end|>"], token_ids["<|endoftext|>"]],
        pad_token_id=token_ids["<|endoftext|>"],
    )
    model.generation_config = generation

    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(out, safe_serialization=True)
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(out)
    preprocessor = {
        "patch_size": vision["patch_size"],
        "temporal_patch_size": vision["temporal_patch_size"],
        "merge_size": vision["spatial_merge_size"],
        "image_mean": _CLIP_MEAN,
        "image_std": _CLIP_STD,
        "min_pixels": 3136,
        "max_pixels": 12845056,
        "image_processor_type": "Qwen2VLImageProcessor",
    }
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n", encoding="utf-8")
    return out


# ------------------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------------------


class ModelLoadError(Exception):
    """A checkpoint could not be loaded; the message is one line naming the path or id and the problem."""


@dataclass
class LoadedModel:
    """A loaded checkpoint: model (eval, no grad), tokenizer and the checkpoint's sampling defaults."""

    model: Qwen2_5_VLForConditionalGeneration
    tokenizer: PreTrainedTokenizerBase
    generation_defaults: dict[str, Any] = field(default_factory=dict)
    path: str = ""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA if available, else CPU; otherwise a torch device string (``"cuda:1"``, ``"cpu"``)."""
    if isinstance(device, torch.device):
        resolved = device
    else:
        name = str(device).strip().lower()
        if name in ("", "auto"):
            return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        try:
            resolved = torch.device(name)
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(resolved)!r} requested but CUDA is not available")
    return resolved


def resolve_dtype(dtype: str | torch.dtype = "auto", device: str | torch.device | None = None) -> torch.dtype:
    """``"auto"``: bfloat16 on CUDA (float16 where bf16 is unsupported), float32 elsewhere.

    Accepts ``bf16``/``bfloat16``, ``fp16``/``float16``, ``fp32``/``float32`` or a ``torch.dtype``.
    """
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.bfloat16, torch.float16, torch.float32):
            raise ValueError(f"unsupported dtype {dtype}: choose auto, bf16, fp16 or fp32")
        return dtype
    name = str(dtype).strip().lower()
    if name.startswith("torch."):
        name = name[len("torch.") :]
    if name in ("", "auto"):
        dev = device if isinstance(device, torch.device) else torch.device(str(device or "cpu"))
        if dev.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name not in _DTYPE_ALIASES:
        raise ValueError(f"unknown dtype {dtype!r}: choose auto, bf16/bfloat16, fp16/float16 or fp32/float32")
    return _DTYPE_ALIASES[name]


def default_attn_implementation(device: str | torch.device) -> str:
    """``flash_attention_2`` on CUDA when the flash_attn package is importable, else ``sdpa``."""
    dev = device if isinstance(device, torch.device) else torch.device(str(device))
    if dev.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def _one_line(exc: BaseException, limit: int = 240) -> str:
    """An exception's text folded onto one line, shortened, prefixed by its type."""
    text = " ".join(str(exc).split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _looks_like_hub_id(name: str) -> bool:
    if not name or name.startswith((".", "/", "~", "\\")) or os.path.isabs(name):
        return False
    parts = name.split("/")
    return len(parts) <= 2 and all(parts) and "\\" not in name


def _has_weights(directory: Path) -> bool:
    patterns = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "*.pt")
    return any(any(directory.glob(pattern)) for pattern in patterns)


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE as set now (huggingface_hub reads them only once, at import)."""
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return bool(constants.HF_HUB_OFFLINE) or any(
        f.strip().upper() in ("1", "ON", "YES", "TRUE") for f in flags
    )


def _generation_defaults(source: str, is_local: bool, local_only: bool) -> dict[str, Any]:
    from transformers import GenerationConfig

    if is_local and not (Path(source) / "generation_config.json").is_file():
        return {}
    try:
        generation = GenerationConfig.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError):
        return {}
    values = {key: getattr(generation, key, None) for key in _GENERATION_DEFAULT_KEYS}
    return {key: value for key, value in values.items() if value is not None}


def load_model(
    name_or_path: str | os.PathLike[str],
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    attn_implementation: str | None = None,
) -> LoadedModel:
    """Load a Qwen2.5-VL checkpoint (hub id or local directory) and its tokenizer (see module docstring)."""
    from transformers import AutoConfig, AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    name = os.fspath(name_or_path)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    attn = attn_implementation or default_attn_implementation(dev)

    def fail(problem: str) -> ModelLoadError:
        return ModelLoadError(f"cannot load model {name!r}: {problem}")

    local = Path(name).expanduser()
    is_local = local.exists()
    if is_local:
        if not local.is_dir():
            raise fail("not a directory")
        source = str(local.resolve())
        config_file = local / "config.json"
        if not config_file.is_file():
            raise fail("no config.json in that directory")
        try:
            raw = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise fail(f"unreadable config.json ({_one_line(exc)})") from exc
        if not isinstance(raw, dict):
            raise fail("config.json is not a JSON object")
        model_type = raw.get("model_type")
        if model_type != "qwen2_5_vl":
            raise fail(f"model_type is {model_type!r}, expected 'qwen2_5_vl' (a Qwen2.5-VL checkpoint)")
        if not _has_weights(local):
            raise fail("no weight files (*.safetensors or pytorch_model*.bin) in that directory")
    elif not _looks_like_hub_id(name):
        raise fail("no such directory")
    else:
        source = name

    # Local directories never touch the network; hub ids only from the cache when offline is set.
    local_only = is_local or _hub_offline()
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=local_only)
    except Exception as exc:  # every failure becomes one ModelLoadError line
        where = "invalid config.json" if is_local else "not a local directory and not fetchable from the hub"
        raise fail(f"{where} ({_one_line(exc)})") from exc
    if getattr(config, "model_type", None) != "qwen2_5_vl":
        raise fail(f"model_type is {getattr(config, 'model_type', None)!r}, expected 'qwen2_5_vl'")

    # The tokenizer first: it is cheap, and a broken one should not cost a full weight load.
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    except Exception as exc:
        raise fail(f"tokenizer could not be loaded ({_one_line(exc)})") from exc

    kwargs: dict[str, Any] = {
        "config": config,
        "dtype": torch_dtype,
        "attn_implementation": attn,
        "output_loading_info": True,
        "local_files_only": local_only,
    }
    if dev.type != "cpu":
        kwargs["device_map"] = str(dev)
    try:
        model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(source, **kwargs)
    except Exception as exc:
        raise fail(f"weights could not be loaded ({_one_line(exc)})") from exc
    # from_pretrained leaves absent or wrongly shaped tensors randomly initialised with only a warning;
    # a checkpoint like that is corrupt for our purposes.
    for kind, label in (("missing_keys", "missing from"), ("mismatched_keys", "with the wrong shape in")):
        bad = sorted(str(key[0] if isinstance(key, tuple) else key) for key in (info.get(kind) or ()))
        if bad:
            raise fail(f"corrupt weights: {len(bad)} tensor(s) {label} the checkpoint (first: {bad[0]})")

    model = model.to(dev)
    model.eval()
    model.requires_grad_(False)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        generation_defaults=_generation_defaults(source, is_local, local_only),
        path=source,
        device=dev,
        dtype=torch_dtype,
    )


TINY_MODEL_ALIAS = "tiny"
"""``--model tiny`` names the random tiny model, built offline into the user cache on first use."""

DEMO_MODEL = Path(__file__).parent / "assets" / "demo_model"
"""The bundled demo checkpoint (trained on the synthetic world)."""
DEMO_MODEL_ALIAS = "demo"
"""``--model demo`` names :data:`DEMO_MODEL` (unless a file or folder named ``demo`` exists)."""
DEMO_VIDEO = Path(__file__).parent / "assets" / "demo.mp4"
"""The bundled one-minute clip of the synthetic world that the demo model comments on (``infer demo``)."""


def resolve_model_path(model: str) -> str:
    """What ``--model`` names: ``tiny`` builds (once, :func:`ensure_tiny_model`) and names the random tiny model;
    ``demo`` names the bundled demo checkpoint unless a path ``demo`` exists (:class:`ModelLoadError` when the
    install lacks it); anything else (a directory, a hub id) is returned as given. Nothing is loaded."""
    if model == TINY_MODEL_ALIAS:
        return str(ensure_tiny_model())  # looked up at call time: tests patch it
    if model == DEMO_MODEL_ALIAS and not Path(model).exists():
        if not (DEMO_MODEL / "model.safetensors").is_file():
            raise ModelLoadError(f"the demo model is not in this install ({DEMO_MODEL}); "
                                 "train it with SHIP=1 bash scripts/train_demo.sh, or pass --model")
        return str(DEMO_MODEL)
    return model


def add_load_arguments(parser: argparse.ArgumentParser, *, device: str = "auto", dtype: str = "auto",
                       given_only: bool = False):
    """Add ``--device`` and ``--dtype`` (how a model is loaded: :func:`load_model`) to a new argument group of
    ``parser``, with these defaults, and return the group. With ``given_only`` (or a default of
    ``argparse.SUPPRESS``) a flag left off the command line is absent from the namespace, so that a config file can
    set it; the help still shows the default. Values are checked where they are used (:func:`resolve_device`,
    :func:`resolve_dtype`), so a bad one is a one-line ``ValueError``, not an argparse usage error."""

    def shown(default: str) -> str:
        return "" if default == argparse.SUPPRESS else f" (default: {default})"

    group = parser.add_argument_group("model loading")
    group.add_argument("--device", default=argparse.SUPPRESS if given_only else device,
                       help="auto, cpu, cuda or cuda:N" + shown(device))
    group.add_argument("--dtype", default=argparse.SUPPRESS if given_only else dtype,
                       help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16 or fp32" + shown(dtype))
    return group


def user_cache_dir() -> Path:
    """``$STREAMING_VLM_CACHE``, else ``$XDG_CACHE_HOME/streaming-vlm``, else ``~/.cache/streaming-vlm``."""
    if os.environ.get("STREAMING_VLM_CACHE"):
        return Path(os.environ["STREAMING_VLM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "streaming-vlm"


def ensure_tiny_model(root: str | os.PathLike[str] | None = None) -> Path:
    """The tiny model's directory, built (atomically) if it is not there yet."""
    target = Path(root) if root is not None else user_cache_dir() / "tiny-model-v1"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target.parent))
    build_tiny_model(staging / "model")
    try:
        os.replace(staging / "model", target)
    except OSError:  # another process won the race
        if not (target / "config.json").is_file():
            raise
    shutil.rmtree(staging, ignore_errors=True)
    return target
