"""``streaming-vlm infer``: streaming commentary on a video file.

Wires a ``VideoReader`` (frames by time) to a ``StreamSession`` (the engine) and the output writers
(WebVTT, JSON lines), with a progress bar and a closing summary. Options come from ``InferConfig``
(typed, with defaults), optionally from a YAML file (``--config``), then from command-line flags.
Bad input (a missing or unreadable video, a start past its end, an output that cannot be written or would
overwrite the video, an unloadable model) ends the run with one line on stderr and a non-zero exit code, before
anything expensive happens and before any output is created.
"""

from __future__ import annotations

import argparse
import math
import os
import stat
import sys
import time
import warnings
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch
import yaml

from streaming_vlm.argtypes import count_or_unlimited, finite_float
from streaming_vlm.engine import MODES, StreamConfig, StreamSession
from streaming_vlm.layout import DEFAULT_QUERY, DEFAULT_SYSTEM_PROMPT
from streaming_vlm.models import DEMO_MODEL as DEMO_MODEL  # re-exported: model-path resolution lives in models
from streaming_vlm.models import resolve_model_path
from streaming_vlm.sampling import SamplingConfig

DEFAULT_MODEL = "demo"
"""The bundled demo checkpoint (trained on the synthetic world); real models are one ``--model`` away."""


@dataclass
class InferConfig:
    """Options of ``streaming-vlm infer`` (YAML keys use these names; flags use dashes)."""

    video: str = ""
    model: str = DEFAULT_MODEL
    output: str | None = None
    jsonl: str | None = None
    mode: str = "streaming"
    query: str = DEFAULT_QUERY
    previous_text: str = ""
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    start: float = 0.0
    duration: float | None = None
    chunk_seconds: float = 1.0
    fps: float = 2.0
    min_pixels: int = 100 * 28 * 28
    max_pixels: int = 768 * 28 * 28
    vision_window: int | None = 16
    text_rounds: int | None = 16
    text_sink: int | None = 512
    text_window: int | None = 512
    reset_every: float = 100.0
    max_new_tokens: int = 20
    temperature: float = 0.9
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float = 1.05
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    quiet: bool = False
    explicit: frozenset[str] = field(default=frozenset(), repr=False, compare=False)
    """Options the user set (YAML or flags); the others may come from the checkpoint's ``streaming_vlm.json``."""

    def __post_init__(self):
        for f in fields(self):  # YAML values skip the flags' types
            value = getattr(self, f.name)
            if f.type in _NUMBER_TYPES and value is not None:
                flag = "--" + f.name.replace("_", "-")
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"{flag} must be a number, got {value!r}")
                if not math.isfinite(value):
                    raise ValueError(f"{flag} must be a finite number, got {value}")
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.start < 0:
            raise ValueError(f"--start must be >= 0, got {self.start}")
        if self.duration is not None and self.duration <= 0:
            raise ValueError(f"--duration must be > 0, got {self.duration}")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"--min-pixels ({self.min_pixels}) is larger than --max-pixels ({self.max_pixels})")
        if not (self.fps > 0 and self.chunk_seconds > 0):
            raise ValueError(f"--fps and --chunk-seconds must be > 0, got {self.fps:g} and {self.chunk_seconds:g}")
        frames = self.fps * self.chunk_seconds
        n = round(frames)
        if n < 2 or n % 2 or abs(frames - n) > 1e-9 * frames:  # Qwen2.5-VL encodes frames in pairs
            raise ValueError(f"--fps * --chunk-seconds must be an even whole number of frames per chunk, "
                             f"got {self.fps:g} * {self.chunk_seconds:g} = {frames:g}")
        self.stream_config({})  # the sampling, window and reset options, checked before anything loads

    def sampling(self, checkpoint_defaults: dict) -> SamplingConfig:
        """Flags win; top-p/top-k otherwise come from the checkpoint's generation config."""
        return SamplingConfig(
            temperature=self.temperature,
            top_p=self.top_p if self.top_p is not None else checkpoint_defaults.get("top_p"),
            top_k=self.top_k if self.top_k is not None else checkpoint_defaults.get("top_k"),
            repetition_penalty=self.repetition_penalty,
            max_new_tokens=self.max_new_tokens,
        )

    def stream_config(self, checkpoint_defaults: dict) -> StreamConfig:
        return StreamConfig(
            mode=self.mode,
            query=self.query,
            previous_text=self.previous_text,
            system_prompt=self.system_prompt,
            chunk_seconds=self.chunk_seconds,
            fps=self.fps,
            vision_window=self.vision_window,
            text_rounds=self.text_rounds,
            text_sink=self.text_sink,
            text_window=self.text_window,
            reset_every=self.reset_every,
            sampling=self.sampling(checkpoint_defaults),
            seed=self.seed,
        )


_NUMBER_TYPES = {"float": finite_float, "int": int, "float | None": finite_float, "int | None": int}


class UsageError(Exception):
    """Bad input named in one line; the CLI prints it and exits with status 2."""


# ---- argument parsing ----------------------------------------------------------------------------------------


_HELP = {
    "video": "video file to comment on, or 'demo' for the bundled 30-second synthetic clip",
    "model": "hub id or local directory of a Qwen2.5-VL checkpoint; 'demo' = the bundled demo model, "
             "'tiny' = a random tiny model (both offline)",
    "output": "WebVTT file to write (default: next to the video, <name>.vtt)",
    "jsonl": "also write one JSON object per chunk to this file",
    "mode": "streaming (StreamingVLM cache), full (no eviction), sliding (restart every --reset-every s), "
    "recompute (re-prefill the kept window every chunk)",
    "query": "instruction given with the first chunk",
    "previous_text": "earlier commentary or context (title, transcript so far)",
    "system_prompt": "system prompt",
    "start": "start time in seconds",
    "duration": "seconds to stream (default: to the end of the video)",
    "chunk_seconds": "seconds of video per step",
    "fps": "frames sampled per second of video",
    "min_pixels": "minimum pixels per frame after resizing",
    "max_pixels": "maximum pixels per frame after resizing (default 768*28*28)",
    "vision_window": "chunks whose vision tokens stay in the cache (or 'unlimited')",
    "text_rounds": "assistant turns kept verbatim before retiring into previous text (or 'unlimited')",
    "text_sink": "first previous-text tokens kept (or 'unlimited')",
    "text_window": "last previous-text tokens kept (or 'unlimited')",
    "reset_every": "seconds between context restarts in sliding mode",
    "max_new_tokens": "tokens generated per chunk at most",
    "temperature": "sampling temperature; 0 = greedy",
    "top_p": "nucleus sampling (default: the checkpoint's generation config)",
    "top_k": "top-k sampling (default: the checkpoint's generation config)",
    "repetition_penalty": "penalty on tokens of the commentary in context (1 = off)",
    "seed": "random seed of the sampler",
    "device": "auto, cpu, cuda or cuda:N",
    "dtype": "auto (bf16 on GPU, fp32 on CPU), bf16, fp16 or fp32",
    "quiet": "no progress bar",
}
_WINDOWS = {"vision_window", "text_rounds", "text_sink", "text_window"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # one usage line: a usage error is that line and the error, not 18 lines of every option (see --help)
    parser.usage = "%(prog)s VIDEO [--model M] [--output OUT.vtt] [--jsonl OUT.jsonl] [options; see --help]"
    parser.add_argument("video", nargs="?", help=_HELP["video"])
    parser.add_argument("--config", help="YAML file with option defaults (keys as in configs/infer.yaml)")
    for f in fields(InferConfig):
        if f.name in ("video", "explicit"):
            continue
        flag = "--" + f.name.replace("_", "-")
        # an option left off the command line is absent from the namespace: None from a window flag is 'unlimited'
        if f.type == "bool":
            parser.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=_HELP[f.name])
            continue
        kind = _NUMBER_TYPES.get(f.type, str)
        if f.name in _WINDOWS:
            kind = count_or_unlimited
        parser.add_argument(flag, type=kind, default=argparse.SUPPRESS,
                            help=f"{_HELP[f.name]} (default: {f.default})")


def config_from_args(args: argparse.Namespace) -> InferConfig:
    """Defaults <- YAML (``--config``) <- flags."""
    values: dict = {}
    if args.config:
        path = Path(args.config)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise UsageError(f"cannot read config {path}: {str(exc).splitlines()[0]}") from exc
        if not isinstance(loaded, dict):
            raise UsageError(f"config {path} must be a mapping of option names to values")
        known = {f.name for f in fields(InferConfig)}
        unknown = sorted(set(loaded) - known)
        if unknown:
            raise UsageError(f"config {path}: unknown option(s) {', '.join(unknown)}")
        values.update(loaded)
    given = vars(args)
    for f in fields(InferConfig):
        if f.name in given and f.name != "explicit" and (given[f.name] is not None or f.name in _WINDOWS):
            values[f.name] = given[f.name]
    if not values.get("video"):
        raise UsageError("no video given: streaming-vlm infer VIDEO [--model M]")
    try:
        return InferConfig(**values, explicit=frozenset(values))
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from exc


# ---- the job -------------------------------------------------------------------------------------------------


@dataclass
class Summary:
    chunks: int = 0
    stream_seconds: float = 0.0
    wall_s: float = 0.0
    new_tokens: int = 0
    decode_s: float = 0.0
    peak_cache_tokens: int = 0
    peak_memory_mb: float = 0.0
    interrupted: bool = False
    cut_short: str | None = None
    """Where the video stream ended before its container said it would (``VideoReader.cut_short``)."""

    @property
    def real_time_factor(self) -> float:
        """Stream seconds processed per wall second (> 1 is faster than real time)."""
        return self.stream_seconds / self.wall_s if self.wall_s else 0.0

    def lines(self) -> list[str]:
        ms_tok = 1000 * self.decode_s / self.new_tokens if self.new_tokens else float("nan")
        note = " - interrupted" if self.interrupted else ""
        lines = [
            f"chunks: {self.chunks} ({self.stream_seconds:.1f} s of video){note}",
            f"wall time: {self.wall_s:.1f} s, real-time factor: {self.real_time_factor:.2f}x",
            f"generated: {self.new_tokens} tokens, {ms_tok:.1f} ms per generated token",
            f"peak cache: {self.peak_cache_tokens} tokens, peak memory: {self.peak_memory_mb:.0f} MB",
        ]
        if self.cut_short:
            lines.append(f"video cut short: {self.cut_short}")
        return lines


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    except ImportError:  # pragma: no cover - not on Linux
        return 0.0


DEMO_VIDEO = Path(__file__).parent / "assets" / "demo.mp4"


def resolve_video_path(video: str) -> str:
    """``demo`` names the bundled clip unless a file of that name exists."""
    return str(DEMO_VIDEO) if video == "demo" and not Path(video).exists() else video


def with_checkpoint_defaults(cfg: InferConfig, model_path: str) -> InferConfig:
    """``cfg`` with every option the user did not set taken from the checkpoint's ``streaming_vlm.json``."""
    from streaming_vlm.models import stream_defaults

    if not Path(model_path).is_dir():
        return cfg
    chosen = {k: v for k, v in stream_defaults(model_path).items() if k not in cfg.explicit}
    try:
        return replace(cfg, **chosen) if chosen else cfg
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{model_path}: bad stream defaults: {exc}") from None


def default_output(video: str) -> str:
    """The WebVTT file written when ``--output`` is not given: next to the video, ``<name>.vtt`` (the bundled demo
    clip's goes to the working directory)."""
    return Path(video).stem + ".vtt" if video == str(DEMO_VIDEO) else str(Path(video).with_suffix(".vtt"))


def check_outputs(video: str, outputs: dict[str, str]) -> None:
    """Raise ``UsageError`` (one line naming the file) unless every output can be written without touching the
    input video or another output.

    ``outputs`` maps a label for messages (``--output``) to a path. An output may not be the video or another
    output (the same file by any name: symlinks and hard links included); an existing one must be a writable
    regular file; a new one needs a writable directory as its nearest existing ancestor (the writers create the
    missing folders). Only looks: creates, opens and changes nothing, so a failed check loses nothing.
    """
    checked: list[tuple[str, str]] = []
    for label, path in outputs.items():
        if _same_file(path, video):
            hint = "; give --output" if label == _DEFAULT_OUTPUT else ""
            raise UsageError(f"{label} {path} is the input video; writing it would destroy the video{hint}")
        for other_label, other in checked:
            if _same_file(path, other):
                raise UsageError(f"{other_label} and {label} are the same file ({path}); give two different files")
        _check_writable(label, path)
        checked.append((label, path))


_DEFAULT_OUTPUT = "the default output"


def _same_file(a: str, b: str) -> bool:
    """Whether writing ``a`` would write ``b``: the same file once symlinks are followed, or one inode."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def _check_writable(label: str, path: str) -> None:
    def fail(reason: str) -> UsageError:
        return UsageError(f"cannot write {label} {path}: {reason}")

    if path.endswith(("/", os.sep)):
        raise fail("it names a directory")
    try:
        st = os.stat(path)  # follows symlinks
    except (FileNotFoundError, NotADirectoryError):  # a new file (or a symlink to one): its folder must allow it
        parent = Path(os.path.realpath(path)).parent
        while not parent.exists() and parent != parent.parent:  # the writers create missing folders
            parent = parent.parent
        if not parent.is_dir():
            raise fail(f"{parent} is not a directory") from None
        if not os.access(parent, os.W_OK | os.X_OK):
            raise fail(f"no permission to create files in {parent}") from None
        return
    except OSError as exc:
        raise fail(exc.strerror or str(exc)) from None
    if stat.S_ISDIR(st.st_mode):
        raise fail("it is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise fail("not a regular file")
    # no write bit for anyone (e.g. /proc/version) is read-only even for root, whom access() lets write anything
    if not (st.st_mode & 0o222 and os.access(path, os.W_OK)):
        raise fail("the file is read-only")


def run(cfg: InferConfig, stream=None) -> Summary:
    """Run the job; raises ``VideoError``/``ModelLoadError``/``UsageError`` on bad input."""
    from tqdm import tqdm

    from streaming_vlm.models import load_model, resolve_device, resolve_dtype
    from streaming_vlm.outputs import JsonlWriter, VttWriter, one_line
    from streaming_vlm.preprocess import VisionSpec
    from streaming_vlm.video import VideoReader

    if cfg.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    stream = stream if stream is not None else sys.stderr  # looked up now: sys.stderr may have been replaced
    try:
        resolve_dtype(cfg.dtype, resolve_device(cfg.device))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    video = resolve_video_path(cfg.video)
    vtt_path = cfg.output or default_output(video)
    check_outputs(video, {"--output" if cfg.output else _DEFAULT_OUTPUT: vtt_path}
                  | ({"--jsonl": cfg.jsonl} if cfg.jsonl else {}))

    def open_reader(c: InferConfig) -> VideoReader:
        return VideoReader(video, fps=c.fps, chunk_seconds=c.chunk_seconds, start=c.start, duration=c.duration)

    reader = open_reader(cfg)  # validates the video before any model is touched
    model_path = resolve_model_path(cfg.model)
    sampled = (cfg.fps, cfg.chunk_seconds)
    cfg = with_checkpoint_defaults(cfg, model_path)
    if (cfg.fps, cfg.chunk_seconds) != sampled:
        reader.close()
        reader = open_reader(cfg)
    with reader:
        loaded = load_model(model_path, device=cfg.device, dtype=cfg.dtype)
        spec = VisionSpec.from_pretrained(loaded.path, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
        session = StreamSession(loaded.model, loaded.tokenizer, cfg.stream_config(loaded.generation_defaults),
                                vision_spec=spec)
        summary = Summary()
        t0 = time.perf_counter()
        with VttWriter(vtt_path) as vtt, (JsonlWriter(cfg.jsonl) if cfg.jsonl else _Null()) as jsonl:
            bar = tqdm(total=reader.num_chunks(), unit="chunk", disable=cfg.quiet, file=stream, dynamic_ncols=True)
            try:
                for chunk in reader.chunks():
                    res = session.step(chunk.frames, chunk.start, chunk.end)
                    vtt.write(res.start, res.end, res.text)
                    jsonl.write({"index": res.index, "start": round(res.start, 3), "end": round(res.end, 3),
                                 "text": res.text, "latency_s": round(res.latency_s, 4), "new_tokens": res.new_tokens,
                                 "cache_tokens": res.cache_tokens})
                    summary.chunks += 1
                    summary.stream_seconds += res.end - res.start
                    summary.new_tokens += res.new_tokens
                    summary.decode_s += res.decode_s
                    summary.peak_cache_tokens = max(summary.peak_cache_tokens, res.cache_tokens)
                    frames_per_s = len(chunk.frames) / res.latency_s if res.latency_s else 0.0
                    bar.set_postfix_str(f"t={res.end:.0f}s fps={frames_per_s:.1f} | {one_line(res.text)[-40:]}",
                                        refresh=False)
                    bar.update(1)
            except KeyboardInterrupt:
                summary.interrupted = True
            finally:
                bar.close()
        summary.cut_short = reader.cut_short
        summary.wall_s = time.perf_counter() - t0
        summary.peak_memory_mb = _peak_memory_mb(session.device)
    return summary


class _Null:
    def write(self, *_):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def main(args: argparse.Namespace) -> int:
    from streaming_vlm.models import ModelLoadError
    from streaming_vlm.video import VideoError

    default_format = warnings.formatwarning
    warnings.formatwarning = lambda msg, category, *a, **k: f"streaming-vlm: warning: {msg}\n"
    try:
        cfg = config_from_args(args)
        summary = run(cfg)
    except (UsageError, VideoError, ModelLoadError) as exc:
        print(f"streaming-vlm: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. an output path that cannot be written
        print(f"streaming-vlm: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before streaming started (interrupts while streaming end the stream cleanly)
        print("streaming-vlm: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = default_format
    for line in summary.lines():
        print(line, file=sys.stderr)
    return 130 if summary.interrupted else 0
