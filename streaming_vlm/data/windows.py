"""The overlapped-window builder: long-video annotation records -> training window records (JSONL).

Input: one record per video (``video_start`` usually 0, ``video_end`` the video length, the full word-level
``text_stream``, optionally ``title``/``previous``/``qa_stream``). Output: one record per window.

``overlap`` (the reference's "s12w24"; ``window`` W = 24 s, ``stride`` S = 12 s):

- regular windows start at ``a = video_start + k*S`` for k = 0, 1, ... while ``a + W <= video_end``;
- tail rule: if the part of the video after the last regular window's end (``video_start`` when there is
  none) is at least ``S/2`` seconds long, one more window ``[max(video_start, video_end - W), video_end]``
  is added, so at most S/2 seconds at the end of a video are never the end of a window (with the defaults a
  60 s video gives starts 0, 12, 24, 36; a 66 s one adds [42, 66]; a 65 s one does not). A video shorter
  than W therefore yields one window spanning it whole if it lasts at least S/2, else none.

Each window ``[a, b]`` gets ``text_stream`` = the words whose *end* is in ``(a, b]``, ``qa_stream`` = the
questions asked in ``(a, b]``, and ``previous`` = :func:`previous_text` of the words ending at or before
``a``. Windows without words are kept. Bounds are rounded to 1e-6 s.

``livecc``: one window per input record, the whole clip ``[video_start, video_end]``, same rules.

Previous text: ``title``, then a newline, then the record's own ``previous`` (each stripped; an empty one and
its newline left out), followed by :func:`commentary` of the earlier words: each word with one leading space,
exactly as the assistant turns hold it. So the previous text of a window is its stream's initial previous text
(the first window's) followed by the commentary of every earlier second, and tokenises to exactly what the
inference cache holds after retiring those turns (their tokens, moved as they are) into its previous text: Qwen's
pre-tokenizer starts a pre-token at each of those spaces. (A retired turn's QA answer is not included: a
string cannot reproduce it, see the README.)
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from streaming_vlm.data.annotations import (
    AnnotationError,
    StreamRecord,
    Word,
    build_seek_index,
    iter_records,
    record_to_json,
)

log = logging.getLogger(__name__)

VARIANTS = ("overlap", "livecc")


@dataclass
class WindowStats:
    output: Path
    index: Path | None = None
    inputs: int = 0
    """input records read (well-formed)"""
    skipped: int = 0
    """malformed input lines skipped (each logged as a warning)"""
    windows: int = 0
    """window records in the output after this run"""
    written: int = 0
    """window records written by this run"""
    resumed: int = 0
    """window records found already written (and checked) in an existing output"""
    empty: int = 0
    """windows without words (written unless ``drop_empty`` and they hold no question either)"""
    dropped: int = 0
    """windows left out by ``drop_empty``: no words and no questions, so nothing to train on"""
    tails: int = 0
    """tail windows added by the tail rule"""
    errors: tuple[str, ...] = ()
    """the first few skipped-line messages"""

    def lines(self) -> list[str]:
        out = [f"{self.output}: {self.windows} windows ({self.written} written, {self.resumed} already there, "
               f"{self.empty} without words, {self.dropped} of them dropped, {self.tails} tail windows) "
               f"from {self.inputs} records; {self.skipped} malformed lines skipped"]
        out += [f"  skipped: {e}" for e in self.errors]
        if self.index is not None:
            out.append(f"seek index: {self.index}")
        return out


def window_bounds(video_start: float, video_end: float, window: float = 24.0,
                  stride: float = 12.0) -> list[tuple[float, float, bool]]:
    """``(start, end, is_tail)`` of the overlap windows of ``[video_start, video_end]`` (see the module doc)."""
    if not (window > 0 and stride > 0):
        raise ValueError(f"window and stride must be positive (got {window}, {stride})")
    bounds: list[tuple[float, float, bool]] = []
    k = 0
    while True:
        a = round(video_start + k * stride, 6)
        b = round(a + window, 6)
        if b > video_end + 1e-9:
            break
        bounds.append((a, b, False))
        k += 1
    covered = bounds[-1][1] if bounds else video_start
    if video_end - covered >= stride / 2 - 1e-9:
        bounds.append((round(max(video_start, video_end - window), 6), round(video_end, 6), True))
    return bounds


def _join(separator: str, parts: list[str]) -> str:
    return separator.join(p for p in (part.strip() for part in parts) if p)


def commentary(words: list[str]) -> str:
    """Words as a stream's text holds them: each stripped, with one leading space, empty ones left out
    (``" red ball! score two"``). A sample's assistant turn holds this of its second's words."""
    return "".join(f" {t}" for t in (w.strip() for w in words) if t)


def previous_text(record: StreamRecord, words: list[Word]) -> str:
    """``title``, newline, ``record.previous`` (each stripped; an empty one and its newline left out), then
    :func:`commentary` of ``words``: the stream's initial previous text followed by the earlier turns' text."""
    return _join("\n", [record.title, record.previous]) + commentary([w.text for w in words])


def windows_of(record: StreamRecord, window: float = 24.0, stride: float = 12.0,
               variant: str = "overlap") -> Iterator[tuple[StreamRecord, bool]]:
    """``(window_record, is_tail)`` for one input record, in order."""
    if variant == "overlap":
        bounds = window_bounds(record.video_start, record.video_end, window, stride)
    elif variant == "livecc":
        bounds = [(record.video_start, record.video_end, False)]
    else:
        raise ValueError(f"unknown variant {variant!r} (choose from {', '.join(VARIANTS)})")
    for a, b, tail in bounds:
        yield StreamRecord(
            video=record.video, video_start=a, video_end=b,
            previous=previous_text(record, [w for w in record.words if w.end <= a]),
            words=[w for w in record.words if a < w.end <= b],
            qa=[q for q in record.qa if a < q.ask_time <= b],
            title=record.title, source=record.source,
        ), tail


def _encode(record: StreamRecord) -> bytes:
    return (json.dumps(record_to_json(record), ensure_ascii=False) + "\n").encode("utf-8")


def _existing_lines(out_path: Path) -> int:
    """Cut a partial last line off ``out_path``; returns how many complete lines it holds."""
    complete = 0
    end = 0
    with open(out_path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            complete += 1
            end += len(raw)
    if end != os.path.getsize(out_path):
        with open(out_path, "r+b") as f:
            f.truncate(end)
    return complete


def build_windows(in_path: str | os.PathLike, out_path: str | os.PathLike, window: float = 24.0,
                  stride: float = 12.0, variant: str = "overlap", resume: bool = True,
                  drop_empty: bool = False) -> WindowStats:
    """Stream ``in_path`` (one record in memory at a time) into window records at ``out_path``; then write the
    output's seek index. Deterministic: the same input and settings give the same bytes.

    Resumable: with ``resume`` and an existing output, a partial last line is cut off, the complete lines are
    checked byte for byte against the windows the input gives in the same order (``ValueError`` if they differ:
    other input or settings), and writing continues after them. The output is flushed after each input record.
    Malformed input lines are skipped with a warning and counted. With ``drop_empty``, windows with neither words
    nor questions (the sample builder rejects them: nothing to supervise) are left out and counted.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} (choose from {', '.join(VARIANTS)})")
    if not (window > 0 and stride > 0):
        raise ValueError(f"window and stride must be positive (got {window}, {stride})")
    out_path = Path(out_path)
    if out_path.exists() and out_path.resolve() == Path(in_path).resolve():
        raise ValueError(f"{out_path}: the output would overwrite the input")
    with open(in_path, "rb"):  # fail before touching the output when the input is unreadable
        pass
    out_path.parent.mkdir(parents=True, exist_ok=True)
    stats = WindowStats(output=out_path)
    errors: list[str] = []
    done = _existing_lines(out_path) if resume and out_path.exists() else 0
    old = open(out_path, "rb") if done else None
    try:
        with open(out_path, "ab" if done else "wb") as out:
            for _, item in iter_records(in_path):
                if isinstance(item, AnnotationError):
                    stats.skipped += 1
                    if len(errors) < 5:
                        errors.append(str(item))
                    log.warning("skipping %s", item)
                    continue
                stats.inputs += 1
                for rec, tail in windows_of(item, window, stride, variant):
                    stats.empty += not rec.words
                    if drop_empty and not rec.words and not rec.qa:
                        stats.dropped += 1
                        continue
                    data = _encode(rec)
                    if stats.resumed < done:
                        if old is None or old.readline() != data:
                            raise ValueError(f"{out_path}: line {stats.resumed + 1} differs from what {in_path} "
                                             "gives with these settings; rerun without resume (--no-resume)")
                        stats.resumed += 1
                    else:
                        out.write(data)
                        stats.written += 1
                    stats.windows += 1
                    stats.tails += tail
                out.flush()
    finally:
        if old is not None:
            old.close()
    if stats.resumed < done:
        raise ValueError(f"{out_path}: holds {done} windows but {in_path} gives only {stats.resumed} with these "
                         "settings; rerun without resume (--no-resume)")
    stats.errors = tuple(errors)
    stats.index = build_seek_index(out_path)
    return stats
