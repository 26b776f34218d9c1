"""``streaming-vlm infer``: streaming commentary on a video file.

Wires a ``VideoReader`` (frames by time) to a ``StreamSession`` (the engine) and the output writers
(WebVTT, JSON lines), with a progress bar and a closing summary. Options are an ``InferConfig``: the stream
settings (``settings.StreamSettings``: their flags, defaults and help come from ``streaming_vlm/settings.py``)
plus the job's own options. Later wins: the defaults, the checkpoint's ``streaming_vlm.json`` (for every setting
not given in the next two), a YAML file (``--config``), the command-line flags.
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

from streaming_vlm import settings
from streaming_vlm.argtypes import finite_float
from streaming_vlm.engine import MODES, StreamSession
from streaming_vlm.models import DEMO_MODEL as DEMO_MODEL  # re-exported: model-path resolution lives in models
from streaming_vlm.models import DEMO_VIDEO as DEMO_VIDEO  # re-exported: the bundled demo lives with models
from streaming_vlm.models import add_load_arguments, resolve_model_path
from streaming_vlm.settings import CHECKPOINT_FILE, SETTING_NAMES, SettingsError, StreamSettings

DEFAULT_MODEL = "demo"
"""The bundled demo checkpoint (trained on the synthetic world); real models are one ``--model`` away."""


@dataclass(frozen=True, kw_only=True)
class InferConfig(StreamSettings):
    """Options of ``streaming-vlm infer``: the stream settings and the job's own options (YAML keys use these
    names; flags use dashes). ``total_pixels`` and ``max_frames`` (clips of known length) play no part in a
    stream: infer has no flag or YAML key for them."""

    video: str = ""
    model: str = DEFAULT_MODEL
    output: str | None = None
    jsonl: str | None = None
    mode: str = "streaming"
    previous_text: str = ""
    start: float = 0.0
    duration: float | None = None
    device: str = "auto"
    dtype: str = "auto"
    quiet: bool = False
    explicit: frozenset[str] = field(default=frozenset(), repr=False, compare=False)
    """Options the user set (YAML or flags); the other settings may come from the checkpoint's
    ``streaming_vlm.json``."""

    def __post_init__(self):
        super().__post_init__()  # every stream setting, alone and min_pixels <= max_pixels
        for name in ("start", "duration"):  # YAML values skip the flags' types
            value = getattr(self, name)
            if value is not None:
                flag = "--" + name
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
        self.check_chunks()  # Qwen2.5-VL encodes frames in pairs


class UsageError(Exception):
    """Bad input named in one line; the CLI prints it and exits with status 2."""


# ---- argument parsing ----------------------------------------------------------------------------------------

_NOT_STREAMED = ("total_pixels", "max_frames")
"""Settings of clips of known length (training samples, offline answers): no flag or YAML key in infer."""
_YAML_KEYS = frozenset(f.name for f in fields(InferConfig) if f.name not in (*_NOT_STREAMED, "explicit"))
"""What a ``--config`` file may set: every option that has a flag, and ``video``."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # one usage line: a usage error is that line and the error, not 18 lines of every option (see --help)
    parser.usage = "%(prog)s VIDEO [--model M] [--output OUT.vtt] [--jsonl OUT.jsonl] [options; see --help]"
    # every option has default=SUPPRESS: one left off the command line is absent from the namespace, so the YAML
    # and the checkpoint can set it (settings.given)
    parser.add_argument("video", nargs="?", default=argparse.SUPPRESS,
                        help="video file to comment on, or 'demo' for the bundled 30-second synthetic clip")
    parser.add_argument("--config", help="YAML file with option defaults (keys as in configs/infer.yaml)")
    job = parser.add_argument_group("job")
    job.add_argument("--model", default=argparse.SUPPRESS,
                     help="hub id or local directory of a Qwen2.5-VL checkpoint; 'demo' = the bundled demo model, "
                          f"'tiny' = a random tiny model (both offline) (default: {DEFAULT_MODEL})")
    job.add_argument("--output", default=argparse.SUPPRESS,
                     help="WebVTT file to write (default: next to the video, <name>.vtt)")
    job.add_argument("--jsonl", default=argparse.SUPPRESS, help="also write one JSON object per chunk to this file")
    job.add_argument("--mode", default=argparse.SUPPRESS,
                     help="streaming (StreamingVLM cache), full (no eviction), sliding (restart every --reset-every "
                          "s), recompute (re-prefill the kept window every chunk) (default: streaming)")
    job.add_argument("--previous-text", default=argparse.SUPPRESS,
                     help="earlier commentary or context (title, transcript so far) (default: none)")
    job.add_argument("--start", type=finite_float, default=argparse.SUPPRESS,
                     help="start time in seconds (default: 0.0)")
    job.add_argument("--duration", type=finite_float, default=argparse.SUPPRESS,
                     help="seconds to stream (default: to the end of the video)")
    job.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bar")
    settings.add_arguments(parser, exclude=_NOT_STREAMED,
                           title="stream settings (a checkpoint's streaming_vlm.json replaces the defaults shown)")
    add_load_arguments(parser, given_only=True)


def config_from_args(args: argparse.Namespace) -> InferConfig:
    """Defaults <- YAML (``--config``) <- flags; the checkpoint's settings join once the model path is known
    (:func:`with_checkpoint_defaults`). ``UsageError`` (one line) for anything that cannot be used."""
    try:
        config = settings.load_config(args.config, known=_YAML_KEYS) if args.config else {}
        flags = settings.given(args, InferConfig)
        if not (flags.get("video") or config.get("video")):
            raise UsageError("no video given: streaming-vlm infer VIDEO [--model M]")
        cfg, _ = settings.resolve(flags, config=config, cls=InferConfig)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    return replace(cfg, explicit=frozenset(flags) | frozenset(config))  # not a min_pixels lowered to max_pixels


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


def resolve_video_path(video: str) -> str:
    """``demo`` names the bundled clip unless a file of that name exists."""
    return str(DEMO_VIDEO) if video == "demo" and not Path(video).exists() else video


def with_checkpoint_defaults(cfg: InferConfig, model_path: str) -> InferConfig:
    """``cfg`` with every setting the user did not give (flags or YAML) taken from the checkpoint's
    ``streaming_vlm.json``, read for a local directory only (``settings.from_checkpoint``); a ``min_pixels`` not
    given that is above the resolved ``max_pixels`` is lowered to it. ``UsageError`` naming the file when it cannot
    be used."""
    try:
        checkpoint = settings.from_checkpoint(model_path)
    except SettingsError as exc:
        raise UsageError(str(exc)) from None
    if not checkpoint:
        return cfg
    kept = {f.name: getattr(cfg, f.name) for f in fields(cfg)
            if f.init and (f.name in cfg.explicit or f.name not in SETTING_NAMES)}  # the job's options, as given
    try:
        resolved, _ = settings.resolve(kept, checkpoint=checkpoint, cls=InferConfig)
    except ValueError as exc:
        raise UsageError(f"{Path(model_path) / CHECKPOINT_FILE}: {exc}") from None
    return resolved


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
        config = cfg.stream_config(cfg.mode, previous_text=cfg.previous_text,
                                   generation_defaults=loaded.generation_defaults)
        session = StreamSession(loaded.model, loaded.tokenizer, config, vision_spec=cfg.vision_spec(loaded.path))
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
