"""Long-stream quality on the synthetic world: event F1, the non-visible fact, empty/garbled chunks, latency, memory.

The held-out streams (``streaming-vlm synth DIR --split test``: ``DIR/test.jsonl`` plus ``DIR/videos/*.mp4``) are
streamed start to end in each mode (``streaming``, ``full``, ``sliding`` without overlap, ``recompute``), one fresh
session per (mode, stream) item. The harness (``eval/harness.py``) runs the items (resumable, rank-sharded); each
record keeps every chunk's stream time, text, latency, cache size and resident memory, so the scores can be
recomputed without generating again (the model is loaded only when an item is missing).

Stream settings are the harness's, this benchmark's preset below the checkpoint's: greedy decoding, no repetition
penalty, a sliding reset every 24 s (the scores count exact calls and the world's grammar repeats its words by
design). The report's ``settings`` repeat the ones a resume must match.

Scoring (``world/score.py``, next to the world's grammar) reads the ground truth from the annotation file, never
from seeds, and matches the model's calls to it:

- **event F1** of calls matched within ``--tolerance`` seconds (1); **fact accuracy** (the running score, never
  drawn) over matched calls; **empty** and **garbled** shares; a **per-minute series** of all of these plus the
  median chunk latency and the largest cache, pooled over streams;
- **first / last 10 minutes' F1** on streams of 20 minutes or more, and their ratio;
- the score accuracy of **each stream**, their mean and the **worst stream** (of all, and of those under 20 minutes),
  and the **score slips** (a wrong score after a right one; the calls after it carry it on) by cause: a missed or
  extra increment, a missed reset, other; and by where the last score was: in the verbatim turns, or, 16 s (the
  cache's ``text_rounds``) or more back, only in the previous text (streaming and recompute modes);
- each baseline's failure mode: latency growth and cache size (full attention), F1 within vs past the training
  window (``--training-window``, 24 s), and fact accuracy on the calls whose score reaches back before a sliding
  reset (``--reset-every``) vs the others.

``--max-wall-s`` bounds the wall time of one item: a stream that runs past it stops there and its record says
where and why (``stopped_at_s``, ``stop_reason``); only the part streamed is scored, and ``coverage`` shows it.
An out-of-memory error stops the item the same way. Writes the report JSON, a three-panel figure (event F1,
fact accuracy and per-chunk latency against stream time, one line per mode) and prints a table.
Run ``streaming-vlm eval synth --help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streaming_vlm.argtypes import csv_choices, non_negative_float, positive_float
from streaming_vlm.eval import harness
from streaming_vlm.eval.runner import MODE_COLORS, format_table, percentile
from streaming_vlm.world.score import (
    EPS,
    StreamScore,
    Tally,
    chunk_texts,
    count_slips,
    median_ms,
    per_minute,
    rounded,
    score_stream,
)
from streaming_vlm.world.script import QUERY, parse_commentary

if TYPE_CHECKING:
    from streaming_vlm.data.annotations import StreamRecord

__all__ = ["MODES", "Stream", "Synth", "build_report", "findings", "load_streams", "main", "table_rows",
           "write_figure"]

MODES = ("streaming", "full", "sliding", "recompute")
MODE_LABELS = {
    "streaming": "StreamingVLM",
    "full": "full attention",
    "sliding": "sliding window w/o overlap",
    "recompute": "sliding window w/ overlap (recompute)",
}
RETIRING_MODES = ("streaming", "recompute")
"""Modes whose cache retires old turns into the previous text (``text_rounds``)."""
LONG_STREAM_S = 20 * 60.0
"""Streams at least this long get first / last 10 minutes' F1."""
EDGE_S = 10 * 60.0


class SynthError(Exception):
    """Bad input to the benchmark (one line)."""


# ------------------------------------------------------------------------------------------------------------
# aggregation
# ------------------------------------------------------------------------------------------------------------


def _p90_ms(seconds: Sequence[float]) -> float | None:
    p = percentile(seconds, 90)
    return None if p is None else round(1000.0 * p, 3)


def _edges(scores: Sequence[StreamScore], durations: Sequence[float]) -> dict[str, Any]:
    """First / last 10 minutes' F1 over the streams of 20 minutes or more that were streamed to their end."""
    long = [(s, d) for s, d in zip(scores, durations, strict=True) if d >= LONG_STREAM_S - EPS]
    whole = [(s, d) for s, d in long if s.end >= s.start + d - EPS]
    first = Tally.pool(s.tally(s.start, s.start + EDGE_S) for s, _ in whole)
    last = Tally.pool(s.tally(s.start + d - EDGE_S, s.start + d) for s, d in whole)
    f_first, f_last = (first.f1, last.f1) if whole else (None, None)
    return {
        "first_10_min_f1": rounded(f_first), "last_10_min_f1": rounded(f_last),
        "last_vs_first_10_min": rounded(f_last / f_first) if whole and f_first else None,
        "long_streams": len(long), "long_streams_scored": len(whole),
    }  # fmt: skip


def _worst(accuracy: dict[str, float | None], names: Sequence[str]) -> dict[str, Any] | None:
    """``{"stream", "fact_accuracy"}`` of the lowest score accuracy among ``names`` (the first on a tie), or None."""
    scored = [(accuracy[n], i, n) for i, n in enumerate(names) if accuracy[n] is not None]
    if not scored:
        return None
    value, _, name = min(scored)
    return {"stream": name, "fact_accuracy": value}


def per_stream_facts(scores: Sequence[StreamScore], streams: Sequence[Stream]) -> dict[str, Any]:
    """Score accuracy per stream, its mean over the streams that have one, and the worst stream of all and of those
    shorter than 20 minutes (``None`` where there is none)."""
    accuracy = {st.name: rounded(sc.tally().fact_accuracy) for sc, st in zip(scores, streams, strict=True)}
    values = [v for v in accuracy.values() if v is not None]
    short = [st.name for st in streams if st.duration < LONG_STREAM_S - EPS]
    return {
        "fact_accuracy_per_stream": accuracy,
        "fact_accuracy_stream_mean": rounded(sum(values) / len(values)) if values else None,
        "fact_accuracy_worst": _worst(accuracy, [st.name for st in streams]),
        "fact_accuracy_worst_short": _worst(accuracy, short),
    }


def summarize(scores: Sequence[StreamScore], records: Sequence[dict[str, Any]], streams: Sequence[Stream],
              training_window_s: float) -> dict[str, Any]:
    """One mode over its streams (``scores``, generation ``records`` and ``streams`` in the same order): pooled
    scores, per-stream score accuracy and slips, edges, failure-mode numbers and the per-minute series."""
    durations = [s.duration for s in streams]
    total = Tally.pool(s.tally() for s in scores)
    chunks = [c for s in scores for c in s.chunks]
    lat = [c["latency_s"] for c in chunks if c["latency_s"] is not None]
    minutes = per_minute(scores)
    lat_minutes = [m["latency_ms_median"] for m in minutes if m["latency_ms_median"] is not None]
    within = Tally.pool(s.tally(s.start, s.start + training_window_s) for s in scores)
    past = Tally.pool(s.tally(s.start + training_window_s) for s in scores)
    streamed = sum(s.end - s.start for s in scores)
    gpu = [r["peak_gpu_mb"] for r in records if r.get("peak_gpu_mb") is not None]
    return {
        **total.scores(),
        **per_stream_facts(scores, streams), "score_slips": count_slips(scores),
        "latency_ms_median": median_ms(lat), "latency_ms_p90": _p90_ms(lat),
        "latency_growth":
            rounded(lat_minutes[-1] / lat_minutes[0]) if len(lat_minutes) > 1 and lat_minutes[0] else None,
        "peak_cache_tokens": max((c["cache_tokens"] or 0 for c in chunks), default=0),
        "peak_rss_mb": rounded(max((r["peak_rss_mb"] for r in records), default=None), 1),
        "peak_gpu_mb": rounded(max(gpu), 1) if gpu else None,
        **_edges(scores, durations),
        "f1_within_training_window": rounded(within.f1) if within.gt_calls + within.pred_calls else None,
        "f1_past_training_window": rounded(past.f1) if past.gt_calls + past.pred_calls else None,
        "fact_accuracy_across_reset": rounded(total.fact_accuracy_across_reset),
        "fact_accuracy_within_reset": rounded(total.fact_accuracy_within_reset),
        "calls_across_reset": total.across_reset,
        "streamed_s": rounded(streamed, 3), "coverage": rounded(streamed / sum(durations)) if sum(durations) else None,
        "wall_s": rounded(sum(r.get("wall_s", 0.0) for r in records), 3),
        "stopped": [{"stream": s.name, "at_s": r["stopped_at_s"], "reason": r["stop_reason"]}
                    for s, r in zip(streams, records, strict=True) if r.get("stop_reason")],
        "per_minute": minutes,
    }  # fmt: skip


def _stream_summary(score: StreamScore, record: dict[str, Any], duration: float) -> dict[str, Any]:
    lat = [c["latency_s"] for c in score.chunks if c["latency_s"] is not None]
    return {
        **score.tally().scores(), **_edges([score], [duration]),
        "duration_s": duration, "streamed_s": rounded(score.end - score.start, 3),
        "stopped_at_s": record.get("stopped_at_s"), "stop_reason": record.get("stop_reason"),
        "latency_ms_median": median_ms(lat), "peak_cache_tokens": max((c["cache_tokens"] or 0 for c in score.chunks),
                                                                 default=0),
        "peak_rss_mb": record.get("peak_rss_mb"), "wall_s": record.get("wall_s"),
        "score_slips": [dataclasses.asdict(slip) for slip in score.slips],
        "per_minute": per_minute([score]),
    }  # fmt: skip


def _target(description: str, value: float | None, threshold: float, streams: int) -> dict[str, Any]:
    return {"description": description, "target": f">= {threshold:g}", "value": value, "streams": streams,
            "pass": None if value is None else value >= threshold}


def check_targets(modes: dict[str, dict[str, Any]], scores: dict[str, list[StreamScore]],
                  durations: Sequence[float]) -> dict[str, dict[str, Any]]:
    """The issue's targets for the streaming mode (``pass`` is None when a target could not be measured)."""
    s = modes.get("streaming")
    worst = s["fact_accuracy_worst_short"] if s else None
    short = [sc for sc, d in zip(scores.get("streaming", []), durations, strict=False) if d < LONG_STREAM_S - EPS]
    short_f1 = rounded(Tally.pool(x.tally() for x in short).f1) if short else None
    return {
        "streaming_event_f1_short": _target(
            "streaming mode event F1 on the held-out streams shorter than 20 min (10-minute streams)",
            short_f1, 0.98, len(short)),
        "streaming_last_vs_first_10_min": _target(
            "streaming mode: last 10 minutes' F1 / first 10 minutes' F1 on streams of 20 min or more",
            s["last_vs_first_10_min"] if s else None, 0.97, s["long_streams_scored"] if s else 0),
        "streaming_fact_accuracy": _target(
            "streaming mode: accuracy of the announced score (the non-visible fact) over matched calls",
            s["fact_accuracy"] if s else None, 0.97, len(scores.get("streaming", []))),
        "streaming_fact_accuracy_worst_short": _target(
            "streaming mode: score accuracy of the worst held-out stream shorter than 20 min",
            worst["fact_accuracy"] if worst else None, 0.93, len(short)),
    }


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def findings(modes: dict[str, dict[str, Any]], settings: dict[str, Any]) -> list[str]:
    """One line per mode naming what the numbers show about it (the baselines' failure modes)."""
    window, reset = settings["training_window_s"], settings["reset_every"]
    out = []
    for mode, s in modes.items():
        pm = s["per_minute"]
        parts = [f"event F1 {_fmt(s['event_f1'])}, fact accuracy {_fmt(s['fact_accuracy'])}"]
        if s["fact_accuracy_worst"]:
            slips = s["score_slips"]
            causes = ", ".join(f"{n} {c.replace('_', ' ')}" for c, n in slips["by_cause"].items() if n)
            parts.append(f"worst stream {s['fact_accuracy_worst']['stream']} at "
                         f"{_fmt(s['fact_accuracy_worst']['fact_accuracy'])}; {slips['total']} score slip(s)"
                         + (f" ({causes}; {slips['by_source']['previous_text']} with the last score only in the "
                            "previous text)" if slips["total"] else ""))
        if len(pm) > 1:
            parts.append(f"median chunk latency {_fmt(pm[0]['latency_ms_median'], '.1f')} ms in minute 1 -> "
                         f"{_fmt(pm[-1]['latency_ms_median'], '.1f')} ms in minute {len(pm)}, cache up to "
                         f"{s['peak_cache_tokens']} tokens")
        parts.append(f"F1 {_fmt(s['f1_within_training_window'])} within the first {window:g} s vs "
                     f"{_fmt(s['f1_past_training_window'])} past them")
        parts.append(f"score accuracy {_fmt(s['fact_accuracy_across_reset'])} on the {s['calls_across_reset']} "
                     f"matched calls whose score reaches back before a sliding restart (every {reset:g} s) vs "
                     f"{_fmt(s['fact_accuracy_within_reset'])} on the others")
        if s["stopped"]:
            first = s["stopped"][0]
            parts.append(f"{len(s['stopped'])} stream(s) stopped ({first['reason']} at {first['at_s']:g} s in "
                         f"{first['stream']})")
        out.append(f"{mode}: " + "; ".join(parts))
    return out


def build_report(records: Sequence[dict[str, Any]], streams: Sequence[Stream], settings: dict[str, Any],
                 modes: Sequence[str]) -> dict[str, Any]:
    """The report JSON from the generation records (the ground truth is read from the streams' annotations)."""
    c = settings["chunk_seconds"]
    by_id = {r["id"]: r for r in records}
    gt = {s.name: chunk_texts(s.record, c, s.end) for s in streams}
    durations = [s.duration for s in streams]
    out_modes, scores = {}, {}
    for mode in modes:
        recs = [by_id[f"{mode}/{s.name}"] for s in streams]
        rounds = settings.get("text_rounds") if mode in RETIRING_MODES else None
        scores[mode] = [score_stream(gt[s.name], r["chunks"], start=s.start, chunk_seconds=c,
                                     tolerance_s=settings["tolerance_s"], reset_every=settings["reset_every"],
                                     text_rounds=rounds)
                        for s, r in zip(streams, recs, strict=True)]
        summary = summarize(scores[mode], recs, streams, settings["training_window_s"])
        summary["label"] = MODE_LABELS[mode]
        summary["per_stream"] = {s.name: _stream_summary(sc, r, s.duration)
                                 for s, sc, r in zip(streams, scores[mode], recs, strict=True)}
        out_modes[mode] = summary
    devices = sorted({r["device"] for r in records if r.get("device")})
    return {
        "model": settings["model"],
        "data": settings["data"],
        "streams": [{"name": s.name, "video": str(s.video), "duration_s": s.duration,
                     "gt_calls": sum(len(parse_commentary(t).calls) for t in gt[s.name])} for s in streams],
        "settings": settings,
        "modes": out_modes,
        "targets": check_targets(out_modes, scores, durations),
        "findings": findings(out_modes, settings),
        "meta": {"device": devices, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "notes": "event F1 pools calls over streams (micro); a stopped stream is scored over the part "
                          "streamed (see coverage and stopped); per_minute pools the streams reaching that minute"},
    }


def table_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for mode, s in report["modes"].items():
        rows.append({
            "mode": mode, "F1": s["event_f1"], "P": s["precision"], "R": s["recall"], "fact": s["fact_accuracy"],
            "fact(all)": s["fact_accuracy_all"],
            "fact worst": s["fact_accuracy_worst"]["fact_accuracy"] if s["fact_accuracy_worst"] else None,
            "slips": s["score_slips"]["total"], "empty": s["empty_share"], "garbled": s["garbled_share"],
            "F1 first10": s["first_10_min_f1"], "F1 last10": s["last_10_min_f1"],
            "ms med": s["latency_ms_median"], "ms p90": s["latency_ms_p90"], "cache max": s["peak_cache_tokens"],
            "RSS MB": s["peak_rss_mb"], "coverage": s["coverage"], "stopped": len(s["stopped"]),
        })  # fmt: skip
    for row in rows:
        for k, v in row.items():
            row[k] = "-" if v is None else v
    return rows


# ------------------------------------------------------------------------------------------------------------
# figure
# ------------------------------------------------------------------------------------------------------------


def write_figure(report: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Event F1, fact accuracy and median chunk latency per minute of stream time, one line per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    from streaming_vlm.eval.runner import save_figure

    fig, axes = plt.subplots(3, 1, figsize=(9, 9.5), sharex=True, constrained_layout=True)
    panels = (("event_f1", "event F1 (±1 s)"), ("fact_accuracy", "score (non-visible fact)\naccuracy"),
              ("latency_ms_median", "median chunk latency (ms), log"))
    for mode, s in report["modes"].items():
        color, label = MODE_COLORS.get(mode), MODE_LABELS.get(mode, mode)
        for ax, (key, _) in zip(axes, panels, strict=True):
            points = [(m["minute"] + 0.5, m[key]) for m in s["per_minute"] if m[key] is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", ms=3, lw=1.3, color=color, alpha=0.85, label=label)
        for stop in s["stopped"]:
            axes[0].axvline(stop["at_s"] / 60.0, color=color, ls=":", lw=1)
            axes[0].annotate(f"{mode} stopped: {stop['reason']}", (stop["at_s"] / 60.0, 0.05), rotation=90,
                             fontsize=7, color=color, va="bottom")
    for ax, (key, ylabel) in zip(axes, panels, strict=True):
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        if key == "latency_ms_median":
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
        else:
            ax.set_ylim(-0.02, 1.05)
    axes[0].legend(loc="lower left", fontsize=8, ncol=2)
    axes[-1].set_xlabel("stream time (min)")
    axes[-1].set_xlim(left=0)
    st = report["settings"]
    lengths = sorted({round(s["duration_s"] / 60.0, 1) for s in report["streams"]})
    fig.suptitle(f"Synthetic-world quality: {Path(str(report['model'])).name or report['model']}, "
                 f"{len(report['streams'])} held-out stream(s) of {', '.join(f'{x:g}' for x in lengths)} min\n"
                 f"{st['fps']:g} fps, {st['chunk_seconds']:g} s chunks, sliding reset every {st['reset_every']:g} s; "
                 f"per minute, pooled over streams", fontsize=10)
    return save_figure(fig, path)


# ------------------------------------------------------------------------------------------------------------
# streams and generation
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stream:
    """One held-out stream: ``name`` is ``<data dir name>/<video stem>`` (unique over every ``--data``)."""

    name: str
    video: Path
    record: StreamRecord
    """The ground truth."""
    end: float
    """Where it is streamed to (``video_end``, or earlier with ``--max-minutes``)."""

    @property
    def start(self) -> float:
        return self.record.video_start

    @property
    def duration(self) -> float:
        return round(self.end - self.start, 6)


def load_streams(data_dirs: Sequence[str], split: str, max_minutes: float | None = None) -> list[Stream]:
    """The streams of ``<dir>/<split>.jsonl`` for every dir; :class:`SynthError` on anything unusable."""
    from streaming_vlm.data.annotations import AnnotationError, iter_records

    streams = []
    for d in data_dirs:
        root = Path(d)
        if not root.is_dir():
            raise SynthError(f"--data {d}: not a directory (write one with `streaming-vlm synth {d} --split {split}`)")
        annotation = root / f"{split}.jsonl"
        if not annotation.is_file():
            raise SynthError(f"{annotation}: not found (write it with `streaming-vlm synth {d} --split {split}`)")
        for _, rec in iter_records(annotation):
            if isinstance(rec, AnnotationError):
                raise SynthError(str(rec))
            video = root / rec.video
            if not video.is_file():
                raise SynthError(f"{rec.source}: video not found: {video}")
            end = rec.video_end if max_minutes is None else min(rec.video_end, rec.video_start + 60.0 * max_minutes)
            streams.append(Stream(f"{root.resolve().name}/{Path(rec.video).stem}", video, rec, end))
    names = [s.name for s in streams]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise SynthError(f"two streams are named {dup!r}: give --data folders different names")
    if not streams:
        raise SynthError(f"no streams in {', '.join(f'{d}/{split}.jsonl' for d in data_dirs)}")
    return streams


def generate_stream(run: harness.Run, stream: Stream, mode: str, *, max_wall_s: float | None = None) -> dict[str, Any]:
    """Stream one stream in ``mode``: per-chunk records, peak memory, and where/why it stopped early."""
    from tqdm import tqdm

    from streaming_vlm.memory import PeakMemory, current_rss_mb, oom_errors, oom_message, peak_rss_mb

    config = run.stream_config(mode)
    device = run.model.loaded.device
    memory = PeakMemory(device)
    chunks: list[dict[str, Any]] = []
    stop: dict[str, Any] = {}
    total = math.ceil(stream.duration / config.chunk_seconds - 1e-9)
    t0 = time.perf_counter()
    span = run.stream(stream.video, config, start=stream.start, end=stream.end)
    try:
        for r in tqdm(span, total=total, desc=f"{mode} {stream.name}", unit="chunk", leave=False,
                      disable=not run.progress, mininterval=2.0):
            chunks.append({"t": round(r.start, 3), "text": r.text, "latency_s": round(r.latency_s, 6),
                           "cache_tokens": r.cache_tokens, "new_tokens": r.new_tokens,
                           "rss_mb": round(current_rss_mb(), 1)})
            if max_wall_s is not None and time.perf_counter() - t0 > max_wall_s and r.end < stream.end - EPS:
                stop = {"stopped_at_s": round(r.end, 3), "stop_reason": "time budget"}
                harness.log.warning("%s %s: stopped at %.0f s of %.0f s (time budget %g s)", mode, stream.name,
                                    r.end, stream.end, max_wall_s)
                break
    except oom_errors() as exc:
        at = chunks[-1]["t"] + config.chunk_seconds if chunks else stream.start
        stop = {"stopped_at_s": round(at, 3), "stop_reason": "out of memory", "error": oom_message(exc)}
        harness.log.warning("%s %s: out of memory at %.0f s", mode, stream.name, at)
    finally:
        span.close()
    reached = chunks[-1]["t"] + config.chunk_seconds if chunks else stream.start
    if not stop and reached < stream.end - EPS:
        stop = {"stopped_at_s": round(reached, 3), "stop_reason": "video ended"}
    record = {
        "mode": mode, "stream": stream.name, "duration_s": stream.duration, "chunks": chunks,
        "stopped_at_s": None, "stop_reason": None, **stop,
        "wall_s": round(time.perf_counter() - t0, 3), "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_gpu_mb": round(memory.peak_mb(), 1) if memory.cuda else None, "device": str(device),
    }  # fmt: skip
    if memory.cuda:
        import torch

        torch.cuda.empty_cache()
    return record


# ------------------------------------------------------------------------------------------------------------
# the benchmark
# ------------------------------------------------------------------------------------------------------------


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in Path(name).name or name) or "model"


class Synth(harness.Benchmark):
    """``streaming-vlm eval synth``: every (mode, held-out stream) is one item of the group ``synth``."""

    name = "synth"
    description = ("Long-stream quality on held-out synthetic-world streams, per mode: event F1 (calls matched "
                   "within ±1 s), accuracy of the running score (never drawn), empty and garbled chunks, per-chunk "
                   "latency and memory, per minute of stream time. Resumable; writes a report JSON and a figure.")
    settings_use = harness.SettingsUse(
        exclude=("total_pixels", "max_frames"),
        preset={"query": QUERY, "temperature": 0.0, "repetition_penalty": 1.0, "reset_every": 24.0})
    model_default = "demo"
    errors = (SynthError,)

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", nargs="+", required=True, metavar="DIR",
                       help="folders written by `streaming-vlm synth DIR --split test` (several allowed)")
        p.add_argument("--split", default="test", help="annotation file DIR/<split>.jsonl (default test)")
        p.add_argument("--modes", type=csv_choices(MODES, what="modes"), default=list(MODES),
                       help=f"comma-separated (default {','.join(MODES)})")
        p.add_argument("--report", default="figures/synth_quality.json", help="report JSON (default %(default)s)")
        p.add_argument("--figure", default=None, help="figure path (default: the report's path with .png; '' for none)")
        p.add_argument("--out", default=None,
                       help="folder of the per-chunk generation records, resumable (default results/synth/<model>)")
        p.add_argument("--max-wall-s", type=positive_float, default=None,
                       help="stop one (mode, stream) after this many wall seconds and record where (default: no limit)")
        p.add_argument("--max-minutes", type=positive_float, default=None,
                       help="stream only the first M minutes of each stream (default: all of it)")
        p.add_argument("--training-window", type=positive_float, default=24.0,
                       help="seconds of stream the model was trained on at once, for F1 within vs past it (default 24)")
        p.add_argument("--tolerance", type=non_negative_float, default=1.0,
                       help="seconds a call may be early or late (default 1)")

    def items(self, run: harness.Run) -> dict[str, list[dict]]:
        args = run.args
        self.streams = load_streams(args.data, args.split, args.max_minutes)
        self.report_settings = {
            **run.settings.checkpoint_record(), "model": args.model, "model_path": str(run.model_path),
            "data": [str(d) for d in args.data], "split": args.split, "chunk_seconds": run.settings.chunk_seconds,
            "reset_every": run.settings.reset_every, "seed": run.settings.seed, "max_minutes": args.max_minutes,
            "max_wall_s": args.max_wall_s, "tolerance_s": args.tolerance, "training_window_s": args.training_window,
            "modes": list(args.modes), "threads": args.threads,
        }  # fmt: skip
        return {"synth": [{"id": f"{m}/{s.name}", "mode": m, "stream": s.name} for m in args.modes
                          for s in self.streams]}

    def records_dir(self, run: harness.Run) -> Path:
        return Path(run.args.out or f"results/synth/{_safe(run.args.model)}")

    def resume_record(self, run: harness.Run) -> dict:
        keys = (*run.settings.checkpoint_record(), "model", "chunk_seconds", "reset_every", "seed",
                "max_minutes", "split")
        return {k: self.report_settings[k] for k in keys}

    def run_item(self, run: harness.Run, group: str, item: dict) -> dict:
        stream = next(s for s in self.streams if s.name == item["stream"])
        return generate_stream(run, stream, item["mode"], max_wall_s=run.args.max_wall_s)

    def score(self, run: harness.Run, records: dict[str, list[dict]] | None) -> dict:
        return build_report(records["synth"], self.streams, self.report_settings, run.args.modes)

    def results_path(self, run: harness.Run) -> Path:
        return Path(run.args.report)

    def figure_path(self, run: harness.Run) -> Path | None:
        figure = run.args.figure
        return Path(run.args.report).with_suffix(".png") if figure is None else (Path(figure) if figure else None)

    def figure(self, results: dict, path: Path) -> Path:
        return write_figure(results, path)

    def table(self, results: dict) -> str:
        lines = [format_table(table_rows(results))]
        for name, t in results["targets"].items():
            verdict = "not measured" if t["pass"] is None else ("PASS" if t["pass"] else "FAIL")
            lines.append(f"target {name} {t['target']}: {_fmt(t['value'])} ({t['streams']} stream(s)) {verdict}")
        return "\n".join(lines + results["findings"])


def main(argv: Sequence[str] | None = None) -> int:
    """``streaming-vlm eval synth ARGV``; the exit status."""
    return harness.run(Synth(), argv)
