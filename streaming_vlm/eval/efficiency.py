"""Efficiency test: per-token and per-chunk latency, achieved FPS and peak memory over a long video, per mode.

The paper's four settings run on the same video with the same sampling settings, one fresh ``StreamSession``
each, fed by the same reader (``VideoReader.chunks()`` -> ``StreamSession.step``):

- (a) ``full``: full attention, nothing is ever evicted (latency grows; eventually out of memory);
- (b) ``sliding``: sliding window without overlap, the context restarts every ``--reset-every`` seconds;
- (c) ``recompute``: sliding window with overlap, the kept context is re-prefilled from scratch every chunk;
- (d) ``streaming``: StreamingVLM (attention sinks, vision and text windows, KV reuse).

Per chunk the processed video length, the chunk latency, the decode time, the generated tokens, the latency
per token (``latency_s / new_tokens``, prefill included, and ``decode_s / new_tokens``, the reference's
``gen_time_per_token``), the cache size and the memory in use are recorded. Peak memory is
``torch.cuda.max_memory_allocated`` (reset at the start of each mode) on a GPU, the peak resident memory of
the process on CPU. An out-of-memory error (``torch.cuda.OutOfMemoryError`` or ``MemoryError``) ends that
mode and is recorded (``"oom": true`` and when it happened); the other modes still run.

Real time: a chunk of ``chunk_seconds`` of video must be processed within ``chunk_seconds``, so the per-chunk
threshold is ``chunk_seconds`` and the per-token threshold ``chunk_seconds / max_new_tokens``.

Writes a results JSON (``meta`` and, per mode, ``summary`` and ``chunks``), a two-panel figure (latency per
token and per-chunk latency against processed video length, each with its dashed real-time threshold) and
prints a table. Run ``streaming-vlm eval efficiency --help``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import logging
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from streaming_vlm import bench
from streaming_vlm.argtypes import positive_float, positive_int
from streaming_vlm.engine import StreamConfig, StreamSession
from streaming_vlm.eval.runner import format_table, write_results
from streaming_vlm.sampling import SamplingConfig

__all__ = ["MODE_LABELS", "build_parser", "main", "run_mode", "summarize", "write_figure"]

logger = logging.getLogger(__name__)

PAPER_MODES = ("full", "sliding", "recompute", "streaming")
MODE_LABELS = {
    "full": "(a) full attention",
    "sliding": "(b) sliding window w/o overlap",
    "recompute": "(c) sliding window w/ overlap",
    "streaming": "(d) StreamingVLM",
}
_COLORS = {"full": "tab:red", "sliding": "tab:green", "recompute": "tab:orange", "streaming": "tab:blue"}
_MB = 1024.0 * 1024.0


def _oom_errors() -> tuple[type[BaseException], ...]:
    cuda_oom = getattr(torch.cuda, "OutOfMemoryError", None) or getattr(torch, "OutOfMemoryError", None)
    return (MemoryError, cuda_oom) if cuda_oom is not None else (MemoryError,)


# ------------------------------------------------------------------------------------------------------------
# memory
# ------------------------------------------------------------------------------------------------------------


class _Memory:
    """Peak memory of one mode: CUDA max allocated (reset per mode) on a GPU, peak process RSS otherwise."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            self.kind, self.scope = "cuda_max_allocated", "mode"
        else:
            self.kind = "rss"
            self.scope = "mode" if bench.reset_peak_rss() else "process"

    def now_mb(self) -> float:
        return torch.cuda.memory_allocated(self.device) / _MB if self.cuda else bench.current_rss_mb()

    def peak_mb(self) -> float:
        return torch.cuda.max_memory_allocated(self.device) / _MB if self.cuda else bench.peak_rss_mb()


# ------------------------------------------------------------------------------------------------------------
# one mode
# ------------------------------------------------------------------------------------------------------------


def _per(value: float, tokens: int) -> float | None:
    return round(value / tokens, 6) if tokens > 0 else None


def run_mode(
    mode: str,
    model,
    tokenizer,
    video: str | os.PathLike[str],
    *,
    fps: float,
    chunk_seconds: float,
    duration: float | None,
    vision_spec,
    sampling: SamplingConfig,
    reset_every: float,
    seed: int,
) -> dict[str, Any]:
    """Stream ``video`` through a fresh session in ``mode``; per-chunk records, timings, peak memory, OOM."""
    from streaming_vlm.video import VideoReader

    config = StreamConfig(
        mode=mode, fps=fps, chunk_seconds=chunk_seconds, reset_every=reset_every, sampling=sampling, seed=seed
    )
    gc.collect()
    device = next(model.parameters()).device
    memory = _Memory(device)
    records: list[dict[str, Any]] = []
    oom: dict[str, Any] | None = None
    frames = 0
    session = StreamSession(model, tokenizer, config, vision_spec=vision_spec)
    with VideoReader(video, fps=fps, chunk_seconds=chunk_seconds, duration=duration) as reader:
        t_start = time.perf_counter()
        for chunk in reader.chunks():
            try:
                result = session.step(chunk.frames, chunk.start, chunk.end)
            except _oom_errors() as exc:
                oom = {
                    "at_s": round(float(chunk.start), 3),
                    "chunk_index": chunk.index,
                    "wall_s": round(time.perf_counter() - t_start, 3),
                    "error": f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300],
                }
                logger.warning("mode %s: out of memory at %.1f s of video (%s)", mode, chunk.start, oom["error"])
                break
            frames += len(chunk.frames)
            records.append(
                {
                    "index": result.index,
                    "t": round(float(chunk.start), 3),
                    "video_len_s": round(float(chunk.end), 3),
                    "latency_s": round(result.latency_s, 6),
                    "decode_s": round(result.decode_s, 6),
                    "new_tokens": result.new_tokens,
                    "latency_per_token_s": _per(result.latency_s, result.new_tokens),
                    "decode_per_token_s": _per(result.decode_s, result.new_tokens),
                    "prefill_tokens": result.prefill_tokens,
                    "cache_tokens": result.cache_tokens,
                    "memory_mb": round(memory.now_mb(), 1),
                }
            )
        wall = time.perf_counter() - t_start
    peak = memory.peak_mb()
    del session
    gc.collect()
    if memory.cuda:
        torch.cuda.empty_cache()
    return {
        "chunks": records,
        "wall_s": wall,
        "frames": frames,
        "peak_memory_mb": peak,
        "memory_kind": memory.kind,
        "memory_scope": memory.scope,
        "oom": oom,
    }


# ------------------------------------------------------------------------------------------------------------
# summary
# ------------------------------------------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in [0, 100])."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100.0 * len(ordered)) - 1))]


def _r(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else round(float(x), digits)


def summarize(run: dict[str, Any], chunk_seconds: float, max_new_tokens: int) -> dict[str, Any]:
    """Medians and p95 of the per-chunk and per-token latencies, FPS, peak memory and the OOM record."""
    chunks = run["chunks"]
    lat = [c["latency_s"] for c in chunks]
    per_tok = [c["latency_per_token_s"] for c in chunks if c["latency_per_token_s"] is not None]
    dec_tok = [c["decode_per_token_s"] for c in chunks if c["decode_per_token_s"] is not None]
    stream_s = chunks[-1]["video_len_s"] - chunks[0]["t"] if chunks else 0.0
    wall = run["wall_s"]
    oom = run["oom"]
    token_threshold = chunk_seconds / max_new_tokens
    return {
        "num_chunks": len(chunks),
        "processed_s": _r(stream_s, 3),
        "median_latency_s": _r(statistics.median(lat) if lat else None),
        "p95_latency_s": _r(_percentile(lat, 95)),
        "median_latency_per_token_s": _r(statistics.median(per_tok) if per_tok else None),
        "p95_latency_per_token_s": _r(_percentile(per_tok, 95)),
        "median_decode_per_token_s": _r(statistics.median(dec_tok) if dec_tok else None),
        "p95_decode_per_token_s": _r(_percentile(dec_tok, 95)),
        "realtime_chunk_fraction": _r(sum(x <= chunk_seconds for x in lat) / len(lat) if lat else None, 4),
        "realtime_token_fraction": _r(
            sum(x <= token_threshold for x in per_tok) / len(per_tok) if per_tok else None, 4
        ),
        "generated_tokens": sum(c["new_tokens"] for c in chunks),
        "frames": run["frames"],
        "wall_s": _r(wall, 3),
        "fps": _r(run["frames"] / wall if wall > 0 else None, 3),
        "real_time_factor": _r(wall / stream_s if stream_s > 0 else None, 4),
        "cache_tokens_max": max((c["cache_tokens"] for c in chunks), default=0),
        "peak_memory_mb": _r(run["peak_memory_mb"], 1),
        "memory_kind": run["memory_kind"],
        "memory_scope": run["memory_scope"],
        "oom": oom is not None,
        "oom_at_s": oom["at_s"] if oom else None,
        "oom_wall_s": oom["wall_s"] if oom else None,
        "oom_error": oom["error"] if oom else None,
    }


def table_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per mode for ``runner.format_table``."""

    def ms(x: float | None) -> Any:
        return "-" if x is None else 1000.0 * x

    rows = []
    for mode, data in doc["modes"].items():
        s = data["summary"]
        rows.append(
            {
                "mode": MODE_LABELS.get(mode, mode),
                "chunks": s["num_chunks"],
                "med ms": ms(s["median_latency_s"]),
                "p95 ms": ms(s["p95_latency_s"]),
                "med ms/tok": ms(s["median_latency_per_token_s"]),
                "p95 ms/tok": ms(s["p95_latency_per_token_s"]),
                "decode ms/tok": ms(s["median_decode_per_token_s"]),
                "fps": "-" if s["fps"] is None else s["fps"],
                f"peak MB ({s['memory_kind']})": s["peak_memory_mb"],
                "oom": f"at {s['oom_at_s']:g} s" if s["oom"] else "no",
            }
        )
    return rows


# ------------------------------------------------------------------------------------------------------------
# figure
# ------------------------------------------------------------------------------------------------------------


def write_figure(doc: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Latency per token and per-chunk latency against processed video length, with real-time thresholds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta = doc["meta"]
    chunk_s, token_s = meta["chunk_seconds"], meta["realtime_threshold_per_token_s"]
    fig, (ax_tok, ax_chunk) = plt.subplots(2, 1, figsize=(9, 8), sharex=True, constrained_layout=True)
    for mode, data in doc["modes"].items():
        color, label = _COLORS.get(mode), MODE_LABELS.get(mode, mode)
        chunks = data["chunks"]
        x_tok = [c["video_len_s"] for c in chunks if c["latency_per_token_s"] is not None]
        y_tok = [c["latency_per_token_s"] for c in chunks if c["latency_per_token_s"] is not None]
        ax_tok.plot(x_tok, y_tok, color=color, lw=1.3, label=label)
        ax_chunk.plot(
            [c["video_len_s"] for c in chunks], [c["latency_s"] for c in chunks], color=color, lw=1.3, label=label
        )
        s = data["summary"]
        if s["oom"]:
            for ax, ys in ((ax_tok, y_tok), (ax_chunk, [c["latency_s"] for c in chunks])):
                y = ys[-1] if ys else (token_s if ax is ax_tok else chunk_s)
                ax.plot([s["oom_at_s"]], [y], marker="X", ms=10, color=color, ls="none")
                ax.annotate(
                    f"OOM at {s['oom_at_s']:g} s",
                    (s["oom_at_s"], y),
                    textcoords="offset points",
                    xytext=(5, 5),
                    fontsize=8,
                    color=color,
                )
    ax_tok.axhline(
        token_s,
        color="black",
        ls="--",
        lw=1.2,
        label=f"Realtime: {chunk_s:g} s chunk / {meta['max_new_tokens']} tokens = {token_s:.3g} s/token",
    )
    ax_chunk.axhline(chunk_s, color="black", ls="--", lw=1.2, label=f"Realtime: chunk duration {chunk_s:g} s")
    ax_tok.set_ylabel("latency per token (s)\n(chunk latency / generated tokens)")
    ax_chunk.set_ylabel("per-chunk latency (s)")
    ax_chunk.set_xlabel("processed video length (s)")
    for ax in (ax_tok, ax_chunk):
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
        ax.set_xlim(left=0)
    fig.suptitle(
        f"Efficiency: {meta['model_label']} ({meta['dtype']}, {meta['device']}), {meta['processed_s']:g} s of "
        f"{Path(meta['video']).name}\n{meta['fps']:g} fps, {chunk_s:g} s chunks, max {meta['max_new_tokens']} new "
        f"tokens/chunk, sliding reset every {meta['reset_every']:g} s",
        fontsize=10,
    )
    return bench.save_figure(fig, path)


# ------------------------------------------------------------------------------------------------------------
# entry point
# ------------------------------------------------------------------------------------------------------------


def _modes(text: str) -> list[str]:
    modes = bench._modes(text)
    return list(dict.fromkeys(modes))


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The ``streaming-vlm eval efficiency`` options (added to ``parser`` when given)."""
    p = parser or argparse.ArgumentParser(
        prog="streaming-vlm eval efficiency",
        description="Latency per token, per-chunk latency, FPS and peak memory of the four modes of the paper "
        "(full attention, sliding window without / with overlap, StreamingVLM) on one video; writes a JSON file "
        "and a figure and prints a table.",
    )
    p.add_argument("--model", required=True, help="model directory or hub id")
    p.add_argument("--video", required=True, help="the video to stream")
    p.add_argument(
        "--duration",
        type=positive_float,
        default=None,
        help="seconds of video to process (default: all of it; the paper uses 1000)",
    )
    p.add_argument(
        "--modes",
        type=_modes,
        default=list(PAPER_MODES),
        help=f"comma-separated modes (default {','.join(PAPER_MODES)})",
    )
    p.add_argument(
        "--reset-every",
        type=positive_float,
        default=100.0,
        help="sliding mode (b): restart the context every this many seconds (default 100)",
    )
    p.add_argument("--out", default="results/efficiency.json", help="results JSON (default results/efficiency.json)")
    p.add_argument(
        "--figure", default="figures/efficiency.png", help="figure path (default figures/efficiency.png; '' for none)"
    )
    p.add_argument("--device", default="auto", help="auto (default), cuda, cpu, ...")
    p.add_argument("--dtype", default="auto", help="auto (default), bf16, fp16, fp32")
    p.add_argument(
        "--max-pixels",
        type=positive_int,
        default=768 * 28 * 28,
        help="maximum pixels per frame after resizing (default 768*28*28)",
    )
    p.add_argument("--fps", type=positive_float, default=2.0, help="frames sampled per second (default 2)")
    p.add_argument("--chunk-seconds", type=positive_float, default=1.0, help="seconds per chunk (default 1)")
    p.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=SamplingConfig.max_new_tokens,
        help=f"commentary tokens per chunk at most (default {SamplingConfig.max_new_tokens})",
    )
    p.add_argument("--seed", type=int, default=0, help="sampling seed, the same for every mode (default 0)")
    return p


def _fail(message: str) -> int:
    print(f"streaming-vlm eval efficiency: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


def main(argv: list[str] | argparse.Namespace | None = None) -> int:
    args = argv if isinstance(argv, argparse.Namespace) else build_parser().parse_args(argv)
    from streaming_vlm.models import ModelLoadError, load_model
    from streaming_vlm.preprocess import VisionSpec
    from streaming_vlm.video import VideoError, probe

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        info = probe(args.video)
        # Validates fps / chunk_seconds against the engine before the model is loaded.
        StreamConfig(fps=args.fps, chunk_seconds=args.chunk_seconds, reset_every=args.reset_every)
        loaded = load_model(args.model, device=args.device, dtype=args.dtype)
        spec = VisionSpec.from_pretrained(
            loaded.path, min_pixels=min(100 * 28 * 28, args.max_pixels), max_pixels=args.max_pixels
        )
        frames = args.fps * args.chunk_seconds
        if abs(frames - round(frames)) > 1e-6 or round(frames) % spec.temporal_patch_size:
            raise ValueError(
                f"--fps * --chunk-seconds must be a multiple of {spec.temporal_patch_size} frames, got {frames:g}"
            )
    except (VideoError, ModelLoadError, ValueError, OSError) as exc:
        return _fail(str(exc))

    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens)
    modes: dict[str, dict[str, Any]] = {}
    for mode in args.modes:
        logger.info("mode %s (%s)", mode, MODE_LABELS[mode])
        run = run_mode(
            mode,
            loaded.model,
            loaded.tokenizer,
            args.video,
            fps=args.fps,
            chunk_seconds=args.chunk_seconds,
            duration=args.duration,
            vision_spec=spec,
            sampling=sampling,
            reset_every=args.reset_every,
            seed=args.seed,
        )
        modes[mode] = {
            "label": MODE_LABELS[mode],
            "summary": summarize(run, args.chunk_seconds, args.max_new_tokens),
            "chunks": run["chunks"],
        }
    processed = max((m["summary"]["processed_s"] or 0.0 for m in modes.values()), default=0.0)
    meta = {
        "model": str(args.model),
        "model_label": Path(str(args.model)).name or str(args.model),
        "video": str(args.video),
        "video_duration_s": round(info.duration, 3),
        "frame_size": [info.width, info.height],
        "duration_requested_s": args.duration,
        "processed_s": processed,
        "modes": list(args.modes),
        "mode_labels": {m: MODE_LABELS[m] for m in args.modes},
        "fps": args.fps,
        "chunk_seconds": args.chunk_seconds,
        "max_new_tokens": args.max_new_tokens,
        "max_pixels": args.max_pixels,
        "reset_every": args.reset_every,
        "realtime_threshold_chunk_s": args.chunk_seconds,
        "realtime_threshold_per_token_s": args.chunk_seconds / args.max_new_tokens,
        "sampling": {
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k,
            "repetition_penalty": sampling.repetition_penalty,
            "max_new_tokens": sampling.max_new_tokens,
        },
        "engine": {
            "vision_window": StreamConfig.vision_window,
            "text_rounds": StreamConfig.text_rounds,
            "text_sink": StreamConfig.text_sink,
            "text_window": StreamConfig.text_window,
        },
        "seed": args.seed,
        "dtype": str(loaded.dtype).replace("torch.", ""),
        "device": str(loaded.device),
        "torch": torch.__version__,
        "transformers": bench._version("transformers"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(loaded.device) if loaded.device.type == "cuda" else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "notes": "latency_per_token_s = chunk latency (prefill included) / generated tokens; decode_per_token_s = "
        "decoding time / generated tokens (the reference's gen_time_per_token); fps = frames / wall second; "
        "real time: a chunk must finish within chunk_seconds, so per token within chunk_seconds / max_new_tokens",
    }
    doc = {"meta": meta, "modes": modes}
    print(f"wrote {write_results(args.out, doc)}")
    if args.figure:
        print(f"wrote {write_figure(doc, args.figure)}")
    print(format_table(table_rows(doc)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
