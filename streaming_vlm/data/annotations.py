"""Annotation records of Inf-Stream-Train and LiveCC (Live-WhisperX-526K): parsing, writing, seek indexes.

A record is one JSON line: a user turn whose content holds a video element (``video`` path, absolute or
relative to ``$DATASET_PATH``; ``video_start``/``video_end`` in seconds) and optionally a ``previous`` text,
and an assistant turn with ``text_stream`` ([start_s, end_s, word] per word) and optionally ``qa_stream``
([_, ask_time_s, question, answer] per question). See docs/data.md.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class AnnotationError(ValueError):
    """A record that cannot be used; the message is one line naming ``file:line`` and the problem."""


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    text: str


@dataclass(frozen=True)
class QA:
    ask_time: float
    question: str
    answer: str


@dataclass
class StreamRecord:
    video: str
    """The video path as written in the file."""
    video_start: float
    video_end: float
    previous: str = ""
    words: list[Word] = field(default_factory=list)
    qa: list[QA] = field(default_factory=list)
    title: str = ""
    """LiveCC rows carry a title; it is not part of the stream layout unless a builder puts it in previous."""
    source: str = ""
    """``file:line`` this record came from, for messages."""


# ---------------------------------------------------------------------------------------------------------------------
# parsing and writing


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _one_line(text: str, limit: int = 120) -> str:
    """``text`` on one bounded line, for error messages."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short(value: Any, limit: int = 80) -> str:
    """A one-line, bounded ``repr`` for error messages."""
    return _one_line(repr(value), limit)


def _content_items(turn: dict) -> list:
    content = turn.get("content")
    return [item for item in content if isinstance(item, dict)] if isinstance(content, list) else []


def parse_record(obj: Any, source: str = "") -> StreamRecord:
    """One decoded JSON line -> a :class:`StreamRecord`, or :class:`AnnotationError` ``"<source>: <problem>"``.

    The video element is the first user content item of type ``video`` (or carrying a ``video`` key);
    ``previous`` and ``title`` come from any user content item carrying them; words come from every assistant
    content item carrying ``text_stream`` and questions from those carrying ``qa_stream`` (``type`` may be absent).
    Extra keys (``category``, the query ``text``) are ignored.
    """
    where = source or "record"

    def fail(problem: str) -> AnnotationError:
        return AnnotationError(f"{where}: {problem}")

    if not isinstance(obj, list) or not obj or not all(isinstance(turn, dict) for turn in obj):
        raise fail(f"not a list of conversation turns: {_short(obj)}")
    user_items = [item for turn in obj if turn.get("role") == "user" for item in _content_items(turn)]
    video_item = next((item for item in user_items if item.get("type") == "video" or "video" in item), None)
    if video_item is None:
        raise fail("no user video element")
    video = video_item.get("video")
    if not isinstance(video, str) or not video:
        raise fail(f"video path is not a non-empty string: {_short(video)}")
    times = {}
    for key in ("video_start", "video_end"):
        if key not in video_item:
            raise fail(f"video element has no {key}")
        if not _is_number(video_item[key]):
            raise fail(f"{key} is not a number: {_short(video_item[key])}")
        times[key] = float(video_item[key])
    if times["video_end"] <= times["video_start"]:
        raise fail(f"video_end {times['video_end']} <= video_start {times['video_start']}")

    texts = {}
    for key in ("previous", "title"):
        value = next((item[key] for item in user_items if item.get(key) is not None), "")
        if not isinstance(value, str):
            raise fail(f"{key} is not a string: {_short(value)}")
        texts[key] = value

    words: list[Word] = []
    qa: list[QA] = []
    assistant_items = [item for turn in obj if turn.get("role") == "assistant" for item in _content_items(turn)]
    for item in assistant_items:
        stream = item.get("text_stream")
        if stream is not None:
            if not isinstance(stream, list):
                raise fail(f"text_stream is not a list: {_short(stream)}")
            for i, w in enumerate(stream):
                if not (isinstance(w, list) and len(w) == 3 and _is_number(w[0]) and _is_number(w[1])
                        and isinstance(w[2], str)):
                    raise fail(f"text_stream item {i} is not [start, end, word]: {_short(w)}")
                words.append(Word(float(w[0]), float(w[1]), w[2]))
        questions = item.get("qa_stream")
        if questions is not None:
            if not isinstance(questions, list):
                raise fail(f"qa_stream is not a list: {_short(questions)}")
            for i, q in enumerate(questions):
                if not (isinstance(q, list) and len(q) == 4 and _is_number(q[1]) and isinstance(q[2], str)
                        and isinstance(q[3], str)):
                    raise fail(f"qa_stream item {i} is not [_, ask_time, question, answer]: {_short(q)}")
                qa.append(QA(float(q[1]), q[2], q[3]))
    return StreamRecord(video=video, video_start=times["video_start"], video_end=times["video_end"],
                        previous=texts["previous"], words=words, qa=qa, title=texts["title"], source=source)


def record_to_json(record: StreamRecord) -> list:
    """The conversation format :func:`parse_record` reads (``parse_record(record_to_json(r), r.source) == r``).

    The query text is written empty (readers ignore it); ``previous`` and ``title`` go on the text element
    only when non-empty; ``qa_stream`` items are ``[ask_time, ask_time, question, answer]`` and only written
    when there are any. ``source`` is not written.
    """
    text_item: dict[str, Any] = {"type": "text", "text": ""}
    if record.previous:
        text_item["previous"] = record.previous
    if record.title:
        text_item["title"] = record.title
    stream: dict[str, Any] = {"type": "text_stream", "text_stream": [[w.start, w.end, w.text] for w in record.words]}
    if record.qa:
        stream["qa_stream"] = [[q.ask_time, q.ask_time, q.question, q.answer] for q in record.qa]
    video = {"type": "video", "video": record.video, "video_start": record.video_start, "video_end": record.video_end}
    return [{"role": "user", "content": [video, text_item]}, {"role": "assistant", "content": [stream]}]


def resolve_video(record: StreamRecord, dataset_path: str | os.PathLike | None = None) -> Path:
    """The record's video file: the path as written if it exists (absolute, or relative to the working
    directory), else joined to ``dataset_path`` (or ``$DATASET_PATH`` when not given)."""
    as_written = Path(record.video).expanduser()
    tried = [as_written]
    if as_written.exists():
        return as_written
    root = dataset_path if dataset_path is not None else os.environ.get("DATASET_PATH")
    if root and not as_written.is_absolute():
        joined = Path(root).expanduser() / as_written
        tried.append(joined)
        if joined.exists():
            return joined
    hint = "" if root else " (set $DATASET_PATH or pass a dataset path)"
    where = record.source or "record"
    raise AnnotationError(f"{where}: video not found: tried {', '.join(str(p) for p in tried)}{hint}")


# ---------------------------------------------------------------------------------------------------------------------
# files and seek indexes


def iter_records(path: str | os.PathLike) -> Iterator[tuple[int, StreamRecord | AnnotationError]]:
    """``(line_number, record_or_error)`` for every non-blank line of a JSONL file, streaming.

    Line numbers start at 1 and count blank lines. A line that is not JSON, or not a usable record, yields an
    :class:`AnnotationError` instead of a record; reading never stops mid-file (only an unreadable file raises).
    """
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            yield number, _parse_line(raw, f"{path}:{number}")


def _parse_line(raw: bytes, source: str) -> StreamRecord | AnnotationError:
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return AnnotationError(f"{source}: malformed JSON: {_one_line(str(exc))}")
    try:
        return parse_record(obj, source)
    except AnnotationError as exc:
        return exc


def seeks_path(path: str | os.PathLike) -> Path:
    """The seek index beside an annotation file: ``X_with_seeks.jsonl`` and ``X.jsonl`` -> ``X_seeks.jsonl``."""
    path = Path(path)
    name = path.name
    if name.endswith("_with_seeks.jsonl"):
        stem = name[: -len("_with_seeks.jsonl")]
    elif name.endswith(".jsonl"):
        stem = name[: -len(".jsonl")]
    else:
        stem = path.stem
    return path.with_name(f"{stem}_seeks.jsonl")


def _line_offsets(path: str | os.PathLike) -> list[int]:
    offsets = []
    position = 0
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                offsets.append(position)
            position += len(raw)
    return offsets


def build_seek_index(path: str | os.PathLike, out: Path | None = None) -> Path:
    """Write the byte offset of every non-blank line of ``path`` as one JSON array (one pass, binary mode) to
    ``out`` (default :func:`seeks_path`), atomically; returns the index path."""
    out = Path(out) if out is not None else seeks_path(path)
    if out.resolve() == Path(path).resolve():
        raise ValueError(f"{path}: the seek index would overwrite the annotation file")
    offsets = _line_offsets(path)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(offsets) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    return out


def load_seek_index(path: str | os.PathLike) -> list[int]:
    """The byte offsets stored beside the annotation file ``path`` (see :func:`seeks_path`)."""
    index = seeks_path(path)
    if not index.exists():
        raise FileNotFoundError(f"{path}: no seek index {index}; run: streaming-vlm data index {path}")
    try:
        offsets = json.loads(index.read_bytes())
    except ValueError as exc:
        raise AnnotationError(f"{index}: not JSON: {_one_line(str(exc))}") from None
    if not isinstance(offsets, list) or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0
                                                for o in offsets):
        raise AnnotationError(f"{index}: not a JSON array of byte offsets")
    size = os.path.getsize(path)
    if offsets and max(offsets) >= size:
        raise AnnotationError(f"{index}: offset past the end of {path} (stale index); run: streaming-vlm data index "
                              f"{path}")
    return offsets


def read_record_at(path: str | os.PathLike, offset: int, source_line: int | None = None) -> StreamRecord:
    """The record on the line starting at byte ``offset``; :class:`AnnotationError` if it is not a usable record
    (or the offset is not at a line start). ``source_line`` only names the record in messages."""
    source = f"{path}:{source_line}" if source_line is not None else f"{path}@{offset}"
    with open(path, "rb") as f:
        if offset < 0:
            raise AnnotationError(f"{source}: negative offset {offset}")
        if offset > 0:
            f.seek(offset - 1)
            if f.read(1) != b"\n":
                raise AnnotationError(f"{source}: offset {offset} is not at a line start (stale seek index?)")
        else:
            f.seek(0)
        raw = f.readline()
    if not raw.strip():
        raise AnnotationError(f"{source}: no record at offset {offset}")
    result = _parse_line(raw, source)
    if isinstance(result, AnnotationError):
        raise result
    return result
