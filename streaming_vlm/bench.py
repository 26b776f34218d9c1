"""The latency benchmark: per-chunk latency, cache size and memory of each engine mode over one long video.

Each mode streams the same video through the code path users run (``VideoReader.chunks()`` ->
``StreamSession.step``), one fresh session per mode, the modes in order in one process (:func:`run_mode`). Every
chunk records:

- ``index``, ``t`` (its start in stream time) and ``video_len_s`` (the video processed when it ends);
- ``latency_s`` (the whole step: preprocessing, vision tower, prefill, decoding) and ``decode_s`` (decoding alone);
- ``new_tokens``, ``latency_per_token_s`` (``latency_s / new_tokens``, prefill included) and ``decode_per_token_s``
  (``decode_s / new_tokens``, the reference's ``gen_time_per_token``), both None without tokens;
- ``prefill_tokens``, ``cache_tokens``;
- ``memory_mb`` (CUDA's allocated memory on a GPU, the resident memory otherwise) and ``rss_mb`` (the process's
  resident memory), right after the chunk.

An out-of-memory error (``MemoryError``, CUDA's) ends that mode and is recorded (``oom``, when and the error); the
other modes still run.

One benchmark (:class:`Latency`, on the harness ``eval/harness.py``), two presets:

- ``bench`` (:class:`StreamBench`: ``python scripts/bench_stream.py``, ``streaming-vlm bench``), the CPU benchmark:
  by default the tiny random model built with ``--seed`` (``--model tiny``) on a synthetic video written with
  ``--seed`` (unless ``--video``), 30 minutes, modes streaming, full, sliding, recompute, cpu/fp32, frames of
  28*28 to 112*112 pixels (``--pixels`` is ``--max-pixels``: 16 vision tokens per 2-frame chunk). Writes
  ``figures/bench_stream.json`` and a three-panel figure: per-minute median latency, cache tokens and RSS
  against stream time.
- ``efficiency`` (:class:`Efficiency`: ``streaming-vlm eval efficiency``, ``scripts/eval_efficiency.sh``), the
  paper's four modes: (a) full attention, (b) sliding window without overlap (the context restarts every
  ``--reset-every`` s, 100), (c) with overlap (recomputed every chunk), (d) StreamingVLM, on ``--video`` (all of
  it, or ``--duration`` s) with ``--model``. Writes ``results/efficiency.json`` and a two-panel figure: latency
  per token and per chunk against the video processed, with the real-time thresholds (a chunk within
  ``chunk_seconds``, so a token within ``chunk_seconds / max_new_tokens``).

Both presets take the same options (``--minutes`` or ``--duration``) and stream settings (the harness's, the preset
below the checkpoint's) and write the same document: ``meta`` (the run, the effective ``sampling``,
``stream_settings`` and ``stream_settings_sources``), per mode ``label``, ``summary`` and
``chunks``, and ``comparisons`` (cross-mode ratios). ``--replot JSON`` runs nothing: it recomputes the summaries of
an earlier document from its chunks (fields a document lacks, e.g. one written before these fields were recorded,
such as the committed ``figures/bench_stream.json``, summarise to None), keeps its meta and redraws the figure.

Summary definitions (latencies in seconds):

- ``median_latency_minute_1`` / ``median_latency_last_minute``: median chunk latency over the chunks that start in
  the first / last 60 s of stream time; ``median_latency_minute_2`` and ``latency_ratio_last_vs_minute_2``: the
  same against the second minute, by when the bounded modes' caches are full (minute 1 is partly spent filling
  them, so it is cheaper); ``p10_latency_*``: the 10th percentile of the same chunks, a floor that other work on
  the machine disturbs less than the median;
- ``p95_*``: nearest-rank 95th percentile; ``*_per_token_s``: over the chunks that generated tokens;
- ``mean_ms_per_generated_token``: total chunk latency (prefill included) / total generated tokens;
- ``realtime_chunk_fraction`` / ``realtime_token_fraction``: the share of chunks / per-token latencies within the
  real-time thresholds;
- ``stream_s``: the span the reader was asked for; ``processed_s``: the video processed (less after an OOM);
  ``fps``: frames processed per wall second; ``real_time_factor``: wall time / ``processed_s`` (below 1 keeps up
  with a live stream);
- ``peak_rss_mb``: the process's peak resident memory during the mode (``peak_rss_scope``: ``"mode"`` when the
  peak could be reset at the start of the mode, else ``"process"``, the peak so far); ``peak_memory_mb``: CUDA's
  max allocated memory on a GPU, else the peak RSS (``memory_kind``, ``memory_scope``).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from streaming_vlm.argtypes import csv_choices, positive_float
from streaming_vlm.engine import MODES
from streaming_vlm.eval import harness, runner
from streaming_vlm.memory import PeakMemory, current_rss_mb, oom_errors, oom_message, peak_rss_mb, reset_peak_rss

__all__ = ["MODE_LABELS", "PRESETS", "Efficiency", "Latency", "StreamBench", "comparisons", "efficiency_main", "main",
           "resummarize", "run_mode", "summarize"]

logger = logging.getLogger("streaming_vlm.bench")  # also under `python -m streaming_vlm.bench`

PAPER_MODES = ("full", "sliding", "recompute", "streaming")
MODE_LABELS = {
    "full": "(a) full attention",
    "sliding": "(b) sliding window w/o overlap",
    "recompute": "(c) sliding window w/ overlap",
    "streaming": "(d) StreamingVLM",
}
TINY = "tiny"
"""``--model tiny``: the bench preset builds the tiny random model with ``--seed`` into a temporary folder."""


# ------------------------------------------------------------------------------------------------------------
# one mode
# ------------------------------------------------------------------------------------------------------------


def _per(value: float, tokens: int) -> float | None:
    return round(value / tokens, 6) if tokens > 0 else None


def run_mode(mode: str, run: harness.Run, video: str | os.PathLike[str], *, duration: float | None,
             progress: bool = True) -> dict[str, Any]:
    """Stream ``video`` (its first ``duration`` s; None: all of it) through a fresh session of ``run``'s model in
    ``mode``, with ``run``'s settings. Returns the per-chunk records (see the module doc) and the mode's raw
    measurements: ``wall_s``, ``video_read_s``, ``stream_s``, ``frames``, ``rss_start_mb``, ``peak_rss_mb``,
    ``peak_rss_scope``, ``peak_memory_mb``, ``memory_kind``, ``memory_scope`` and ``oom`` (None, or when and why)."""
    from tqdm import tqdm

    from streaming_vlm.video import VideoReader

    config = run.stream_config(mode)  # loads the model
    gc.collect()
    memory = PeakMemory(run.model.loaded.device)
    rss_scope = "mode" if reset_peak_rss() else "process"
    rss_start = current_rss_mb()
    session = run.session(config)
    records: list[dict[str, Any]] = []
    oom: dict[str, Any] | None = None
    frames, read_s = 0, 0.0
    with VideoReader(video, fps=config.fps, chunk_seconds=config.chunk_seconds, duration=duration) as reader:
        bar = tqdm(total=reader.num_chunks(), desc=f"{mode:>9}", unit="chunk", disable=not progress, mininterval=2.0)
        t_start = time.perf_counter()
        chunks = reader.chunks()
        while True:
            t_read = time.perf_counter()
            chunk = next(chunks, None)
            read_s += time.perf_counter() - t_read
            if chunk is None:
                break
            try:
                result = session.step(chunk.frames, chunk.start, chunk.end)
            except oom_errors() as exc:
                oom = {"at_s": round(float(chunk.start), 3), "chunk_index": chunk.index,
                       "wall_s": round(time.perf_counter() - t_start, 3), "error": oom_message(exc)}
                logger.warning("mode %s: out of memory at %.1f s of video (%s)", mode, chunk.start, oom["error"])
                break
            frames += len(chunk.frames)
            rss = current_rss_mb()
            records.append({
                "index": result.index, "t": round(float(chunk.start), 3), "video_len_s": round(float(chunk.end), 3),
                "latency_s": round(result.latency_s, 6), "decode_s": round(result.decode_s, 6),
                "new_tokens": result.new_tokens, "latency_per_token_s": _per(result.latency_s, result.new_tokens),
                "decode_per_token_s": _per(result.decode_s, result.new_tokens),
                "prefill_tokens": result.prefill_tokens, "cache_tokens": result.cache_tokens,
                "memory_mb": round(memory.now_mb() if memory.cuda else rss, 1), "rss_mb": round(rss, 1),
            })  # fmt: skip
            bar.update(1)
            if bar.n % 30 == 0:
                bar.set_postfix(ms=f"{1000 * result.latency_s:.0f}", cache=result.cache_tokens, refresh=False)
        wall = time.perf_counter() - t_start
        bar.close()
        stream_s = float(reader.end - reader.start)
    measured = {"wall_s": wall, "video_read_s": read_s, "stream_s": stream_s, "frames": frames,
                "rss_start_mb": rss_start, "peak_rss_mb": peak_rss_mb(), "peak_rss_scope": rss_scope,
                "peak_memory_mb": memory.peak_mb(), "memory_kind": memory.kind, "memory_scope": memory.scope}
    del session
    gc.collect()
    if memory.cuda:
        import torch

        torch.cuda.empty_cache()
    return {"chunks": records, **measured, "oom": oom}


# ------------------------------------------------------------------------------------------------------------
# summary
# ------------------------------------------------------------------------------------------------------------

RUN_KEYS = ("wall_s", "video_read_s", "stream_s", "frames", "rss_start_mb", "peak_rss_mb", "peak_rss_scope",
            "peak_memory_mb", "memory_kind", "memory_scope")
"""A mode's measurements that are not per chunk (:func:`run_mode`), kept in its summary (:func:`resummarize`)."""


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _p10(values: list[float]) -> float | None:
    return sorted(values)[len(values) // 10] if values else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _share(values: list[float], limit: float | None) -> float | None:
    return sum(x <= limit for x in values) / len(values) if values and limit else None


def _r(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else round(float(x), digits)


def per_minute_median_ms(chunks: list[dict[str, Any]]) -> list[float]:
    """Median chunk latency (ms) for each whole minute of stream time (minute k covers [60k, 60k + 60) s)."""
    by_minute: dict[int, list[float]] = {}
    for c in chunks:
        by_minute.setdefault(int(c["t"] // 60), []).append(c["latency_s"])
    return [round(1000 * statistics.median(by_minute[m]), 3) for m in sorted(by_minute)]


def summarize(run: dict[str, Any], chunk_seconds: float, max_new_tokens: int | None) -> dict[str, Any]:
    """The summary of one mode (see the module doc) from its chunks and measurements (:func:`run_mode`; a missing
    measurement or per-chunk field gives None where it is needed). Timing ratios use the wall time as the summary
    rounds it, so that a summary recomputed from its own numbers (:func:`resummarize`) is the same."""
    chunks = run["chunks"]
    lat = [c["latency_s"] for c in chunks]
    per_token = [c["latency_per_token_s"] for c in chunks if c.get("latency_per_token_s") is not None]
    decode_per_token = [c["decode_per_token_s"] for c in chunks if c.get("decode_per_token_s") is not None]
    cache = [c["cache_tokens"] for c in chunks]
    t_end = chunks[-1]["t"] + chunk_seconds if chunks else 0.0
    processed = chunks[-1].get("video_len_s", t_end) - chunks[0]["t"] if chunks else 0.0
    minute_1 = [c["latency_s"] for c in chunks if c["t"] < 60.0]
    minute_2 = [c["latency_s"] for c in chunks if 60.0 <= c["t"] < 120.0]
    last_minute = [c["latency_s"] for c in chunks if c["t"] >= t_end - 60.0]
    first, second, last = _median(minute_1), _median(minute_2), _median(last_minute)
    window = min(600.0, t_end)
    tail = [c["cache_tokens"] for c in chunks if c["t"] >= t_end - window]
    generated = sum(c["new_tokens"] for c in chunks)
    wall, frames, oom = _r(run.get("wall_s"), 3), run.get("frames"), run.get("oom")
    return {
        "num_chunks": len(chunks), "stream_s": _r(run.get("stream_s"), 3), "processed_s": _r(processed, 3),
        "median_latency_s": _r(_median(lat)), "p95_latency_s": _r(runner.percentile(lat, 95)),
        "max_latency_s": _r(max(lat, default=None)),
        "median_latency_minute_1": _r(first), "median_latency_minute_2": _r(second),
        "median_latency_last_minute": _r(last),
        "latency_ratio_last_vs_first": _r(_ratio(last, first), 4),
        "latency_ratio_last_vs_minute_2": _r(_ratio(last, second), 4),
        "p10_latency_minute_1": _r(_p10(minute_1)), "p10_latency_minute_2": _r(_p10(minute_2)),
        "p10_latency_last_minute": _r(_p10(last_minute)),
        "median_latency_per_token_s": _r(_median(per_token)),
        "p95_latency_per_token_s": _r(runner.percentile(per_token, 95)),
        "median_decode_per_token_s": _r(_median(decode_per_token)),
        "p95_decode_per_token_s": _r(runner.percentile(decode_per_token, 95)),
        "mean_ms_per_generated_token": _r(1000 * sum(lat) / generated if generated else None, 3),
        "realtime_chunk_fraction": _r(_share(lat, chunk_seconds), 4),
        "realtime_token_fraction": _r(_share(per_token, chunk_seconds / max_new_tokens if max_new_tokens else None), 4),
        "generated_tokens": generated, "prefill_tokens_total": sum(c["prefill_tokens"] for c in chunks),
        "frames": frames,
        "cache_tokens_max": max(cache, default=0), "cache_tokens_last": cache[-1] if cache else None,
        "cache_window_s": window if chunks else None,
        "cache_tokens_last_10min_min": min(tail, default=None), "cache_tokens_last_10min_max": max(tail, default=None),
        "rss_start_mb": _r(run.get("rss_start_mb"), 1), "rss_end_mb": chunks[-1].get("rss_mb") if chunks else None,
        "peak_rss_mb": _r(run.get("peak_rss_mb"), 1), "peak_rss_scope": run.get("peak_rss_scope"),
        "peak_memory_mb": _r(run.get("peak_memory_mb"), 1), "memory_kind": run.get("memory_kind"),
        "memory_scope": run.get("memory_scope"),
        "wall_s": wall, "video_read_s": _r(run.get("video_read_s"), 3),
        "fps": _r(frames / wall if frames is not None and wall else None, 3),
        "real_time_factor": _r(wall / processed if wall is not None and processed > 0 else None, 4),
        "per_minute_median_latency_ms": per_minute_median_ms(chunks),
        "oom": oom is not None, "oom_at_s": oom["at_s"] if oom else None,
        "oom_wall_s": oom["wall_s"] if oom else None, "oom_error": oom["error"] if oom else None,
    }  # fmt: skip


def comparisons(modes: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Cross-mode ratios; None where a mode was not run."""

    def summary(mode: str, key: str) -> float | None:
        return modes[mode]["summary"].get(key) if mode in modes else None

    def ratio(mode: str, key: str) -> float | None:
        return _r(_ratio(summary(mode, key), summary("streaming", key)), 4)

    return {
        "recompute_vs_streaming_median_latency": ratio("recompute", "median_latency_s"),
        "full_vs_streaming_last_minute": ratio("full", "median_latency_last_minute"),
        "sliding_vs_streaming_median_latency": ratio("sliding", "median_latency_s"),
    }


def resummarize(doc: dict[str, Any]) -> dict[str, Any]:
    """Recompute every summary and the comparisons of an earlier run's document (in place) from its per-chunk
    records and the measurements its summaries kept; returns it."""
    meta = doc["meta"]
    for data in doc["modes"].values():
        old = data.get("summary") or {}
        oom = ({"at_s": old.get("oom_at_s"), "wall_s": old.get("oom_wall_s"), "error": old.get("oom_error")}
               if old.get("oom") else None)
        run = {"chunks": data.get("chunks") or [], **{k: old.get(k) for k in RUN_KEYS}, "oom": oom}
        data["summary"] = summarize(run, meta.get("chunk_seconds", 1.0), meta.get("max_new_tokens"))
    doc["comparisons"] = comparisons(doc["modes"])
    return doc


# ------------------------------------------------------------------------------------------------------------
# the benchmark
# ------------------------------------------------------------------------------------------------------------


def package_version(package: str) -> str | None:
    """An installed distribution's version, or None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _synthetic_side(pixels: int, factor: int = 28) -> int:
    """Side of a square synthetic frame that uses the pixel budget in whole ``factor``-pixel tiles."""
    return max(factor, int(math.sqrt(pixels) // factor) * factor)


def _finish_figure(fig, axes, path: Path, *, title: str, legend_columns: int = 1) -> Path:
    """A preset's figure finished alike: every panel gridded, with its legend, from x = 0; the title; saved."""
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="upper left", fontsize=8, ncol=legend_columns)
        ax.set_xlim(left=0)
    fig.suptitle(title, fontsize=10)
    return runner.save_figure(fig, path)


class Latency(harness.Benchmark):
    """The latency benchmark; a preset (a subclass) sets the defaults, the figure and the table. Its items are the
    modes (one group each, run in order in this process); an instance serves one run (:meth:`close` removes the
    temporary folder of a built model or synthetic video)."""

    resumable = False
    settings_use = harness.SettingsUse(exclude=("total_pixels", "max_frames"))
    prog: ClassVar[str | None] = None
    """The command's name when it is not ``streaming-vlm eval NAME``."""
    default_modes: ClassVar[tuple[str, ...]] = PAPER_MODES
    default_minutes: ClassVar[float | None] = None
    """Stream length without ``--minutes`` or ``--duration`` (None: the whole video)."""
    default_out: ClassVar[str]
    default_figure: ClassVar[str]
    notes: ClassVar[str]

    def __init__(self) -> None:
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._replot_meta: dict[str, Any] | None = None

    def scratch(self) -> Path:
        """This run's temporary folder (made on first use)."""
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="bench_stream_")
        return Path(self._tmp.name)

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # ---- options ---------------------------------------------------------------------------------------------

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--video", required=self.video_required(), default=None, help=self.video_help())
        length = p.add_mutually_exclusive_group()
        minutes = f" (default {self.default_minutes:g})" if self.default_minutes else ""
        length.add_argument("--minutes", type=positive_float, default=None,
                            help=f"minutes of video to stream{minutes}")
        length.add_argument("--duration", type=positive_float, default=None,
                            help="seconds of video to stream, instead of --minutes" if self.default_minutes else
                            "seconds of video to stream (default: all of it; the paper uses 1000)")
        p.add_argument("--modes", type=csv_choices(MODES, what="modes"), default=list(self.default_modes),
                       help=f"comma-separated modes, run in this order (default {','.join(self.default_modes)})")
        p.add_argument("--pixels", dest="max_pixels", type=int, default=argparse.SUPPRESS,
                       help="the same as --max-pixels")
        p.add_argument("--out", default=self.default_out, help="results JSON (default %(default)s)")
        p.add_argument("--figure", default=self.default_figure, help="figure path (default %(default)s; '' for none)")
        p.add_argument("--replot", default=None, metavar="JSON",
                       help="run nothing: recompute the summaries of an earlier results JSON from its chunks into "
                       "--out (its meta kept) and redraw --figure")
        p.add_argument("--no-progress", dest="quiet", action="store_true", help="the same as --quiet")

    def video_required(self) -> bool:
        return True

    def video_help(self) -> str:
        return "the video to stream"

    # ---- items -----------------------------------------------------------------------------------------------

    def seconds(self, args: argparse.Namespace) -> float | None:
        """Seconds of video to stream (None: all of it)."""
        if args.minutes is not None:
            return args.minutes * 60.0
        if args.duration is not None:
            return args.duration
        return None if self.default_minutes is None else self.default_minutes * 60.0

    def items(self, run: harness.Run) -> dict[str, list[dict]] | None:
        from streaming_vlm.video import probe

        args = run.args
        if args.replot:
            return None
        self.video, self.video_label = self.prepare(run)
        self.info = probe(self.video)
        return {mode: [{"id": mode, "mode": mode}] for mode in args.modes}

    def prepare(self, run: harness.Run) -> tuple[Path, str]:
        """The video to stream and its label in the results (here: ``--video``)."""
        return Path(run.args.video), str(run.args.video)

    def run_item(self, run: harness.Run, group: str, item: dict) -> dict:
        mode = item["mode"]
        seconds = self.seconds(run.args)
        logger.info("mode %s (%s): streaming %s", mode, MODE_LABELS[mode],
                    "the whole video" if seconds is None else f"{seconds:g} s")
        measured = run_mode(mode, run, self.video, duration=seconds, progress=run.progress)
        summary = summarize(measured, run.settings.chunk_seconds, run.settings.max_new_tokens)
        logger.info("mode %s: %d chunks in %.1f s, median %.1f ms, cache max %s, peak memory %.0f MB", mode,
                    summary["num_chunks"], summary["wall_s"] or 0.0, 1000 * (summary["median_latency_s"] or 0.0),
                    summary["cache_tokens_max"], summary["peak_memory_mb"] or 0.0)
        return {"label": MODE_LABELS[mode], "summary": summary, "chunks": measured["chunks"]}

    # ---- results ---------------------------------------------------------------------------------------------

    def score(self, run: harness.Run, records: dict[str, list[dict]] | None) -> dict:
        if records is None:
            return self.replot(Path(run.args.replot))
        modes = {mode: recs[0] for mode, recs in records.items()}
        return {"meta": self.meta(run, modes), "modes": modes, "comparisons": comparisons(modes)}

    def replot(self, path: Path) -> dict:
        """An earlier results document with its summaries and comparisons recomputed (:func:`resummarize`)."""
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"--replot {path}: cannot read: {exc}") from None
        if not (isinstance(doc, dict) and isinstance(doc.get("meta"), dict) and isinstance(doc.get("modes"), dict)):
            raise ValueError(f"--replot {path}: not a results document of this benchmark (no meta or modes)")
        self._replot_meta = copy.deepcopy(doc["meta"])
        return resummarize(doc)

    def meta(self, run: harness.Run, modes: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """What the run was: model, video, lengths, effective settings, machine (``stream_settings`` and their
        sources are added by the harness)."""
        import torch

        from streaming_vlm.preprocess import smart_resize

        args, s, info = run.args, run.settings, self.info
        loaded, spec = run.model.loaded, run.model.spec
        h, w = smart_resize(info.height, info.width, spec.factor, spec.min_pixels, spec.max_pixels)
        tokens = int(s.fps * s.chunk_seconds) // spec.temporal_patch_size * (h // spec.factor) * (w // spec.factor)
        sampling = s.sampling(loaded.generation_defaults)  # what the sessions used (top_p/top_k filled)
        seconds = self.seconds(args)
        model, label = self.model_names(args)
        return {
            "preset": self.name, "model": model, "model_label": label,
            "video": self.video_label, "video_duration_s": round(info.duration, 3),
            "frame_size": [info.width, info.height], "resized_frame_size": [w, h], "vision_tokens_per_chunk": tokens,
            "minutes": args.minutes if args.minutes is not None else (None if seconds is None else seconds / 60.0),
            "duration_requested_s": args.duration if args.duration is not None else seconds,
            "processed_s": max((m["summary"]["processed_s"] or 0.0 for m in modes.values()), default=0.0),
            "modes": list(modes), "mode_labels": {m: MODE_LABELS[m] for m in modes},
            "fps": s.fps, "chunk_seconds": s.chunk_seconds, "pixels": s.max_pixels, "max_pixels": s.max_pixels,
            "max_new_tokens": s.max_new_tokens, "reset_every": s.reset_every,
            "realtime_threshold_chunk_s": s.chunk_seconds,
            "realtime_threshold_per_token_s": s.chunk_seconds / s.max_new_tokens,
            "sampling": {k: getattr(sampling, k) for k in ("temperature", "top_p", "top_k", "repetition_penalty",
                                                           "max_new_tokens")},
            "engine": {"vision_window": s.vision_window, "text_rounds": s.text_rounds, "text_sink": s.text_sink,
                       "text_window": s.text_window, "reset_every": s.reset_every,
                       "temperature": sampling.temperature, "repetition_penalty": sampling.repetition_penalty},
            "seed": s.seed, "dtype": str(loaded.dtype).replace("torch.", ""), "device": str(loaded.device),
            "torch": torch.__version__, "transformers": package_version("transformers"),
            "python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(loaded.device) if loaded.device.type == "cuda" else None,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "notes": self.notes,
        }  # fmt: skip

    def model_names(self, args: argparse.Namespace) -> tuple[str, str]:
        """``(model, model_label)`` for the meta."""
        return str(args.model), Path(str(args.model)).name or str(args.model)

    def results_path(self, run: harness.Run) -> Path:
        return Path(run.args.out)

    def write(self, results: dict, path: Path) -> Path:
        if self._replot_meta is not None:  # a replot keeps the meta of the run it redraws (the harness added
            results["meta"] = self._replot_meta  # this command's settings, which that run may not have used)
        return runner.write_json(results, path)

    def figure_path(self, run: harness.Run) -> Path | None:
        return Path(run.args.figure) if run.args.figure else None


class StreamBench(Latency):
    """The ``bench`` preset: the CPU benchmark (see the module doc)."""

    name = "bench"
    prog = "bench_stream"
    description = ("Stream a long (synthetic) video through the engine in each mode and record per-chunk latency, "
                   "cache size and memory; writes a JSON file and a figure. The tiny model and the synthetic video "
                   "are made with --seed.")
    settings_use = harness.SettingsUse(exclude=("total_pixels", "max_frames"),
                                       preset={"min_pixels": 28 * 28, "max_pixels": 112 * 112})
    model_default = TINY
    default_device, default_dtype = "cpu", "fp32"
    default_modes = MODES
    default_minutes = 30.0
    default_out, default_figure = "figures/bench_stream.json", "figures/bench_stream.png"
    notes = ("latency in s; real_time_factor = wall_s / stream_s (< 1 keeps up with live video); modes run one after "
             "another in one process, so RSS includes what earlier modes left allocated")

    def video_required(self) -> bool:
        return False

    def video_help(self) -> str:
        return "an existing video (default: write a synthetic one of the needed length)"

    def builds_tiny(self, args: argparse.Namespace) -> bool:
        return args.model == TINY

    def model_path(self, args: argparse.Namespace) -> str | None:
        """``--model tiny``: a folder in this run's scratch space, where :meth:`items` builds the tiny model with the
        resolved ``--seed`` (it has no ``streaming_vlm.json``); otherwise the harness's rule."""
        return str(self.scratch() / "tiny") if self.builds_tiny(args) else super().model_path(args)

    def prepare(self, run: harness.Run) -> tuple[Path, str]:
        from streaming_vlm.models import build_tiny_model
        from streaming_vlm.synthetic import write_synthetic_video

        args, s = run.args, run.settings
        if self.builds_tiny(args):
            build_tiny_model(run.model_path, seed=s.seed)
        if args.video is not None:
            return super().prepare(run)
        seconds = self.seconds(args)
        side = _synthetic_side(s.max_pixels, s.vision_spec(run.model_path).factor)
        video_fps = max(4, math.ceil(s.fps))
        t0 = time.perf_counter()
        video = write_synthetic_video(self.scratch() / "synthetic.mp4", seconds, fps=video_fps, width=side,
                                      height=side, seed=s.seed)
        logger.info("wrote a %g s synthetic video (%dx%d, %d fps) in %.1f s", seconds, side, side, video_fps,
                    time.perf_counter() - t0)
        return Path(video), f"synthetic {side}x{side} @ {video_fps} fps"

    def model_names(self, args: argparse.Namespace) -> tuple[str, str]:
        if self.builds_tiny(args):
            return "tiny (build_tiny_model)", "tiny random Qwen2.5-VL"
        return super().model_names(args)

    def figure(self, results: dict, path: Path) -> Path:
        """Three panels over stream time: per-minute median latency, cache tokens, resident memory."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        meta = results["meta"]
        fig, axes = plt.subplots(3, 1, figsize=(9, 9.5), sharex=True, constrained_layout=True)
        ax_lat, ax_cache, ax_rss = axes
        for mode, data in results["modes"].items():
            chunks = data["chunks"]
            if not chunks:
                continue
            color = runner.MODE_COLORS.get(mode)
            minutes = sorted({int(c["t"] // 60) for c in chunks})
            ax_lat.plot([m + 0.5 for m in minutes], data["summary"]["per_minute_median_latency_ms"], marker="o", ms=3,
                        color=color, label=mode)
            t_min = [c["t"] / 60.0 for c in chunks]
            ax_cache.plot(t_min, [c["cache_tokens"] for c in chunks], color=color, lw=1.2, label=mode)
            ax_rss.plot(t_min, [c.get("rss_mb") for c in chunks], color=color, lw=1.2, label=mode)
        ax_lat.set_yscale("log")
        ax_lat.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax_lat.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax_lat.yaxis.set_minor_formatter(NullFormatter())
        ax_lat.set_ylabel("median chunk latency (ms)\nper minute of stream, log")
        ax_cache.set_ylabel("KV cache tokens")
        ax_rss.set_ylabel("process RSS (MB)")
        ax_rss.set_xlabel("stream time (min)")
        minutes = meta.get("minutes") or (meta.get("processed_s") or 0.0) / 60.0
        return _finish_figure(
            fig, axes, path, legend_columns=4,
            title=f"Streaming benchmark: {meta['model_label']}, {meta['dtype']}, {meta['cpu_count']} CPUs, "
            f"torch threads: {meta.get('torch_threads')}\n{minutes:g} min at {meta['fps']:g} fps, "
            f"{meta['vision_tokens_per_chunk']} vision tokens/chunk, max {meta['max_new_tokens']} new tokens/chunk")

    def table(self, results: dict) -> str:
        """One row per mode (medians in ms per minute of stream, cache sizes, peak RSS, wall time), then the
        comparisons and any mode that ran out of memory."""

        def ms(seconds: float | None) -> str:
            return "-" if seconds is None else f"{1000 * seconds:.1f}"

        def num(value: float | None) -> str:
            return "-" if value is None else f"{value:.2f}"

        header = (f"{'mode':<10} {'min1 ms':>9} {'min2 ms':>9} {'last ms':>9} {'/min1':>6} {'/min2':>6} "
                  f"{'ms/tok':>7} {'cache max':>9} {'cache last10':>13} {'peak MB':>8} {'wall s':>8} {'RTF':>6}")
        rows = [header, "-" * len(header)]
        for mode, data in results["modes"].items():
            s = data["summary"]
            if not s.get("num_chunks"):
                rows.append(f"{mode:<10} (no chunks)")
                continue
            tail = f"{s['cache_tokens_last_10min_min']}-{s['cache_tokens_last_10min_max']}"
            rows.append(
                f"{mode:<10} {ms(s['median_latency_minute_1']):>9} {ms(s.get('median_latency_minute_2')):>9} "
                f"{ms(s['median_latency_last_minute']):>9} {num(s['latency_ratio_last_vs_first']):>6} "
                f"{num(s.get('latency_ratio_last_vs_minute_2')):>6} {num(s['mean_ms_per_generated_token']):>7} "
                f"{s['cache_tokens_max']:>9} {tail:>13} {s['peak_rss_mb'] or 0:>8.0f} {s['wall_s'] or 0:>8.1f} "
                f"{s['real_time_factor'] or 0:>6.3f}"
            )
        for key, value in results["comparisons"].items():
            rows.append(f"{key}: {'n/a' if value is None else f'{value:.2f}x'}")
        rows += [f"{mode}: out of memory at {d['summary']['oom_at_s']:g} s" for mode, d in results["modes"].items()
                 if d["summary"].get("oom")]
        return "\n".join(rows)


class Efficiency(Latency):
    """The ``efficiency`` preset: the paper's efficiency test (see the module doc)."""

    name = "efficiency"
    description = ("Latency per token, per-chunk latency, FPS and peak memory of the four modes of the paper (full "
                   "attention, sliding window without / with overlap, StreamingVLM) on one video; writes a JSON file "
                   "and a figure and prints a table.")
    settings_use = harness.SettingsUse(exclude=("total_pixels", "max_frames"), preset={"reset_every": 100.0})
    default_out, default_figure = "results/efficiency.json", "figures/efficiency.png"
    notes = ("latency_per_token_s = chunk latency (prefill included) / generated tokens; decode_per_token_s = "
             "decoding time / generated tokens (the reference's gen_time_per_token); fps = frames / wall second; "
             "real time: a chunk must finish within chunk_seconds, so per token within chunk_seconds / max_new_tokens")

    def figure(self, results: dict, path: Path) -> Path:
        """Latency per token and per-chunk latency against processed video length, with real-time thresholds."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        meta = results["meta"]
        chunk_s = meta["chunk_seconds"]
        token_s = meta.get("realtime_threshold_per_token_s") or chunk_s / meta["max_new_tokens"]
        fig, (ax_tok, ax_chunk) = plt.subplots(2, 1, figsize=(9, 8), sharex=True, constrained_layout=True)
        for mode, data in results["modes"].items():
            color, label = runner.MODE_COLORS.get(mode), MODE_LABELS.get(mode, mode)
            chunks = data["chunks"]
            ends = [c.get("video_len_s", c["t"] + chunk_s) for c in chunks]
            tok = [(x, c["latency_per_token_s"]) for x, c in zip(ends, chunks, strict=True)
                   if c.get("latency_per_token_s") is not None]
            ax_tok.plot([x for x, _ in tok], [y for _, y in tok], color=color, lw=1.3, label=label)
            ax_chunk.plot(ends, [c["latency_s"] for c in chunks], color=color, lw=1.3, label=label)
            s = data["summary"]
            if s.get("oom"):
                for ax, ys, floor in ((ax_tok, [y for _, y in tok], token_s),
                                      (ax_chunk, [c["latency_s"] for c in chunks], chunk_s)):
                    y = ys[-1] if ys else floor
                    ax.plot([s["oom_at_s"]], [y], marker="X", ms=10, color=color, ls="none")
                    ax.annotate(f"OOM at {s['oom_at_s']:g} s", (s["oom_at_s"], y), textcoords="offset points",
                                xytext=(5, 5), fontsize=8, color=color)
        ax_tok.axhline(token_s, color="black", ls="--", lw=1.2,
                       label=f"Realtime: {chunk_s:g} s chunk / {meta['max_new_tokens']} tokens = {token_s:.3g} s/token")
        ax_chunk.axhline(chunk_s, color="black", ls="--", lw=1.2, label=f"Realtime: chunk duration {chunk_s:g} s")
        ax_tok.set_ylabel("latency per token (s)\n(chunk latency / generated tokens)")
        ax_chunk.set_ylabel("per-chunk latency (s)")
        ax_chunk.set_xlabel("processed video length (s)")
        ax_tok.set_yscale("log")
        ax_chunk.set_yscale("log")
        reset = meta.get("reset_every") or meta.get("engine", {}).get("reset_every")
        return _finish_figure(
            fig, (ax_tok, ax_chunk), path,
            title=f"Efficiency: {meta['model_label']} ({meta['dtype']}, {meta['device']}), "
            f"{meta.get('processed_s', 0):g} s of {Path(meta['video']).name}\n{meta['fps']:g} fps, {chunk_s:g} s "
            f"chunks, max {meta['max_new_tokens']} new tokens/chunk, sliding reset every {reset:g} s")

    def table(self, results: dict) -> str:
        return runner.format_table(table_rows(results))


def table_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The efficiency table: one row per mode for ``runner.format_table``."""

    def ms(x: float | None) -> Any:
        return "-" if x is None else 1000.0 * x

    rows = []
    for mode, data in doc["modes"].items():
        s = data["summary"]
        rows.append({
            "mode": MODE_LABELS.get(mode, mode), "chunks": s["num_chunks"], "med ms": ms(s["median_latency_s"]),
            "p95 ms": ms(s["p95_latency_s"]), "med ms/tok": ms(s.get("median_latency_per_token_s")),
            "p95 ms/tok": ms(s.get("p95_latency_per_token_s")), "decode ms/tok": ms(s.get("median_decode_per_token_s")),
            "fps": "-" if s.get("fps") is None else s["fps"],
            f"peak MB ({s.get('memory_kind') or 'rss'})": s.get("peak_memory_mb", s.get("peak_rss_mb")),
            "oom": f"at {s['oom_at_s']:g} s" if s.get("oom") else "no",
        })  # fmt: skip
    return rows


PRESETS: dict[str, type[Latency]] = {"bench": StreamBench, "efficiency": Efficiency}


def main(argv: Sequence[str] | None = None, *, preset: str = "bench", prog: str | None = None) -> int:
    """Run the latency benchmark's ``preset`` (``bench``: ``scripts/bench_stream.py``; ``efficiency``) on ``argv``;
    the exit status. ``prog``: the command's name (default: the preset's)."""
    bench = PRESETS[preset]()
    try:
        return harness.run(bench, argv, prog=prog or bench.prog)
    finally:
        bench.close()


def efficiency_main(argv: Sequence[str] | None = None) -> int:
    """``streaming-vlm eval efficiency ARGV``; the exit status."""
    return main(argv, preset="efficiency")


if __name__ == "__main__":
    sys.exit(main())
