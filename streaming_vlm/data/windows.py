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
``a``, its middle left out when long (kept ends, below). Windows without words are kept. Bounds are rounded
to 1e-6 s.

``livecc``: one window per input record, the whole clip ``[video_start, video_end]``, same rules.

Previous text: ``title``, then a newline, then the record's own ``previous`` (each stripped; an empty one and
its newline left out), followed by :func:`commentary` of the earlier words: each word with one leading space,
exactly as the assistant turns hold it. So the previous text of a window is its stream's initial previous text
(the first window's) followed by the commentary of every earlier second, and tokenises to exactly what the
inference cache holds after retiring those turns (their tokens, moved as they are) into its previous text: Qwen's
pre-tokenizer starts a pre-token at each of those spaces. (A retired turn's QA answer is not included: a
string cannot reproduce it, see the README.)

Kept ends: training reads only the first ``text_sink`` and last ``text_window`` tokens of the previous text
(``CachePolicy.cut_previous``), so the builder writes only its ends (:func:`cut_previous_text`): :func:`keep_ends`
with the same S and W (512 by default; ``None`` keeps it whole) cuts it into *pieces*, one starting at the text's
start and one at every space that follows a non-space character, and when there are more than S + W it writes the
first S pieces and the last W, the middle left out. The output then grows as O(N) in the video length instead of
O(N^2), and the cut sample is token for token the same: every piece holds at least one token, so the first S tokens
lie in the first S pieces and the last W tokens in the last W; and a piece boundary is a token boundary, because
the byte-level BPE pre-tokenizer of Qwen2 (and GPT-2) never puts a non-space character and a following space into
one pre-token, and BPE merges only inside pre-tokens (tokenizers with added tokens that strip spaces around them
would break this; Qwen's do not). A file built with S and W trains identically with any ``text_sink <= S`` and
``text_window <= W``; the settings and the number of windows cut are written beside the output
(:func:`build_settings_path`), and :func:`check_previous_kept` refuses a training run that would read more than the
file kept.
"""

from __future__ import annotations

import json
import logging
import os
import re
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
    seeks_path,
)
from streaming_vlm.settings import DEFAULTS

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
    cut: int = 0
    """windows whose previous text was cut to its first ``text_sink`` and last ``text_window`` pieces"""
    text_sink: int | None = None
    text_window: int | None = None
    settings: Path | None = None
    """the build settings written beside the output (:func:`build_settings_path`)"""
    errors: tuple[str, ...] = ()
    """the first few skipped-line messages"""

    def lines(self) -> list[str]:
        out = [f"{self.output}: {self.windows} windows ({self.written} written, {self.resumed} already there, "
               f"{self.empty} without words, {self.dropped} of them dropped, {self.tails} tail windows) "
               f"from {self.inputs} records; {self.skipped} malformed lines skipped"]
        out += [f"  skipped: {e}" for e in self.errors]
        kept = ("whole" if self.text_sink is None or self.text_window is None
                else f"first {self.text_sink} and last {self.text_window} pieces")
        out.append(f"previous text: {kept}; {self.cut} windows cut")
        if self.index is not None:
            out.append(f"seek index: {self.index}")
        if self.settings is not None:
            out.append(f"settings: {self.settings}")
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


_PIECE_START = re.compile(r"(?<=\S) ")  # \S as str.isspace(): Unicode whitespace and a little more


def keep_ends(text: str, head: int | None, tail: int | None) -> str:
    """``text`` with its middle left out: its first ``head`` and last ``tail`` pieces (a piece starts at the start
    and at every space that follows a non-space character), or ``text`` itself when it has no more than
    ``head + tail`` pieces or either bound is ``None`` (keep all). See the module doc for why training reads the
    same first ``head`` and last ``tail`` tokens from the result as from ``text``."""
    if head is None or tail is None or not text:
        return text
    starts = [m.start() for m in _PIECE_START.finditer(text)]
    if len(starts) + 1 <= head + tail:
        return text
    return (text[: starts[head - 1]] if head else "") + (text[starts[len(starts) - tail]:] if tail else "")


def cut_previous_text(record: StreamRecord, words: list[Word], text_sink: int | None = DEFAULTS.text_sink,
                      text_window: int | None = DEFAULTS.text_window) -> tuple[str, bool]:
    """``(text, cut)``: :func:`keep_ends` of :func:`previous_text` with ``text_sink`` and ``text_window``, and
    whether that left anything out. Reads at most ``text_sink + text_window`` of ``words``, so a window costs
    O(S + W) however long the transcript before it is."""
    words = [w for w in words if w.text.strip()]
    if text_sink is not None and text_window is not None and len(words) > text_sink + text_window:
        # each non-empty word after the first starts a piece (its space follows the previous part's non-space
        # end), so the first S pieces lie in the title, record.previous and the first S words, and the last W
        # pieces in the last W words: the text of these alone is cut exactly as the whole text would be, and
        # something is left out
        words = words[:text_sink] + words[len(words) - text_window:]
        return keep_ends(previous_text(record, words), text_sink, text_window), True
    whole = previous_text(record, words)
    kept = keep_ends(whole, text_sink, text_window)
    return kept, kept != whole


def windows_of(record: StreamRecord, window: float = 24.0, stride: float = 12.0, variant: str = "overlap",
               text_sink: int | None = DEFAULTS.text_sink, text_window: int | None = DEFAULTS.text_window
               ) -> Iterator[tuple[StreamRecord, bool, bool]]:
    """``(window_record, is_tail, previous_cut)`` for one input record, in order; ``previous`` is
    :func:`cut_previous_text` of the words ending at or before the window's start."""
    if variant == "overlap":
        bounds = window_bounds(record.video_start, record.video_end, window, stride)
    elif variant == "livecc":
        bounds = [(record.video_start, record.video_end, False)]
    else:
        raise ValueError(f"unknown variant {variant!r} (choose from {', '.join(VARIANTS)})")
    for a, b, tail in bounds:
        previous, cut = cut_previous_text(record, [w for w in record.words if w.end <= a], text_sink, text_window)
        yield StreamRecord(
            video=record.video, video_start=a, video_end=b, previous=previous,
            words=[w for w in record.words if a < w.end <= b],
            qa=[q for q in record.qa if a < q.ask_time <= b],
            title=record.title, source=record.source,
        ), tail, cut


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


def build_settings_path(path: str | os.PathLike) -> Path:
    """The build settings beside a windows file: ``X_with_seeks.jsonl`` and ``X.jsonl`` -> ``X_build.json``."""
    index = seeks_path(path)
    return index.with_name(index.name[: -len("_seeks.jsonl")] + "_build.json")


def _write_settings(path: Path, settings: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(settings, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _show_keep(value: int | None) -> str:
    return "unlimited" if value is None else str(value)


def _check_keep(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"{name} must be an integer >= 0 or None (unlimited), got {value!r}")


def build_windows(in_path: str | os.PathLike, out_path: str | os.PathLike, window: float = 24.0,
                  stride: float = 12.0, variant: str = "overlap", resume: bool = True,
                  drop_empty: bool = False, text_sink: int | None = DEFAULTS.text_sink,
                  text_window: int | None = DEFAULTS.text_window) -> WindowStats:
    """Stream ``in_path`` (one record in memory at a time) into window records at ``out_path``; then write the
    output's seek index and its build settings (:func:`build_settings_path`: the arguments, ``windows`` and
    ``previous_cut``, the number of windows whose previous text was cut). Deterministic: the same input and
    settings give the same bytes.

    ``previous`` keeps the first ``text_sink`` and last ``text_window`` pieces of the text before the window
    (:func:`cut_previous_text`; ``None``: all of it, O(N^2) bytes in the video length).

    Resumable: with ``resume`` and an existing output, a partial last line is cut off, the complete lines are
    checked byte for byte against the windows the input gives in the same order (``ValueError`` if they differ:
    other input or settings), and writing continues after them. The output is flushed after each input record.
    Before the first line is written the settings file is replaced by this run's with ``previous_cut`` null
    (unknown: an interrupted run's file counts as cut), and rewritten with the count at the end.
    Malformed input lines are skipped with a warning and counted. With ``drop_empty``, windows with neither words
    nor questions (the sample builder rejects them: nothing to supervise) are left out and counted.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} (choose from {', '.join(VARIANTS)})")
    if not (window > 0 and stride > 0):
        raise ValueError(f"window and stride must be positive (got {window}, {stride})")
    _check_keep("text_sink", text_sink)
    _check_keep("text_window", text_window)
    out_path = Path(out_path)
    if out_path.exists() and out_path.resolve() == Path(in_path).resolve():
        raise ValueError(f"{out_path}: the output would overwrite the input")
    with open(in_path, "rb"):  # fail before touching the output when the input is unreadable
        pass
    out_path.parent.mkdir(parents=True, exist_ok=True)
    stats = WindowStats(output=out_path, text_sink=text_sink, text_window=text_window,
                        settings=build_settings_path(out_path))
    settings = {"variant": variant, "window": window, "stride": stride, "drop_empty": drop_empty,
                "text_sink": text_sink, "text_window": text_window, "windows": None, "previous_cut": None}
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
                for rec, tail, cut in windows_of(item, window, stride, variant, text_sink, text_window):
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
                        if not stats.written:
                            _write_settings(stats.settings, settings)
                        out.write(data)
                        stats.written += 1
                    stats.windows += 1
                    stats.tails += tail
                    stats.cut += cut
                out.flush()
    finally:
        if old is not None:
            old.close()
    if stats.resumed < done:
        raise ValueError(f"{out_path}: holds {done} windows but {in_path} gives only {stats.resumed} with these "
                         "settings; rerun without resume (--no-resume)")
    stats.errors = tuple(errors)
    stats.index = build_seek_index(out_path)
    _write_settings(stats.settings, {**settings, "windows": stats.windows, "previous_cut": stats.cut})
    return stats


def check_previous_kept(path: str | os.PathLike, text_sink: int | None, text_window: int | None) -> None:
    """:class:`AnnotationError` (one line) when the windows file ``path`` holds previous texts cut shorter than
    training with ``text_sink`` / ``text_window`` (``None``: unlimited) reads, according to its build settings; a
    file without them (not made by :func:`build_windows`, e.g. the released Inf-Stream-Train files) or with nothing
    cut passes. One small read per file; the training dataset calls it for each file it opens."""
    settings_path = build_settings_path(path)
    if not settings_path.is_file():
        return
    try:
        settings = json.loads(settings_path.read_bytes())
        kept_sink, kept_window, cut = settings["text_sink"], settings["text_window"], settings["previous_cut"]
        if not all(v is None or type(v) is int for v in (kept_sink, kept_window, cut)):
            raise TypeError("text_sink, text_window and previous_cut must be integers or null")
    except (ValueError, TypeError, KeyError) as exc:
        raise AnnotationError(f"{settings_path}: unreadable build settings ({exc}); rebuild {path} with "
                              "streaming-vlm data windows") from None
    if cut == 0 or kept_sink is None or kept_window is None:
        return
    if text_sink is not None and text_window is not None and text_sink <= kept_sink and text_window <= kept_window:
        return
    sink, window = _show_keep(text_sink), _show_keep(text_window)
    raise AnnotationError(
        f"{path}: its previous texts keep only the first {kept_sink} and last {kept_window} pieces "
        f"({'some' if cut is None else cut} windows cut; {settings_path}), but training reads text_sink={sink}, "
        f"text_sliding_window={window}; rebuild it with streaming-vlm data windows ... --text-sink {sink} "
        f"--text-window {window}"
    )
