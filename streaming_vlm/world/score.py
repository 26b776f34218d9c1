"""Scoring of the synthetic world's commentary: calls matched in time, the running score, empty and garbled chunks.

The ground truth is read from a stream's annotation (a ``StreamRecord``), never from seeds: the commentary of chunk
``[t, t+c)`` is the words whose end time is in ``(t, t+c]`` (the training rule of ``data/sample.py``), and both it
and a model's text are read with :func:`~streaming_vlm.world.script.parse_commentary`, the world's one grammar.

- **event matching** (:func:`match_calls`): a predicted call at time ``t`` matches a ground-truth call with the same
  label within a tolerance (1 s), one to one, greedily by smallest ``|dt|`` (ties: earlier ground truth, then
  earlier prediction); precision, recall, F1 (1.0 when both sides are empty);
- **fact accuracy** (the running score, never drawn): over matched calls, the share whose announced score equals the
  ground truth (a missing score is wrong); ``fact_accuracy_all`` = correct scores / all ground-truth calls;
- **empty share**: ground-truth event seconds with no commentary at all; **garbled share**: chunks whose text is not
  empty and not a sequence of well-formed calls;
- calls whose score reaches back before a sliding-mode context restart (:func:`reset_starts`);
- **score slips** (:class:`Slip`): each wrong score that follows a right one (nothing corrects a score until the next
  whistle, so the calls after a slip usually carry it on), by cause (a missed or extra increment, a missed reset)
  and by where the last score was (in the verbatim turns, or only in the previous text);
- :func:`per_minute`: all of these per minute of stream time, with the median chunk latency and the largest cache,
  pooled over streams.

:func:`score_stream` scores one stream into a :class:`StreamScore` (every call and chunk with its time), which
:meth:`StreamScore.tally` counts over any span into an additive :class:`Tally`. ``eval/synth.py`` runs the model and
reports; this module knows nothing about models.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streaming_vlm.settings import DEFAULTS
from streaming_vlm.world.script import GOAL, parse_commentary

if TYPE_CHECKING:
    from streaming_vlm.data.annotations import StreamRecord

__all__ = [
    "SLIP_CAUSES", "SLIP_SOURCES", "Slip", "StreamScore", "Tally", "TimedCall", "chunk_texts", "count_slips",
    "match_calls", "median_ms", "per_minute", "reset_starts", "rounded", "score_stream", "timed_calls",
]  # fmt: skip

GOAL_LABEL = " ".join(GOAL)
EPS = 1e-6


# ------------------------------------------------------------------------------------------------------------
# ground truth and predictions as timed calls
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimedCall:
    """One call at the start time ``t`` (s) of the chunk it was said in."""

    t: float
    label: str
    score: int | None


def chunk_texts(record: StreamRecord, chunk_seconds: float = DEFAULTS.chunk_seconds, end: float | None = None
                ) -> list[str]:
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

    @staticmethod
    def pool(tallies: Iterable[Tally]) -> Tally:
        """The sum of ``tallies`` (an empty one for none)."""
        return sum(tallies, Tally())

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
            "event_f1": rounded(self.f1), "precision": rounded(self.precision), "recall": rounded(self.recall),
            "fact_accuracy": rounded(self.fact_accuracy), "fact_accuracy_all": rounded(self.fact_accuracy_all),
            "empty_share": rounded(self.empty_share), "garbled_share": rounded(self.garbled_share),
            "gt_calls": self.gt_calls, "pred_calls": self.pred_calls, "matched": self.matched_gt,
        }  # fmt: skip


SLIP_CAUSES = ("missed_increment", "extra_increment", "missed_reset", "other")
SLIP_SOURCES = ("verbatim", "previous_text")


@dataclass(frozen=True)
class Slip:
    """A wrong score that starts a run of them: a matched call whose score is wrong while the matched call before it
    (if any) had its score right."""

    t: float
    label: str
    truth: int | None
    said: int | None
    """The score said (None: none)."""
    cause: str
    """``missed_increment``: a goal, and the previous call's score said again; ``extra_increment``: no goal and no
    whistle, and the previous call's score + 1; ``missed_reset``: a whistle, and a score other than zero; ``other``:
    anything else (a missing score, a score from elsewhere). The previous call is the ground truth's (score 0 before
    the first)."""
    source: str
    """``previous_text``: the ground truth's previous call is ``text_rounds`` s or more back, so a streaming cache
    keeps it only in its previous text; ``verbatim``: it is among the turns kept verbatim (or no rounds retire)."""


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
    slips: list[Slip] = field(default_factory=list)
    """The score slips, in time order."""

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


def _slip(call: TimedCall, said: int | None, before: TimedCall | None, text_rounds: int | None,
          chunk_seconds: float) -> Slip:
    previous = before.score if before is not None and before.score is not None else 0
    if call.label == "whistle":
        cause = "missed_reset" if said is not None else "other"
    elif call.label == GOAL_LABEL:
        cause = "missed_increment" if said == previous else "other"
    else:
        cause = "extra_increment" if said == previous + 1 else "other"
    far = (before is not None and text_rounds is not None
           and call.t - before.t >= text_rounds * chunk_seconds - EPS)
    return Slip(call.t, call.label, call.score, said, cause, "previous_text" if far else "verbatim")


def score_stream(
    gt_texts: Sequence[str],
    chunks: Sequence[dict[str, Any]],
    *,
    start: float = 0.0,
    chunk_seconds: float = DEFAULTS.chunk_seconds,
    tolerance_s: float = 1.0,
    reset_every: float | None = None,
    text_rounds: int | None = None,
) -> StreamScore:
    """Score one stream's generated ``chunks`` (``t``, ``text``, optional ``latency_s``/``cache_tokens``/``rss_mb``)
    against its ground-truth chunk texts (:func:`chunk_texts`, chunk ``k`` at ``start + k * chunk_seconds``).

    Only the streamed part is scored: ground truth after the last generated chunk is left out. ``reset_every``
    marks the calls whose score reaches back before a sliding-mode restart (None: no call is marked).
    ``text_rounds`` (turns a streaming cache keeps verbatim; None: none retire) tells the slips whose last score
    was only in the previous text.
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
    last_right = True  # of the last matched call
    for i, g in enumerate(gt):
        j = g2p.get(i)
        right = j is not None and pred[j].score is not None and pred[j].score == g.score
        score.gt.append((g.t, j is not None, right, across[i]))
        if j is not None:
            if last_right and not right:
                score.slips.append(_slip(g, pred[j].score, gt[i - 1] if i else None, text_rounds, chunk_seconds))
            last_right = right
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


def rounded(x: float | None, digits: int = 4) -> float | None:
    """``x`` rounded (None stays None)."""
    return None if x is None else round(float(x), digits)


def median_ms(seconds: Sequence[float]) -> float | None:
    """Median of ``seconds`` in milliseconds, rounded to 3 decimals (None for none)."""
    return round(1000.0 * statistics.median(seconds), 3) if seconds else None


def count_slips(scores: Iterable[StreamScore]) -> dict[str, Any]:
    """The slips of ``scores`` counted by cause and by source: ``{"total", "by_cause": {cause: n},
    "by_source": {source: n}, "by_cause_and_source": {cause: {source: n}}}``, every key present."""
    both = {c: dict.fromkeys(SLIP_SOURCES, 0) for c in SLIP_CAUSES}
    for s in scores:
        for slip in s.slips:
            both[slip.cause][slip.source] += 1
    return {"total": sum(sum(v.values()) for v in both.values()),
            "by_cause": {c: sum(v.values()) for c, v in both.items()},
            "by_source": {src: sum(v[src] for v in both.values()) for src in SLIP_SOURCES},
            "by_cause_and_source": both}


def per_minute(scores: Sequence[StreamScore]) -> list[dict[str, Any]]:
    """Scores per minute of stream time, pooled over the streams that reach that minute."""
    minutes = max((len(s.minutes()) for s in scores), default=0)
    out = []
    for m in range(minutes):
        present = [s for s in scores if m < len(s.minutes())]
        spans = [(s, s.start + 60.0 * m, s.start + 60.0 * (m + 1)) for s in present]
        tally = Tally.pool(s.tally(a, b) for s, a, b in spans)
        chunks = [c for s, a, b in spans for c in s.chunks if a <= c["t"] < b]
        lat = [c["latency_s"] for c in chunks if c["latency_s"] is not None]
        cache = [c["cache_tokens"] for c in chunks if c["cache_tokens"] is not None]
        rss = [c["rss_mb"] for c in chunks if c["rss_mb"] is not None]
        out.append({
            "minute": m, "streams": len(present), **tally.scores(),
            "latency_ms_median": median_ms(lat), "cache_tokens_max": max(cache, default=None),
            "rss_mb_max": rounded(max(rss, default=None), 1),
        })  # fmt: skip
    return out
