"""Long-stream quality on the synthetic world: event F1, the non-visible fact, empty/garbled chunks, latency, memory.

The held-out streams (``streaming-vlm synth DIR --split test``: ``DIR/test.jsonl`` plus ``DIR/videos/*.mp4``) are
streamed start to end in each mode (``streaming``, ``full``, ``sliding`` without overlap, ``recompute``), one fresh
session per (mode, stream) item, through :func:`~streaming_vlm.eval.generate.stream_span`. Items run through
:func:`~streaming_vlm.eval.runner.run_items` (resumable, rank-sharded); each record keeps every chunk's stream time,
text, latency, cache size and resident memory, so the scores can be recomputed without generating again (the
model is loaded only when an item is missing).

Scoring reads the ground truth from the annotation file, never from seeds: the commentary of chunk ``[t, t+c)``
is the words whose end time is in ``(t, t+c]`` (the training rule of ``data/sample.py``), and both it and the
model's text are read with :func:`~streaming_vlm.world.script.parse_commentary`, the world's one grammar.

- **event matching**: a predicted call at time ``t`` matches a ground-truth call with the same label within
  ``--tolerance`` seconds (1), one to one, greedily by smallest ``|dt|`` (ties: earlier ground truth, then earlier
  prediction); precision, recall, F1 (1.0 when both sides are empty);
- **fact accuracy** (the running score, never drawn): over matched calls, the share whose announced score equals
  the ground truth (a missing score is wrong); ``fact_accuracy_all`` = correct scores / all ground-truth calls;
- **empty share**: ground-truth event seconds with no commentary at all; **garbled share**: chunks whose text is
  not empty and not a sequence of well-formed calls;
- **per-minute series** of all of these plus the median chunk latency and the largest cache, pooled over streams;
- **first / last 10 minutes' F1** on streams of 20 minutes or more, and their ratio;
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
import bisect
import dataclasses
import datetime
import functools
import json
import logging
import math
import os
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streaming_vlm.argtypes import non_negative_float, positive_float, positive_int
from streaming_vlm.world.script import GOAL, parse_commentary

GOAL_LABEL = " ".join(GOAL)

if TYPE_CHECKING:
    from streaming_vlm.data.annotations import StreamRecord

__all__ = [
    "MODES", "Stream", "StreamScore", "Tally", "TimedCall", "build_parser", "build_report", "chunk_texts",
    "load_streams", "main", "match_calls", "resolve_settings", "score_stream", "timed_calls", "write_figure",
]  # fmt: skip

log = logging.getLogger(__name__)

PROG = "streaming-vlm eval synth"
MODES = ("streaming", "full", "sliding", "recompute")
MODE_LABELS = {
    "streaming": "StreamingVLM",
    "full": "full attention",
    "sliding": "sliding window w/o overlap",
    "recompute": "sliding window w/ overlap (recompute)",
}
_COLORS = {"streaming": "tab:blue", "full": "tab:red", "sliding": "tab:green", "recompute": "tab:orange"}
LONG_STREAM_S = 20 * 60.0
"""Streams at least this long get first / last 10 minutes' F1."""
EDGE_S = 10 * 60.0
EPS = 1e-6


class SynthError(Exception):
    """Bad input to the benchmark (one line)."""


# ------------------------------------------------------------------------------------------------------------
# ground truth and predictions as timed calls
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimedCall:
    """One call at the start time ``t`` (s) of the chunk it was said in."""

    t: float
    label: str
    score: int | None


def chunk_texts(record: StreamRecord, chunk_seconds: float = 1.0, end: float | None = None) -> list[str]:
    """Ground-truth commentary of each chunk ``k`` (``[start + k c, start + (k+1) c)``) of a ``StreamRecord``.

    The words whose end time is in ``(t, t + c]``, joined by spaces (``ChunkPlan``'s rule); ``end`` cuts the
    stream earlier than ``record.video_end``.
    """
    start, stop = record.video_start, record.video_end if end is None else min(end, record.video_end)
    n = max(0, math.ceil((stop - start) / chunk_seconds - 1e-9))
    texts: list[list[str]] = [[] for _ in range(n)]
    for w in record.words:
        k = math.ceil((w.end - start) / chunk_seconds - 1e-9) - 1
        if 0 <= k < n and w.end <= stop + 1e-9:
            texts[k].append(w.text)
    return [" ".join(ws) for ws in texts]


def timed_calls(times: Sequence[float], texts: Sequence[str]) -> tuple[list[TimedCall], list[bool]]:
    """Every call in ``texts`` (one text per chunk, said at ``times``) and whether each chunk is garbled."""
    calls, garbled = [], []
    for t, text in zip(times, texts, strict=True):
        reading = parse_commentary(text)
        calls += [TimedCall(float(t), c.label, c.score) for c in reading.calls]
        garbled.append(reading.garbled)
    return calls, garbled


def match_calls(gt: Sequence[TimedCall], pred: Sequence[TimedCall], tolerance_s: float = 1.0) -> list[tuple[int, int]]:
    """One-to-one matches ``(gt index, pred index)``, sorted: same label, ``|dt| <= tolerance_s``, chosen greedily
    by smallest ``|dt|`` (ties: earlier ground truth, then earlier prediction)."""
    by_label: dict[str, list[tuple[float, int]]] = {}
    for j, p in enumerate(pred):
        by_label.setdefault(p.label, []).append((p.t, j))
    for group in by_label.values():
        group.sort()
    candidates = []
    for i, g in enumerate(gt):
        group = by_label.get(g.label, [])
        k = bisect.bisect_left(group, (g.t - tolerance_s - EPS, -1))
        while k < len(group) and group[k][0] <= g.t + tolerance_s + EPS:
            t, j = group[k]
            candidates.append((round(abs(t - g.t), 6), g.t, t, i, j))
            k += 1
    candidates.sort()
    used_g, used_p, pairs = set(), set(), []
    for _, _, _, i, j in candidates:
        if i not in used_g and j not in used_p:
            used_g.add(i)
            used_p.add(j)
            pairs.append((i, j))
    return sorted(pairs)


# ------------------------------------------------------------------------------------------------------------
# scores
# ------------------------------------------------------------------------------------------------------------


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


@dataclass
class Tally:
    """Additive counts over any set of seconds, streams or minutes; the scores are ratios of them."""

    gt_calls: int = 0
    pred_calls: int = 0
    matched_gt: int = 0
    """Ground-truth calls in the span that were matched (recall's numerator)."""
    matched_pred: int = 0
    """Predicted calls in the span that were matched (precision's numerator)."""
    fact_correct: int = 0
    """Matched ground-truth calls whose announced score is right."""
    chunks: int = 0
    garbled_chunks: int = 0
    event_seconds: int = 0
    """Chunks whose ground truth holds at least one call."""
    empty_event_seconds: int = 0
    across_reset: int = 0
    """Matched ground-truth calls whose score reaches back before the last sliding reset."""
    across_reset_correct: int = 0

    def __add__(self, other: Tally) -> Tally:
        return Tally(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other), strict=True)))

    @property
    def precision(self) -> float:
        return self.matched_pred / self.pred_calls if self.pred_calls else 1.0

    @property
    def recall(self) -> float:
        return self.matched_gt / self.gt_calls if self.gt_calls else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r > 0 else 0.0

    @property
    def fact_accuracy(self) -> float | None:
        return _ratio(self.fact_correct, self.matched_gt)

    @property
    def fact_accuracy_all(self) -> float | None:
        return _ratio(self.fact_correct, self.gt_calls)

    @property
    def empty_share(self) -> float | None:
        return _ratio(self.empty_event_seconds, self.event_seconds)

    @property
    def garbled_share(self) -> float | None:
        return _ratio(self.garbled_chunks, self.chunks)

    @property
    def fact_accuracy_across_reset(self) -> float | None:
        return _ratio(self.across_reset_correct, self.across_reset)

    @property
    def fact_accuracy_within_reset(self) -> float | None:
        return _ratio(self.fact_correct - self.across_reset_correct, self.matched_gt - self.across_reset)

    def scores(self) -> dict[str, Any]:
        return {
            "event_f1": _r(self.f1), "precision": _r(self.precision), "recall": _r(self.recall),
            "fact_accuracy": _r(self.fact_accuracy), "fact_accuracy_all": _r(self.fact_accuracy_all),
            "empty_share": _r(self.empty_share), "garbled_share": _r(self.garbled_share),
            "gt_calls": self.gt_calls, "pred_calls": self.pred_calls, "matched": self.matched_gt,
        }  # fmt: skip


@dataclass
class StreamScore:
    """One (mode, stream) scored: every call and chunk with its time, so any span can be tallied."""

    start: float
    end: float
    """End of the part that was streamed (and scored)."""
    gt: list[tuple[float, bool, bool, bool]] = field(default_factory=list)
    """Per ground-truth call: (t, matched, score right, score reaches back before a sliding reset)."""
    pred: list[tuple[float, bool]] = field(default_factory=list)
    """Per predicted call: (t, matched)."""
    chunks: list[dict[str, Any]] = field(default_factory=list)
    """Per chunk: t, garbled, event (ground truth has a call), empty (no commentary), latency_s, cache_tokens,
    rss_mb."""

    def tally(self, t0: float = -math.inf, t1: float = math.inf) -> Tally:
        """Counts of the calls and chunks with ``t0 <= t < t1``."""
        n = Tally()
        for t, matched, right, across in self.gt:
            if t0 <= t < t1:
                n.gt_calls += 1
                n.matched_gt += matched
                n.fact_correct += matched and right
                n.across_reset += matched and across
                n.across_reset_correct += matched and across and right
        for t, matched in self.pred:
            if t0 <= t < t1:
                n.pred_calls += 1
                n.matched_pred += matched
        for c in self.chunks:
            if t0 <= c["t"] < t1:
                n.chunks += 1
                n.garbled_chunks += c["garbled"]
                n.event_seconds += c["event"]
                n.empty_event_seconds += c["event"] and c["empty"]
        return n

    def minutes(self) -> range:
        """Indexes of the minutes (from the stream start) that the streamed part touches."""
        return range(max(0, math.ceil((self.end - self.start) / 60.0 - 1e-9)))


def reset_starts(start: float, end: float, chunk_seconds: float, reset_every: float) -> list[float]:
    """Where the sliding mode's context restarts: the first chunk at least ``reset_every`` s after the last
    restart (the engine's rule), from ``start`` on."""
    starts, k = [start], 1
    while start + k * chunk_seconds < end - EPS:
        t = start + k * chunk_seconds
        if t - starts[-1] >= reset_every - 1e-9:
            starts.append(t)
        k += 1
    return starts


def _across_reset(gt: Sequence[TimedCall], starts: Sequence[float]) -> list[bool]:
    """Whether each ground-truth call's score reaches back before the last context restart (``starts``).

    A score ``n`` says ``n`` goals since the last whistle; when fewer than ``n`` goal calls happened since the
    restart, some of them are not in the restarted context, so the score cannot be read from it.
    """
    out, goals, window = [], 0, None
    for call in gt:  # in time order
        w = bisect.bisect_right(starts, call.t + EPS) - 1
        if w != window:
            window, goals = w, 0
        goals += call.label == GOAL_LABEL
        out.append(bool(starts) and call.score is not None and call.score > goals)
    return out


def score_stream(
    gt_texts: Sequence[str],
    chunks: Sequence[dict[str, Any]],
    *,
    start: float = 0.0,
    chunk_seconds: float = 1.0,
    tolerance_s: float = 1.0,
    reset_every: float | None = None,
) -> StreamScore:
    """Score one stream's generated ``chunks`` (``t``, ``text``, optional ``latency_s``/``cache_tokens``/``rss_mb``)
    against its ground-truth chunk texts (:func:`chunk_texts`, chunk ``k`` at ``start + k * chunk_seconds``).

    Only the streamed part is scored: ground truth after the last generated chunk is left out. ``reset_every``
    marks the calls whose score reaches back before a sliding-mode restart (None: no call is marked).
    """
    end = max((c["t"] for c in chunks), default=start - chunk_seconds) + chunk_seconds
    n = min(len(gt_texts), max(0, math.ceil((end - start) / chunk_seconds - 1e-9)))
    gt_times = [start + k * chunk_seconds for k in range(n)]
    gt, _ = timed_calls(gt_times, gt_texts[:n])
    event_chunks = {round((g.t - start) / chunk_seconds) for g in gt}
    pred, garbled = timed_calls([c["t"] for c in chunks], [c["text"] for c in chunks])
    pairs = match_calls(gt, pred, tolerance_s)
    g2p = dict(pairs)
    matched_pred = {j for _, j in pairs}
    starts = reset_starts(start, end, chunk_seconds, reset_every) if reset_every else []
    across = _across_reset(gt, starts)
    score = StreamScore(start, end)
    for i, g in enumerate(gt):
        j = g2p.get(i)
        right = j is not None and pred[j].score is not None and pred[j].score == g.score
        score.gt.append((g.t, j is not None, right, across[i]))
    score.pred = [(p.t, j in matched_pred) for j, p in enumerate(pred)]
    for c, bad in zip(chunks, garbled, strict=True):
        score.chunks.append({
            "t": c["t"], "garbled": bad, "event": round((c["t"] - start) / chunk_seconds) in event_chunks,
            "empty": not c["text"].replace("...", " ").strip(),
            "latency_s": c.get("latency_s"), "cache_tokens": c.get("cache_tokens"), "rss_mb": c.get("rss_mb"),
        })  # fmt: skip
    return score


# ------------------------------------------------------------------------------------------------------------
# aggregation
# ------------------------------------------------------------------------------------------------------------


def _r(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(float(x), digits)


def _percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in [0, 100])."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100.0 * len(ordered)) - 1))]


def _sum(tallies: Iterable[Tally]) -> Tally:
    return sum(tallies, Tally())


def _median_ms(seconds: Sequence[float]) -> float | None:
    return round(1000.0 * statistics.median(seconds), 3) if seconds else None


def _p90_ms(seconds: Sequence[float]) -> float | None:
    p = _percentile(seconds, 90)
    return None if p is None else round(1000.0 * p, 3)


def per_minute(scores: Sequence[StreamScore]) -> list[dict[str, Any]]:
    """Scores per minute of stream time, pooled over the streams that reach that minute."""
    minutes = max((len(s.minutes()) for s in scores), default=0)
    out = []
    for m in range(minutes):
        present = [s for s in scores if m < len(s.minutes())]
        spans = [(s, s.start + 60.0 * m, s.start + 60.0 * (m + 1)) for s in present]
        tally = _sum(s.tally(a, b) for s, a, b in spans)
        chunks = [c for s, a, b in spans for c in s.chunks if a <= c["t"] < b]
        lat = [c["latency_s"] for c in chunks if c["latency_s"] is not None]
        cache = [c["cache_tokens"] for c in chunks if c["cache_tokens"] is not None]
        rss = [c["rss_mb"] for c in chunks if c["rss_mb"] is not None]
        out.append({
            "minute": m, "streams": len(present), **tally.scores(),
            "latency_ms_median": _median_ms(lat), "cache_tokens_max": max(cache, default=None),
            "rss_mb_max": _r(max(rss, default=None), 1),
        })  # fmt: skip
    return out


def _edges(scores: Sequence[StreamScore], durations: Sequence[float]) -> dict[str, Any]:
    """First / last 10 minutes' F1 over the streams of 20 minutes or more that were streamed to their end."""
    long = [(s, d) for s, d in zip(scores, durations, strict=True) if d >= LONG_STREAM_S - EPS]
    whole = [(s, d) for s, d in long if s.end >= s.start + d - EPS]
    first = _sum(s.tally(s.start, s.start + EDGE_S) for s, _ in whole)
    last = _sum(s.tally(s.start + d - EDGE_S, s.start + d) for s, d in whole)
    f_first, f_last = (first.f1, last.f1) if whole else (None, None)
    return {
        "first_10_min_f1": _r(f_first), "last_10_min_f1": _r(f_last),
        "last_vs_first_10_min": _r(f_last / f_first) if whole and f_first else None,
        "long_streams": len(long), "long_streams_scored": len(whole),
    }  # fmt: skip


def summarize(scores: Sequence[StreamScore], records: Sequence[dict[str, Any]], streams: Sequence[Stream],
              training_window_s: float) -> dict[str, Any]:
    """One mode over its streams (``scores``, generation ``records`` and ``streams`` in the same order): pooled
    scores, edges, failure-mode numbers and the per-minute series."""
    durations = [s.duration for s in streams]
    total = _sum(s.tally() for s in scores)
    chunks = [c for s in scores for c in s.chunks]
    lat = [c["latency_s"] for c in chunks if c["latency_s"] is not None]
    minutes = per_minute(scores)
    lat_minutes = [m["latency_ms_median"] for m in minutes if m["latency_ms_median"] is not None]
    within = _sum(s.tally(s.start, s.start + training_window_s) for s in scores)
    past = _sum(s.tally(s.start + training_window_s) for s in scores)
    streamed = sum(s.end - s.start for s in scores)
    gpu = [r["peak_gpu_mb"] for r in records if r.get("peak_gpu_mb") is not None]
    return {
        **total.scores(),
        "latency_ms_median": _median_ms(lat), "latency_ms_p90": _p90_ms(lat),
        "latency_growth": _r(lat_minutes[-1] / lat_minutes[0]) if len(lat_minutes) > 1 and lat_minutes[0] else None,
        "peak_cache_tokens": max((c["cache_tokens"] or 0 for c in chunks), default=0),
        "peak_rss_mb": _r(max((r["peak_rss_mb"] for r in records), default=None), 1),
        "peak_gpu_mb": _r(max(gpu), 1) if gpu else None,
        **_edges(scores, durations),
        "f1_within_training_window": _r(within.f1) if within.gt_calls + within.pred_calls else None,
        "f1_past_training_window": _r(past.f1) if past.gt_calls + past.pred_calls else None,
        "fact_accuracy_across_reset": _r(total.fact_accuracy_across_reset),
        "fact_accuracy_within_reset": _r(total.fact_accuracy_within_reset),
        "calls_across_reset": total.across_reset,
        "streamed_s": _r(streamed, 3), "coverage": _r(streamed / sum(durations)) if sum(durations) else None,
        "wall_s": _r(sum(r.get("wall_s", 0.0) for r in records), 3),
        "stopped": [{"stream": s.name, "at_s": r["stopped_at_s"], "reason": r["stop_reason"]}
                    for s, r in zip(streams, records, strict=True) if r.get("stop_reason")],
        "per_minute": minutes,
    }  # fmt: skip


def _stream_summary(score: StreamScore, record: dict[str, Any], duration: float) -> dict[str, Any]:
    lat = [c["latency_s"] for c in score.chunks if c["latency_s"] is not None]
    return {
        **score.tally().scores(), **_edges([score], [duration]),
        "duration_s": duration, "streamed_s": _r(score.end - score.start, 3),
        "stopped_at_s": record.get("stopped_at_s"), "stop_reason": record.get("stop_reason"),
        "latency_ms_median": _median_ms(lat), "peak_cache_tokens": max((c["cache_tokens"] or 0 for c in score.chunks),
                                                                 default=0),
        "peak_rss_mb": record.get("peak_rss_mb"), "wall_s": record.get("wall_s"),
        "per_minute": per_minute([score]),
    }  # fmt: skip


def _target(description: str, value: float | None, threshold: float, streams: int) -> dict[str, Any]:
    return {"description": description, "target": f">= {threshold:g}", "value": value, "streams": streams,
            "pass": None if value is None else value >= threshold}


def check_targets(modes: dict[str, dict[str, Any]], scores: dict[str, list[StreamScore]],
                  durations: Sequence[float]) -> dict[str, dict[str, Any]]:
    """The issue's targets for the streaming mode (``pass`` is None when a target could not be measured)."""
    s = modes.get("streaming")
    short = [sc for sc, d in zip(scores.get("streaming", []), durations, strict=False) if d < LONG_STREAM_S - EPS]
    short_f1 = _r(_sum(x.tally() for x in short).f1) if short else None
    return {
        "streaming_event_f1_short": _target(
            "streaming mode event F1 on the held-out streams shorter than 20 min (10-minute streams)",
            short_f1, 0.9, len(short)),
        "streaming_last_vs_first_10_min": _target(
            "streaming mode: last 10 minutes' F1 / first 10 minutes' F1 on streams of 20 min or more",
            s["last_vs_first_10_min"] if s else None, 0.95, s["long_streams_scored"] if s else 0),
        "streaming_fact_accuracy": _target(
            "streaming mode: accuracy of the announced score (the non-visible fact) over matched calls",
            s["fact_accuracy"] if s else None, 0.9, len(scores.get("streaming", []))),
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
        scores[mode] = [score_stream(gt[s.name], r["chunks"], start=s.start, chunk_seconds=c,
                                     tolerance_s=settings["tolerance_s"], reset_every=settings["reset_every"])
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
            "fact(all)": s["fact_accuracy_all"], "empty": s["empty_share"], "garbled": s["garbled_share"],
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

    from streaming_vlm.bench import save_figure

    fig, axes = plt.subplots(3, 1, figsize=(9, 9.5), sharex=True, constrained_layout=True)
    panels = (("event_f1", "event F1 (±1 s)"), ("fact_accuracy", "score (non-visible fact)\naccuracy"),
              ("latency_ms_median", "median chunk latency (ms), log"))
    for mode, s in report["modes"].items():
        color, label = _COLORS.get(mode), MODE_LABELS.get(mode, mode)
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


def _oom_errors() -> tuple[type[BaseException], ...]:
    import torch

    cuda_oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (MemoryError, cuda_oom) if cuda_oom is not None else (MemoryError,)


def generate_stream(model, stream: Stream, config, *, max_wall_s: float | None = None,
                    progress: bool = False) -> dict[str, Any]:
    """Stream one stream in ``config.mode``: per-chunk records, peak memory, and where/why it stopped early."""
    import torch
    from tqdm import tqdm

    from streaming_vlm import bench
    from streaming_vlm.eval.generate import stream_span

    device = model.loaded.device
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    bench.reset_peak_rss()
    chunks: list[dict[str, Any]] = []
    stop: dict[str, Any] = {}
    total = math.ceil(stream.duration / config.chunk_seconds - 1e-9)
    t0 = time.perf_counter()
    span = stream_span(model, stream.video, config, start=stream.start, end=stream.end)
    try:
        for r in tqdm(span, total=total, desc=f"{config.mode} {stream.name}", unit="chunk", leave=False,
                      disable=not progress, mininterval=2.0):
            chunks.append({"t": round(r.start, 3), "text": r.text, "latency_s": round(r.latency_s, 6),
                           "cache_tokens": r.cache_tokens, "new_tokens": r.new_tokens,
                           "rss_mb": round(bench.current_rss_mb(), 1)})
            if max_wall_s is not None and time.perf_counter() - t0 > max_wall_s and r.end < stream.end - EPS:
                stop = {"stopped_at_s": round(r.end, 3), "stop_reason": "time budget"}
                log.warning("%s %s: stopped at %.0f s of %.0f s (time budget %g s)", config.mode, stream.name,
                            r.end, stream.end, max_wall_s)
                break
    except _oom_errors() as exc:
        at = chunks[-1]["t"] + config.chunk_seconds if chunks else stream.start
        stop = {"stopped_at_s": round(at, 3), "stop_reason": "out of memory",
                "error": f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]}
        log.warning("%s %s: out of memory at %.0f s", config.mode, stream.name, at)
    finally:
        span.close()
    reached = chunks[-1]["t"] + config.chunk_seconds if chunks else stream.start
    if not stop and reached < stream.end - EPS:
        stop = {"stopped_at_s": round(reached, 3), "stop_reason": "video ended"}
    record = {
        "mode": config.mode, "stream": stream.name, "duration_s": stream.duration, "chunks": chunks,
        "stopped_at_s": None, "stop_reason": None, **stop,
        "wall_s": round(time.perf_counter() - t0, 3), "peak_rss_mb": round(bench.peak_rss_mb(), 1),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if cuda else None,
        "device": str(device),
    }  # fmt: skip
    if cuda:
        torch.cuda.empty_cache()
    return record


# ------------------------------------------------------------------------------------------------------------
# settings: flags, then the checkpoint's streaming_vlm.json, then the benchmark's defaults
# ------------------------------------------------------------------------------------------------------------

STREAM_KEYS = ("min_pixels", "max_pixels", "fps", "query", "system_prompt", "vision_window", "text_rounds",
               "text_sink", "text_window", "max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty")


def benchmark_defaults() -> dict[str, Any]:
    """The engine's defaults, except greedy decoding and no repetition penalty: the scores count exact calls
    and the world's grammar repeats its words by design."""
    from streaming_vlm.engine import StreamConfig
    from streaming_vlm.world.script import QUERY

    engine = StreamConfig()
    return {
        "min_pixels": 100 * 28 * 28, "max_pixels": 768 * 28 * 28, "fps": engine.fps, "query": QUERY,
        "system_prompt": engine.system_prompt, "vision_window": engine.vision_window,
        "text_rounds": engine.text_rounds, "text_sink": engine.text_sink, "text_window": engine.text_window,
        "max_new_tokens": engine.sampling.max_new_tokens, "temperature": 0.0, "top_p": None, "top_k": None,
        "repetition_penalty": 1.0,
    }  # fmt: skip


def resolve_settings(flags: dict[str, Any], checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Per stream option: the flag when given (not None), else the checkpoint's value, else the default.
    A window flag given as ``"unlimited"`` becomes None."""
    defaults = benchmark_defaults()
    out = {}
    for key in STREAM_KEYS:
        value = flags.get(key)
        out[key] = value if value is not None else checkpoint.get(key, defaults[key])
        if out[key] == "unlimited":
            out[key] = None
    return out


def _stream_config(settings: dict[str, Any]):
    from streaming_vlm.engine import StreamConfig
    from streaming_vlm.sampling import SamplingConfig

    sampling = SamplingConfig(temperature=settings["temperature"], top_p=settings["top_p"], top_k=settings["top_k"],
                              repetition_penalty=settings["repetition_penalty"],
                              max_new_tokens=settings["max_new_tokens"])
    return StreamConfig(query=settings["query"], system_prompt=settings["system_prompt"],
                        chunk_seconds=settings["chunk_seconds"], fps=settings["fps"],
                        vision_window=settings["vision_window"], text_rounds=settings["text_rounds"],
                        text_sink=settings["text_sink"], text_window=settings["text_window"],
                        reset_every=settings["reset_every"], sampling=sampling, seed=settings["seed"])


_RESUME_KEYS = (*STREAM_KEYS, "model", "chunk_seconds", "reset_every", "seed", "max_minutes", "split")
"""Settings that change what is generated: records made with others cannot be mixed in."""


def _check_resume(out: Path, settings: dict[str, Any]) -> None:
    path = out / "settings.json"
    current = {k: settings[k] for k in _RESUME_KEYS}
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        diff = [k for k in _RESUME_KEYS if saved.get(k) != current[k]]
        if diff:
            k = diff[0]
            raise SynthError(f"{out} holds records made with {k}={saved.get(k)!r}, not {current[k]!r}: "
                             f"use another --out or delete it")
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(current, indent=1) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------------------------
# entry point
# ------------------------------------------------------------------------------------------------------------


def _window(text: str) -> int | str:
    if text == "unlimited":
        return text
    return positive_int(text)


def _modes(text: str) -> list[str]:
    modes = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise argparse.ArgumentTypeError(f"modes must be a comma-separated subset of {','.join(MODES)}, got {text!r}")
    return modes


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The ``streaming-vlm eval synth`` options (added to ``parser`` when given)."""
    p = parser or argparse.ArgumentParser(
        prog=PROG, description="Long-stream quality on held-out synthetic-world streams, per mode: event F1 "
        "(calls matched within ±1 s), accuracy of the running score (never drawn), empty and garbled chunks, "
        "per-chunk latency and memory, per minute of stream time. Resumable; writes a report JSON and a figure.")
    p.add_argument("--data", nargs="+", required=True, metavar="DIR",
                   help="folders written by `streaming-vlm synth DIR --split test` (several allowed)")
    p.add_argument("--split", default="test", help="annotation file DIR/<split>.jsonl (default test)")
    p.add_argument("--model", default="demo", help="checkpoint directory, hub id, 'demo' or 'tiny' (default demo)")
    p.add_argument("--modes", type=_modes, default=list(MODES), help=f"comma-separated (default {','.join(MODES)})")
    p.add_argument("--report", default="figures/synth_quality.json", help="report JSON (default %(default)s)")
    p.add_argument("--figure", default=None, help="figure path (default: the report's path with .png; '' for none)")
    p.add_argument("--out", default=None,
                   help="folder of the per-chunk generation records, resumable (default results/synth/<model>)")
    p.add_argument("--max-wall-s", type=positive_float, default=None,
                   help="stop one (mode, stream) after this many wall seconds and record where (default: no limit)")
    p.add_argument("--max-minutes", type=positive_float, default=None,
                   help="stream only the first M minutes of each stream (default: all of it)")
    p.add_argument("--reset-every", type=positive_float, default=24.0,
                   help="sliding mode: restart the context every S seconds (default 24, the training window)")
    p.add_argument("--training-window", type=positive_float, default=24.0,
                   help="seconds of stream the model was trained on at once, for F1 within vs past it (default 24)")
    p.add_argument("--tolerance", type=non_negative_float, default=1.0,
                   help="seconds a call may be early or late (default 1)")
    g = p.add_argument_group("stream settings (default: the checkpoint's streaming_vlm.json, else the benchmark's)")
    g.add_argument("--fps", type=positive_float, default=None, help="frames per second (default 2)")
    g.add_argument("--chunk-seconds", type=positive_float, default=1.0, help="seconds per chunk (default 1)")
    g.add_argument("--min-pixels", type=positive_int, default=None, help="per frame (default 100*28*28)")
    g.add_argument("--max-pixels", type=positive_int, default=None, help="per frame (default 768*28*28)")
    g.add_argument("--query", default=None, help="instruction with the first chunk (default: the world's)")
    g.add_argument("--system-prompt", default=None, help="system prompt (default: the engine's)")
    for name, what in (("vision-window", "chunks whose vision tokens are kept (16)"),
                       ("text-rounds", "assistant turns kept before retiring into previous text (16)"),
                       ("text-sink", "first previous-text tokens kept (512)"),
                       ("text-window", "last previous-text tokens kept (512)")):
        g.add_argument(f"--{name}", type=_window, default=None, help=f"{what}; 'unlimited' for no bound")
    g.add_argument("--max-new-tokens", type=positive_int, default=None, help="tokens per chunk at most (20)")
    g.add_argument("--temperature", type=float, default=None, help="0 = greedy (default 0)")
    g.add_argument("--top-p", type=float, default=None, help="default: the checkpoint's generation config")
    g.add_argument("--top-k", type=int, default=None, help="default: the checkpoint's generation config")
    g.add_argument("--repetition-penalty", type=positive_float, default=None, help="default 1.0 (off)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK under torchrun), cuda, cpu")
    p.add_argument("--dtype", default="auto", help="auto, bf16, fp16, fp32")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (default: torch's; on a busy CPU, 1 gives steadier latencies)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _fail(message: str) -> int:
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in Path(name).name or name) or "model"


def run(args: argparse.Namespace) -> int:
    from streaming_vlm.eval.generate import load_eval_model
    from streaming_vlm.eval.runner import format_table, rank_and_world, run_items, write_results
    from streaming_vlm.infer import resolve_model_path
    from streaming_vlm.models import stream_defaults

    streams = load_streams(args.data, args.split, args.max_minutes)
    path = resolve_model_path(args.model)
    checkpoint = stream_defaults(path) if Path(path).is_dir() else {}
    settings = resolve_settings({k: getattr(args, k) for k in STREAM_KEYS}, checkpoint)
    settings.update(model=args.model, model_path=str(path), data=[str(d) for d in args.data], split=args.split,
                    chunk_seconds=args.chunk_seconds, reset_every=args.reset_every, seed=args.seed,
                    max_minutes=args.max_minutes, max_wall_s=args.max_wall_s, tolerance_s=args.tolerance,
                    training_window_s=args.training_window, modes=list(args.modes), threads=args.threads)
    try:
        base = _stream_config(settings)
    except ValueError as exc:
        raise SynthError(str(exc)) from None
    out = Path(args.out or f"results/synth/{_safe(args.model)}")
    rank, _ = rank_and_world()
    if rank == 0:
        _check_resume(out, settings)

    @functools.cache
    def model():  # loaded on the first item that is not done yet
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        loaded = load_eval_model(path, device=args.device, dtype=args.dtype,
                                 min_pixels=min(settings["min_pixels"], settings["max_pixels"]),
                                 max_pixels=settings["max_pixels"])
        defaults = loaded.loaded.generation_defaults
        sampling = dataclasses.replace(
            base.sampling, top_p=settings["top_p"] if settings["top_p"] is not None else defaults.get("top_p"),
            top_k=settings["top_k"] if settings["top_k"] is not None else defaults.get("top_k"))
        return loaded, dataclasses.replace(base, sampling=sampling)

    by_name = {s.name: s for s in streams}

    def generate(item: dict) -> dict:
        loaded, config = model()
        return generate_stream(loaded, by_name[item["stream"]], dataclasses.replace(config, mode=item["mode"]),
                               max_wall_s=args.max_wall_s, progress=not args.quiet)

    items = [{"id": f"{m}/{s.name}", "mode": m, "stream": s.name} for m in args.modes for s in streams]
    records = run_items("synth", items, generate, out, progress=not args.quiet)
    if records is None:
        return 0
    report = build_report(records, streams, settings, args.modes)
    print(f"wrote {write_results(args.report, report)}")
    figure = Path(args.report).with_suffix(".png") if args.figure is None else args.figure
    if figure:
        print(f"wrote {write_figure(report, figure)}")
    print(format_table(table_rows(report)))
    for name, t in report["targets"].items():
        verdict = "not measured" if t["pass"] is None else ("PASS" if t["pass"] else "FAIL")
        print(f"target {name} {t['target']}: {_fmt(t['value'])} ({t['streams']} stream(s)) {verdict}")
    for line in report["findings"]:
        print(line)
    return 0


def main(argv: list[str] | argparse.Namespace | None = None) -> int:
    args = argv if isinstance(argv, argparse.Namespace) else build_parser().parse_args(argv)
    from streaming_vlm.models import ModelLoadError
    from streaming_vlm.video import VideoError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        return run(args)
    except (SynthError, VideoError, ModelLoadError, OSError, ValueError) as exc:
        return _fail(str(exc))


if __name__ == "__main__":
    sys.exit(main())
