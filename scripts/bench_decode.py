#!/usr/bin/env python
"""Decode cost of the engine on CPU: per token against stream length, and against another revision of the engine.

Streams ``--chunks`` one-second chunks of random frames (2 frames of 112x112: 16 vision tokens per chunk, the
``bench`` preset's geometry) through the tiny random model with the default stream settings (streaming mode,
windows 16/16/512/512, up to 20 sampled tokens per chunk, temperature 0.9, seed 0) and records, per chunk, the
decoding time per token (the decode loop over the tokens it generated), the whole chunk's latency and the tokens.
With ``--against DIR`` (another checkout, e.g. ``git worktree add /tmp/before HEAD~5``) the same stream runs
through that revision's engine too: each engine in its own process, fed chunk by chunk in turn (the order swapped
every chunk), so that both see the same machine load at the same time; the summary gives new/old ratios of
medians, per token and per chunk, and the share of chunks that generated identical tokens. Writes ``--out`` (JSON)
and a figure beside it (``.png``).

Usage (from the repository root)::

    OMP_NUM_THREADS=1 python scripts/bench_decode.py --chunks 600 --against /tmp/before
    OMP_NUM_THREADS=1 python scripts/bench_decode.py --chunks 120            # this revision alone

The timings are CPU timings of a 2-layer model, where Python overhead dominates; they show that decoding does
not grow with the stream and what the engine's own work costs, not GPU speed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def worker(model_dir: str, threads: int) -> None:
    """Stream through whatever ``streaming_vlm`` this interpreter imports: for each chunk index read on stdin, one
    JSON record on stdout (chunk k's frames are the same in every worker)."""
    import numpy as np
    import torch

    from streaming_vlm.engine import StreamConfig, StreamSession
    from streaming_vlm.models import load_model
    from streaming_vlm.preprocess import VisionSpec

    torch.set_num_threads(threads)
    loaded = load_model(model_dir, device="cpu", dtype="fp32")
    session = StreamSession(loaded.model, loaded.tokenizer, StreamConfig(),
                            vision_spec=VisionSpec(min_pixels=28 * 28, max_pixels=112 * 112))
    print("ready", flush=True)
    for line in sys.stdin:
        k = int(line)
        frames = np.random.default_rng(k).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
        r = session.step(frames, float(k), float(k + 1))
        print(json.dumps({"index": k, "latency_s": r.latency_s, "decode_s": r.decode_s, "new_tokens": r.new_tokens,
                          "cache_tokens": r.cache_tokens, "tokens": r.token_ids}), flush=True)


class Engine:
    """A worker process streaming through the ``streaming_vlm`` of one checkout."""

    def __init__(self, source: Path, model_dir: str, threads: int):
        env = dict(os.environ, PYTHONPATH=str(source), OMP_NUM_THREADS=str(threads))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", model_dir, "--threads", str(threads)]
        self.proc = subprocess.Popen(cmd, env=env, cwd=source, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        self.chunks: list[dict] = []
        while (line := self.proc.stdout.readline()) and not line.startswith("ready"):
            pass
        if not line:
            raise RuntimeError(f"the worker for {source} ended before it was ready")

    def step(self, k: int) -> None:
        self.proc.stdin.write(f"{k}\n")
        self.proc.stdin.flush()
        while (line := self.proc.stdout.readline()) and not line.startswith("{"):
            pass
        if not line:
            raise RuntimeError("a worker ended early")
        self.chunks.append(json.loads(line))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def revision(source: Path) -> str | None:
    """The git revision of a checkout (with ``+`` when it has uncommitted changes), or None."""
    try:
        rev = subprocess.run(["git", "-C", str(source), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--", "streaming_vlm"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return rev + ("+" if dirty else "")


def per_token_ms(chunk: dict) -> float | None:
    return 1000 * chunk["decode_s"] / chunk["new_tokens"] if chunk["new_tokens"] else None


def quantile(values: list[float], q: float) -> float:
    """The median for q = 0.5, else the nearest-rank ``q`` quantile."""
    values = sorted(values)
    return statistics.median(values) if q == 0.5 else values[min(len(values) - 1, int(q * len(values)))]


def minute_stats(chunks: list[dict], field, q: float = 0.5) -> list[float]:
    """The ``q`` quantile of ``field(chunk)`` per minute of stream (60 chunks)."""
    minutes = max(c["index"] for c in chunks) // 60 + 1
    out = []
    for m in range(minutes):
        values = [v for c in chunks if c["index"] // 60 == m and (v := field(c)) is not None]
        out.append(quantile(values, q) if values else None)
    return out


def summary(chunks: list[dict]) -> dict:
    steady = [c for c in chunks if c["index"] >= 60] or chunks  # after the first minute: the cache is full
    tok = minute_stats(chunks, per_token_ms)
    floor = minute_stats(chunks, per_token_ms, 0.1)
    return {
        "median_ms_per_token": statistics.median(v for c in steady if (v := per_token_ms(c)) is not None),
        "median_chunk_ms": statistics.median(1000 * c["latency_s"] for c in steady),
        "median_prefill_and_close_ms": statistics.median(1000 * (c["latency_s"] - c["decode_s"]) for c in steady),
        "ms_per_token_by_minute": tok,
        "p10_ms_per_token_by_minute": floor,
        "chunk_ms_by_minute": minute_stats(chunks, lambda c: 1000 * c["latency_s"]),
        "cache_tokens_by_minute": minute_stats(chunks, lambda c: c["cache_tokens"]),
        "last_vs_second_minute_per_token": tok[-1] / tok[1] if len(tok) > 2 else None,
        "last_vs_second_minute_p10_per_token": floor[-1] / floor[1] if len(floor) > 2 else None,
    }


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    engines = doc["engines"]
    fig, axes = plt.subplots(1, 2 if "ratios_by_minute" in doc else 1, figsize=(11, 3.8), squeeze=False)
    axes = axes[0]
    for (label, s), color in zip(engines.items(), ("C0", "C1"), strict=False):
        minutes = range(1, len(s["p10_ms_per_token_by_minute"]) + 1)
        axes[0].plot(minutes, s["p10_ms_per_token_by_minute"], marker="o", color=color,
                     label=f"{label}, 10th percentile")
        axes[0].plot(minutes, s["ms_per_token_by_minute"], marker=".", ls=":", color=color, label=f"{label}, median")
    axes[0].set(xlabel="stream minute", ylabel="decode ms / token", title="decoding cost per token")
    axes[0].set_ylim(bottom=0)
    if "ratios_by_minute" in doc:
        r = doc["ratios_by_minute"]
        minutes = range(1, len(r["ms_per_token"]) + 1)
        axes[1].plot(minutes, r["ms_per_token"], marker="o", label="per token (median)")
        axes[1].plot(minutes, r["chunk_ms"], marker="o", label="per chunk (median)")
        axes[1].axhline(1.0, color="grey", lw=1)
        axes[1].set(xlabel="stream minute", ylabel="this revision / --against", title="same chunks, same time")
        axes[1].set_ylim(0, 1.5)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"tiny model, CPU, {doc['threads']} thread(s); load {doc['load_before'][0]:.1f} "
                 f"-> {doc['load_after'][0]:.1f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chunks", type=int, default=600, help="one-second chunks streamed (default 600: 10 minutes)")
    p.add_argument("--against", type=Path, help="a checkout of another revision to compare with")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", type=Path, default=REPO / "figures" / "bench_decode.json")
    p.add_argument("--worker", metavar="MODEL_DIR", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.chunks < 1 or args.threads < 1:
        p.error("--chunks and --threads must be >= 1")
    if args.worker:
        worker(args.worker, args.threads)
        return 0
    if args.against is not None and not (args.against / "streaming_vlm" / "engine.py").is_file():
        p.error(f"--against {args.against}: not a checkout of this repository")
    from streaming_vlm.models import build_tiny_model

    engines = {"this revision": REPO} | ({"--against": args.against.resolve()} if args.against else {})
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(build_tiny_model(Path(tmp) / "tiny", seed=0))
        workers = {name: Engine(source, model_dir, args.threads) for name, source in engines.items()}
        try:
            for k in range(args.chunks):
                for w in list(workers.values())[:: 1 if k % 2 else -1]:  # who goes first alternates
                    w.step(k)
        finally:
            for w in workers.values():
                w.close()
    runs = {name: w.chunks for name, w in workers.items()}
    doc = {"revisions": {name: revision(source) for name, source in engines.items()},
           "chunks": args.chunks, "threads": args.threads, "load_before": load_before,
           "load_after": os.getloadavg(), "wall_s": time.perf_counter() - t0,
           "engines": {name: summary(r) for name, r in runs.items()}}
    if args.against:
        new, old = doc["engines"]["this revision"], doc["engines"]["--against"]
        doc["against"] = str(args.against)
        doc["ratios_new_over_old"] = {key: new[key] / old[key] for key in
                                      ("median_ms_per_token", "median_chunk_ms", "median_prefill_and_close_ms")}
        pairs = [(a["tokens"], b["tokens"]) for a, b in zip(runs["this revision"], runs["--against"], strict=True)]
        doc["identical_chunks"] = sum(a == b for a, b in pairs) / len(pairs)
        doc["ratios_by_minute"] = {
            "ms_per_token": [a / b for a, b in zip(new["ms_per_token_by_minute"], old["ms_per_token_by_minute"],
                                                   strict=True)],
            "chunk_ms": [a / b for a, b in zip(new["chunk_ms_by_minute"], old["chunk_ms_by_minute"], strict=True)]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    plot(doc, args.out.with_suffix(".png"))
    print(json.dumps({k: v for k, v in doc.items() if k != "engines"} |
                     {name: {k: v for k, v in s.items() if not k.endswith("by_minute")}
                      for name, s in doc["engines"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
