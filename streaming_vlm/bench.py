"""Streaming benchmark: latency, cache size and memory per chunk over a long video, for every engine mode.

Each mode streams the same video through the same code path users run (``VideoReader.chunks()`` ->
``StreamSession.step``), one fresh session per mode, and every chunk is recorded: its stream time, latency,
generated and prefilled tokens, cache size and the process's resident memory right after it. The results go
to a JSON file (per-chunk records, a summary per mode, cross-mode ratios) and a three-panel figure.

Run ``python scripts/bench_stream.py --help`` (or ``python -m streaming_vlm.bench``). Without ``--model`` a
tiny random Qwen2.5-VL is built into a temporary directory; without ``--video`` a synthetic video of the
needed length is written there too.

Definitions used in the summary:

- ``median_latency_minute_1`` / ``median_latency_last_minute``: median chunk latency (s) over the chunks that
  start in the first / last 60 s of stream time;
- ``median_latency_minute_2`` and ``latency_ratio_last_vs_minute_2``: the same against the second minute, by
  when the bounded modes' caches are full (minute 1 is partly spent filling them, so it is cheaper);
- ``p10_latency_*``: the 10th percentile of the same chunks, a floor that other work on the machine disturbs
  less than the median;
- ``mean_ms_per_generated_token``: total chunk latency (prefill included) / total generated tokens;
- ``real_time_factor``: wall time / stream time (below 1 keeps up with a live stream);
- ``peak_rss_mb``: the process's peak resident memory during the mode (``peak_rss_scope`` says whether the
  peak could be reset at the start of the mode, ``"mode"``, or is the process peak so far, ``"process"``).
"""

from __future__ import annotations

import argparse
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
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from streaming_vlm.argtypes import positive_float, positive_int
from streaming_vlm.engine import MODES, StreamConfig, StreamSession

# Moved to their own homes (issue 14); still importable from here for older callers.
from streaming_vlm.eval.runner import save_figure, write_json  # noqa: F401
from streaming_vlm.memory import current_rss_mb, peak_rss_mb, reset_peak_rss  # noqa: F401
from streaming_vlm.preprocess import VisionSpec, smart_resize
from streaming_vlm.sampling import SamplingConfig

__all__ = ["build_parser", "main", "run_mode", "summarize", "write_figure"]

logger = logging.getLogger(__name__)

DEFAULT_PIXELS = 112 * 112
CHUNK_SECONDS = 1.0


# ------------------------------------------------------------------------------------------------------------
# one mode
# ------------------------------------------------------------------------------------------------------------


def run_mode(
    mode: str,
    model,
    tokenizer,
    video: str | os.PathLike[str],
    *,
    fps: float,
    duration: float | None,
    vision_spec: VisionSpec,
    max_new_tokens: int,
    seed: int,
    progress: bool = True,
) -> dict[str, Any]:
    """Stream ``video`` through a fresh ``StreamSession`` in ``mode``; returns per-chunk records and raw timings."""
    from streaming_vlm.video import VideoReader

    config = StreamConfig(
        mode=mode,
        fps=fps,
        chunk_seconds=CHUNK_SECONDS,
        sampling=SamplingConfig(max_new_tokens=max_new_tokens),
        seed=seed,
    )
    gc.collect()
    peak_scope = "mode" if reset_peak_rss() else "process"
    rss_start = current_rss_mb()
    session = StreamSession(model, tokenizer, config, vision_spec=vision_spec)
    records: list[dict[str, Any]] = []
    read_s = 0.0
    with VideoReader(video, fps=fps, chunk_seconds=CHUNK_SECONDS, duration=duration) as reader:
        total = reader.num_chunks()
        bar = tqdm(total=total, desc=f"{mode:>9}", unit="chunk", disable=not progress, mininterval=2.0)
        t_start = time.perf_counter()
        chunks = reader.chunks()
        while True:
            t_read = time.perf_counter()
            chunk = next(chunks, None)
            read_s += time.perf_counter() - t_read
            if chunk is None:
                break
            result = session.step(chunk.frames, chunk.start, chunk.end)
            records.append(
                {
                    "index": result.index,
                    "t": round(float(chunk.start), 3),
                    "latency_s": round(result.latency_s, 6),
                    "new_tokens": result.new_tokens,
                    "prefill_tokens": result.prefill_tokens,
                    "cache_tokens": result.cache_tokens,
                    "rss_mb": round(current_rss_mb(), 1),
                }
            )
            bar.update(1)
            if bar.n % 30 == 0:
                bar.set_postfix(ms=f"{1000 * result.latency_s:.0f}", cache=result.cache_tokens, refresh=False)
        wall = time.perf_counter() - t_start
        bar.close()
        stream_s = float(reader.end - reader.start)
    peak = peak_rss_mb()
    del session
    gc.collect()
    return {
        "chunks": records,
        "wall_s": wall,
        "video_read_s": read_s,
        "stream_s": stream_s,
        "rss_start_mb": rss_start,
        "peak_rss_mb": peak,
        "peak_rss_scope": peak_scope,
    }


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _r(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else round(float(x), digits)


def per_minute_median_ms(chunks: list[dict[str, Any]]) -> list[float]:
    """Median chunk latency (ms) for each whole minute of stream time (minute k covers [60k, 60k + 60) s)."""
    by_minute: dict[int, list[float]] = {}
    for c in chunks:
        by_minute.setdefault(int(c["t"] // 60), []).append(c["latency_s"])
    return [round(1000 * statistics.median(by_minute[m]), 3) for m in sorted(by_minute)]


def _p10(values: list[float]) -> float | None:
    return sorted(values)[len(values) // 10] if values else None


def summarize(run: dict[str, Any]) -> dict[str, Any]:
    """Summary of one mode's run (see the module docstring for the definitions)."""
    chunks = run["chunks"]
    if not chunks:
        return {"num_chunks": 0}
    lat = [c["latency_s"] for c in chunks]
    t_end = chunks[-1]["t"] + CHUNK_SECONDS
    minute_1 = [c["latency_s"] for c in chunks if c["t"] < 60.0]
    minute_2 = [c["latency_s"] for c in chunks if 60.0 <= c["t"] < 120.0]
    last_minute = [c["latency_s"] for c in chunks if c["t"] >= t_end - 60.0]
    first, second, last = _median(minute_1), _median(minute_2), _median(last_minute)
    window = min(600.0, t_end)
    tail = [c["cache_tokens"] for c in chunks if c["t"] >= t_end - window]
    cache = [c["cache_tokens"] for c in chunks]
    generated = sum(c["new_tokens"] for c in chunks)
    stream_s = run["stream_s"]
    return {
        "num_chunks": len(chunks),
        "stream_s": _r(stream_s, 3),
        "median_latency_s": _r(_median(lat)),
        "median_latency_minute_1": _r(first),
        "median_latency_last_minute": _r(last),
        "latency_ratio_last_vs_first": _r(_ratio(last, first), 4),
        "median_latency_minute_2": _r(second),
        "latency_ratio_last_vs_minute_2": _r(_ratio(last, second), 4),
        "p10_latency_minute_1": _r(_p10(minute_1)),
        "p10_latency_minute_2": _r(_p10(minute_2)),
        "p10_latency_last_minute": _r(_p10(last_minute)),
        "p95_latency_s": _r(sorted(lat)[min(len(lat) - 1, math.ceil(0.95 * len(lat)) - 1)]),
        "max_latency_s": _r(max(lat)),
        "mean_ms_per_generated_token": _r(1000 * sum(lat) / generated if generated else None, 3),
        "generated_tokens": generated,
        "prefill_tokens_total": sum(c["prefill_tokens"] for c in chunks),
        "cache_tokens_max": max(cache),
        "cache_tokens_last": cache[-1],
        "cache_window_s": window,
        "cache_tokens_last_10min_min": min(tail),
        "cache_tokens_last_10min_max": max(tail),
        "rss_start_mb": _r(run["rss_start_mb"], 1),
        "rss_end_mb": chunks[-1]["rss_mb"],
        "peak_rss_mb": _r(run["peak_rss_mb"], 1),
        "peak_rss_scope": run["peak_rss_scope"],
        "wall_s": _r(run["wall_s"], 3),
        "video_read_s": _r(run["video_read_s"], 3),
        "real_time_factor": _r(run["wall_s"] / stream_s if stream_s else None, 4),
        "per_minute_median_latency_ms": per_minute_median_ms(chunks),
    }


def resummarize(doc: dict[str, Any]) -> dict[str, Any]:
    """Recompute every summary and the comparisons of an earlier run's document from its per-chunk records."""
    run_keys = ("wall_s", "video_read_s", "stream_s", "rss_start_mb", "peak_rss_mb", "peak_rss_scope")
    for data in doc["modes"].values():
        old = data.get("summary", {})
        if not data.get("chunks") or any(old.get(k) is None for k in run_keys):
            continue
        data["summary"] = summarize({"chunks": data["chunks"], **{k: old[k] for k in run_keys}})
    doc["comparisons"] = comparisons(doc["modes"])
    return doc


def comparisons(modes: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Cross-mode ratios; None where a mode was not run."""

    def summary(mode: str, key: str) -> float | None:
        return modes[mode]["summary"].get(key) if mode in modes else None

    return {
        "recompute_vs_streaming_median_latency": _r(
            _ratio(summary("recompute", "median_latency_s"), summary("streaming", "median_latency_s")), 4
        ),
        "full_vs_streaming_last_minute": _r(
            _ratio(summary("full", "median_latency_last_minute"), summary("streaming", "median_latency_last_minute")),
            4,
        ),
        "sliding_vs_streaming_median_latency": _r(
            _ratio(summary("sliding", "median_latency_s"), summary("streaming", "median_latency_s")), 4
        ),
    }


# ------------------------------------------------------------------------------------------------------------
# output
# ------------------------------------------------------------------------------------------------------------


_COLORS = {"streaming": "tab:blue", "full": "tab:red", "sliding": "tab:green", "recompute": "tab:orange"}


def write_figure(doc: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Three panels over stream time: per-minute median latency, cache tokens, resident memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    meta = doc["meta"]
    fig, axes = plt.subplots(3, 1, figsize=(9, 9.5), sharex=True, constrained_layout=True)
    ax_lat, ax_cache, ax_rss = axes
    for mode, data in doc["modes"].items():
        chunks = data["chunks"]
        if not chunks:
            continue
        color = _COLORS.get(mode)
        medians = data["summary"]["per_minute_median_latency_ms"]
        minutes = sorted({int(c["t"] // 60) for c in chunks})
        ax_lat.plot([m + 0.5 for m in minutes], medians, marker="o", ms=3, color=color, label=mode)
        t_min = [c["t"] / 60.0 for c in chunks]
        ax_cache.plot(t_min, [c["cache_tokens"] for c in chunks], color=color, lw=1.2, label=mode)
        ax_rss.plot(t_min, [c["rss_mb"] for c in chunks], color=color, lw=1.2, label=mode)
    ax_lat.set_yscale("log")
    ax_lat.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax_lat.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax_lat.yaxis.set_minor_formatter(NullFormatter())
    ax_lat.set_ylabel("median chunk latency (ms)\nper minute of stream, log")
    ax_cache.set_ylabel("KV cache tokens")
    ax_rss.set_ylabel("process RSS (MB)")
    ax_rss.set_xlabel("stream time (min)")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="upper left", fontsize=8, ncol=4)
    ax_rss.set_xlim(left=0)
    threads = meta.get("torch_threads")
    fig.suptitle(
        f"Streaming benchmark: {meta['model_label']}, {meta['dtype']}, {meta['cpu_count']} CPUs, "
        f"torch threads: {threads}\n{meta['minutes']:g} min at {meta['fps']:g} fps, "
        f"{meta['vision_tokens_per_chunk']} vision tokens/chunk, max {meta['max_new_tokens']} new tokens/chunk",
        fontsize=10,
    )
    return save_figure(fig, path)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1000 * seconds:.1f}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_table(doc: dict[str, Any]) -> str:
    """A plain-text summary table (one row per mode)."""
    header = (
        f"{'mode':<10} {'min1 ms':>9} {'min2 ms':>9} {'last ms':>9} {'/min1':>6} {'/min2':>6} {'ms/tok':>7} "
        f"{'cache max':>9} {'cache last10':>13} {'peak MB':>8} {'wall s':>8} {'RTF':>6}"
    )
    rows = [header, "-" * len(header)]
    for mode, data in doc["modes"].items():
        s = data["summary"]
        if not s.get("num_chunks"):
            rows.append(f"{mode:<10} (no chunks)")
            continue
        tail = f"{s['cache_tokens_last_10min_min']}-{s['cache_tokens_last_10min_max']}"
        rows.append(
            f"{mode:<10} {_ms(s['median_latency_minute_1']):>9} {_ms(s.get('median_latency_minute_2')):>9} "
            f"{_ms(s['median_latency_last_minute']):>9} {_num(s['latency_ratio_last_vs_first']):>6} "
            f"{_num(s.get('latency_ratio_last_vs_minute_2')):>6} {_num(s['mean_ms_per_generated_token']):>7} "
            f"{s['cache_tokens_max']:>9} {tail:>13} {s['peak_rss_mb']:>8.0f} {s['wall_s']:>8.1f} "
            f"{s['real_time_factor']:>6.3f}"
        )
    for key, value in doc["comparisons"].items():
        rows.append(f"{key}: {'n/a' if value is None else f'{value:.2f}x'}")
    return "\n".join(rows)


# ------------------------------------------------------------------------------------------------------------
# entry point
# ------------------------------------------------------------------------------------------------------------


def _modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise argparse.ArgumentTypeError(f"modes must be a comma-separated subset of {','.join(MODES)}, got {text}")
    return modes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench_stream",
        description="Stream a (synthetic) video through the engine in each mode and record per-chunk latency, "
        "cache size and memory; writes a JSON file and a figure.",
    )
    p.add_argument("--model", default=None, help="model directory or hub id (default: build the tiny random model)")
    p.add_argument("--minutes", type=positive_float, default=30.0, help="stream length in minutes (default 30)")
    p.add_argument(
        "--modes", type=_modes, default=list(MODES), help=f"comma-separated modes (default {','.join(MODES)})"
    )
    p.add_argument("--dtype", default="fp32", help="fp32 (default), bf16 or fp16")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    p.add_argument("--fps", type=positive_float, default=2.0, help="frames sampled per second (default 2)")
    p.add_argument("--video", default=None, help="an existing video (default: write a synthetic one)")
    p.add_argument(
        "--pixels",
        type=positive_int,
        default=DEFAULT_PIXELS,
        help="per-frame pixel budget (default 112*112: 4x4 = 16 vision tokens per 2-frame chunk)",
    )
    p.add_argument("--max-new-tokens", type=positive_int, default=20, help="commentary tokens per chunk (default 20)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (and tiny-model / synthetic-video seed)")
    p.add_argument("--out", default="figures/bench_stream.json", help="JSON output path")
    p.add_argument("--figure", default="figures/bench_stream.png", help="figure output path ('' for none)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument(
        "--replot",
        default=None,
        metavar="JSON",
        help="no run: recompute the summaries of an earlier JSON from its chunks into --out, redraw --figure",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _synthetic_side(pixels: int, factor: int = 28) -> int:
    """Side of a square synthetic frame that uses the pixel budget in whole 28-pixel tiles."""
    return max(factor, int(math.sqrt(pixels) // factor) * factor)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.replot:
        doc = resummarize(json.loads(Path(args.replot).read_text(encoding="utf-8")))
        print(f"wrote {write_json(doc, args.out)}")
        if args.figure:
            print(f"wrote {write_figure(doc, args.figure)}")
        print(format_table(doc))
        return 0
    from streaming_vlm.models import build_tiny_model, load_model
    from streaming_vlm.synthetic import write_synthetic_video
    from streaming_vlm.video import probe

    if args.threads:
        torch.set_num_threads(args.threads)
    seconds = args.minutes * 60.0
    with tempfile.TemporaryDirectory(prefix="bench_stream_") as tmp:
        if args.model is None:
            model_path = build_tiny_model(Path(tmp) / "tiny", seed=args.seed)
            model_label = "tiny random Qwen2.5-VL"
        else:
            model_path, model_label = args.model, Path(args.model).name or args.model
        loaded = load_model(str(model_path), device=args.device, dtype=args.dtype)
        spec = VisionSpec.from_pretrained(str(model_path), min_pixels=min(28 * 28, args.pixels), max_pixels=args.pixels)

        if args.video is None:
            side = _synthetic_side(args.pixels, spec.factor)
            video_fps = max(4, math.ceil(args.fps))
            t0 = time.perf_counter()
            video = write_synthetic_video(
                Path(tmp) / "synthetic.mp4", seconds, fps=video_fps, width=side, height=side, seed=args.seed
            )
            logger.info("wrote a %g s synthetic video (%dx%d, %d fps) in %.1f s", seconds, side, side, video_fps,
                        time.perf_counter() - t0)
            video_label = f"synthetic {side}x{side} @ {video_fps} fps"
        else:
            video, video_label = Path(args.video), args.video
        info = probe(video)
        h, w = smart_resize(info.height, info.width, spec.factor, spec.min_pixels, spec.max_pixels)
        vision_tokens = int(args.fps * CHUNK_SECONDS) // spec.temporal_patch_size * (h // spec.factor) * (
            w // spec.factor
        )

        meta = {
            "model": str(args.model or "tiny (build_tiny_model)"),
            "model_label": model_label,
            "minutes": args.minutes,
            "fps": args.fps,
            "chunk_seconds": CHUNK_SECONDS,
            "pixels": args.pixels,
            "frame_size": [info.width, info.height],
            "resized_frame_size": [w, h],
            "vision_tokens_per_chunk": vision_tokens,
            "video": video_label,
            "max_new_tokens": args.max_new_tokens,
            "seed": args.seed,
            "dtype": str(loaded.dtype).replace("torch.", ""),
            "device": str(loaded.device),
            "engine": {
                "vision_window": StreamConfig.vision_window,
                "text_rounds": StreamConfig.text_rounds,
                "text_sink": StreamConfig.text_sink,
                "text_window": StreamConfig.text_window,
                "reset_every": StreamConfig.reset_every,
                "temperature": SamplingConfig.temperature,
                "repetition_penalty": SamplingConfig.repetition_penalty,
            },
            "torch": torch.__version__,
            "transformers": _version("transformers"),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "notes": "latency in s; real_time_factor = wall_s / stream_s (< 1 keeps up with live video); "
            "modes run one after another in one process, so RSS includes what earlier modes left allocated",
        }
        modes: dict[str, dict[str, Any]] = {}
        for mode in args.modes:
            logger.info("mode %s: streaming %g min", mode, args.minutes)
            run = run_mode(
                mode,
                loaded.model,
                loaded.tokenizer,
                video,
                fps=args.fps,
                duration=seconds,
                vision_spec=spec,
                max_new_tokens=args.max_new_tokens,
                seed=args.seed,
                progress=not args.no_progress,
            )
            modes[mode] = {"summary": summarize(run), "chunks": run["chunks"]}
            s = modes[mode]["summary"]
            logger.info("mode %s: %d chunks in %.1f s, median %.1f ms, cache max %s, peak RSS %.0f MB",
                        mode, s["num_chunks"], s["wall_s"] or 0.0, 1000 * (s.get("median_latency_s") or 0.0),
                        s.get("cache_tokens_max"), s.get("peak_rss_mb") or 0.0)
    doc = {"meta": meta, "modes": modes, "comparisons": comparisons(modes)}
    out = write_json(doc, args.out)
    print(f"wrote {out}")
    if args.figure:
        print(f"wrote {write_figure(doc, args.figure)}")
    print(format_table(doc))
    return 0


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
