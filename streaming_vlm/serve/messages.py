"""What clients send, parsed and checked: a new session, a question, WebSocket messages, pushed frames.

Every parser takes decoded JSON (or raw bytes for frames) and returns a frozen value or raises
:class:`BadMessage`, one line naming the field, which the server answers with 400 (HTTP) or an ``error`` event
(WebSocket). Types are strict (``true`` is not a number, ``1`` is not a boolean), numbers finite, texts bounded,
unknown fields refused. The stream settings inside a session request are only checked for shape here; their values
are checked by ``settings.resolve`` when the session is built. Nothing here runs at import.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_QUESTION_CHARS = 2000
MAX_OPTIONS = 26
MAX_OPTION_CHARS = 500
MAX_PREVIOUS_TEXT_CHARS = 20000
MAX_REF_CHARS = 100
FRAME_HEADER = struct.Struct("<d")
"""A binary JPEG frame message: this header (the timestamp, little-endian float64 seconds) then the JPEG bytes."""


class BadMessage(ValueError):
    """A client message that cannot be used; the text is one line naming the problem."""


def _object(obj: Any, what: str, allowed: frozenset[str]) -> Mapping[str, Any]:
    if not isinstance(obj, dict):
        raise BadMessage(f"{what} must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(str(k) for k in set(obj) - allowed)
    if unknown:
        raise BadMessage(f"{what}: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(allowed))})")
    return obj


def _bool(obj: Mapping[str, Any], name: str, default: bool) -> bool:
    value = obj.get(name, default)
    if not isinstance(value, bool):
        raise BadMessage(f"{name} must be true or false, got {value!r}")
    return value


def _number(obj: Mapping[str, Any], name: str, default: float | None, *, low: float | None = None,
            high: float | None = None, strict_low: bool = False) -> float | None:
    value = obj.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadMessage(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if low is not None and (value <= low if strict_low else value < low):
        raise BadMessage(f"{name} must be {'>' if strict_low else '>='} {low:g}, got {value:g}")
    if high is not None and value > high:
        raise BadMessage(f"{name} must be <= {high:g}, got {value:g}")
    return value


def _int(obj: Mapping[str, Any], name: str, default: int | None, low: int, high: int) -> int | None:
    value = obj.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadMessage(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    return value


def _text(obj: Mapping[str, Any], name: str, default: str | None, limit: int, *, required: bool = False) -> str | None:
    value = obj.get(name, default)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise BadMessage(f"{name} must be text, got {value!r}")
    if required and not value.strip():
        raise BadMessage(f"{name} must not be empty")
    if len(value) > limit:
        raise BadMessage(f"{name} is {len(value)} characters long; the limit is {limit}")
    return value


# --------------------------------------------------------------------------------------------------
# a new session

_SESSION_FIELDS = frozenset({"source", "push", "realtime", "speed", "start", "duration", "mode", "previous_text",
                             "settings", "max_ready"})
MAX_SPEED = 1000.0
MAX_READY = 8


@dataclass(frozen=True)
class SessionRequest:
    """``POST /api/sessions``: a source (``source``, or ``push`` for frames the client sends) and how to run it."""

    source: str | None = None
    push: bool = False
    realtime: bool = True
    """File sources: play at the clock's pace (False: every chunk, as fast as the model takes them)."""
    speed: float = 1.0
    """File sources played in real time: the clock runs this many times faster (replays, tests)."""
    start: float = 0.0
    duration: float | None = None
    mode: str = "streaming"
    previous_text: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    max_ready: int = 1
    """Complete chunks a session's feed holds before it drops the oldest (the pacing buffer)."""

    @classmethod
    def from_json(cls, obj: Any) -> SessionRequest:
        obj = _object(obj, "the session request", _SESSION_FIELDS)
        push = _bool(obj, "push", False)
        source = obj.get("source")
        if source is not None and not isinstance(source, str):
            raise BadMessage(f"source must be text, got {source!r}")
        if push == (source is not None):
            raise BadMessage("give either source (a path under the media root, a URL, camera:/dev/videoN or 'demo') "
                             "or push: true, not both")
        settings = obj.get("settings", {})
        if not isinstance(settings, dict):
            raise BadMessage(f"settings must be a JSON object of stream settings, got {settings!r}")
        mode = obj.get("mode", "streaming")
        if not isinstance(mode, str):
            raise BadMessage(f"mode must be text, got {mode!r}")
        request = cls(
            source=source, push=push, realtime=_bool(obj, "realtime", True),
            speed=_number(obj, "speed", 1.0, low=0.0, high=MAX_SPEED, strict_low=True),
            start=_number(obj, "start", 0.0, low=0.0), duration=_number(obj, "duration", None, low=0.0,
                                                                        strict_low=True),
            mode=mode, previous_text=_text(obj, "previous_text", "", MAX_PREVIOUS_TEXT_CHARS),
            settings=dict(settings), max_ready=_int(obj, "max_ready", 1, 1, MAX_READY),
        )
        if push and any(name in obj for name in ("realtime", "speed", "start", "duration")):
            raise BadMessage("realtime, speed, start and duration apply to file sources, not to a push session")
        return request


# --------------------------------------------------------------------------------------------------
# questions

_QUESTION_FIELDS = frozenset({"text", "options", "max_tokens", "ref"})


@dataclass(frozen=True)
class QuestionRequest:
    """A question for a session's next chunk: free text, or a choice among ``options`` (the engine's ``choose``).
    ``max_tokens``: the answer's token limit (at most the server's); ``ref``: echoed in the ``question`` event."""

    text: str
    options: tuple[str, ...] | None = None
    max_tokens: int | None = None
    ref: str | None = None

    @classmethod
    def from_json(cls, obj: Any, *, max_tokens: int, extra: frozenset[str] = frozenset()) -> QuestionRequest:
        obj = _object(obj, "the question", _QUESTION_FIELDS | extra)
        text = _text(obj, "text", None, MAX_QUESTION_CHARS, required=True)
        options = obj.get("options")
        if options is not None:
            if (not isinstance(options, list) or not 1 <= len(options) <= MAX_OPTIONS
                    or not all(isinstance(o, str) and o.strip() and len(o) <= MAX_OPTION_CHARS for o in options)):
                raise BadMessage(f"options must be a list of 1 to {MAX_OPTIONS} non-empty texts of at most "
                                 f"{MAX_OPTION_CHARS} characters")
            options = tuple(options)
        return cls(text=text.strip(), options=options, max_tokens=_int(obj, "max_tokens", None, 1, max_tokens),
                   ref=_text(obj, "ref", None, MAX_REF_CHARS))


# --------------------------------------------------------------------------------------------------
# WebSocket messages


def client_message(obj: Any, *, max_tokens: int) -> tuple[str, QuestionRequest | None]:
    """A message on a session's event WebSocket: ``("question", QuestionRequest)``, ``("stop", None)`` or
    ``("ping", None)``."""
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise BadMessage('a message must be a JSON object with a "type" (question, stop or ping)')
    kind = obj["type"]
    if kind == "question":
        return kind, QuestionRequest.from_json(obj, max_tokens=max_tokens, extra=frozenset({"type"}))
    if kind in ("stop", "ping"):
        _object(obj, f"a {kind} message", frozenset({"type"}))
        return kind, None
    raise BadMessage(f"unknown message type {kind!r} (use question, stop or ping)")


@dataclass(frozen=True)
class RawFrameHeader:
    """``{"type": "frame", "t": T, "format": "rgb", "width": W, "height": H}``: the next binary message is a raw
    RGB frame of ``W * H * 3`` bytes shown from client time ``T``."""

    t: float
    width: int
    height: int


def frames_message(obj: Any) -> RawFrameHeader | str:
    """A text message on a push session's frames WebSocket: a :class:`RawFrameHeader`, ``"end"`` (``{"type":
    "end", "t": T?}``: the stream ends, at ``T`` if given) or ``"ping"``."""
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise BadMessage('a text message must be a JSON object with a "type" (frame, end or ping)')
    kind = obj["type"]
    if kind == "frame":
        obj = _object(obj, "a frame header", frozenset({"type", "t", "format", "width", "height"}))
        if obj.get("format", "rgb") != "rgb":
            raise BadMessage('a frame header announces raw RGB ("format": "rgb"); send a JPEG as one binary message')
        t = _number(obj, "t", None)
        if t is None:
            raise BadMessage("a frame header needs t (the frame's time in seconds)")
        width, height = _int(obj, "width", None, 1, 1 << 16), _int(obj, "height", None, 1, 1 << 16)
        if width is None or height is None:
            raise BadMessage("a frame header needs width and height (pixels)")
        return RawFrameHeader(t=t, width=width, height=height)
    if kind in ("end", "ping"):
        _object(obj, f"an {kind} message", frozenset({"type", "t"} if kind == "end" else {"type"}))
        return kind
    raise BadMessage(f"unknown message type {kind!r} (use frame, end or ping)")


def end_time(obj: Any) -> float | None:
    """The ``t`` of an ``end`` message, or None."""
    return _number(obj, "t", None) if isinstance(obj, dict) else None


def jpeg_frame(data: bytes) -> tuple[float, bytes]:
    """A binary frame message: ``(timestamp, jpeg bytes)`` (see :data:`FRAME_HEADER`)."""
    if len(data) <= FRAME_HEADER.size:
        raise BadMessage(f"a binary frame is an 8-byte little-endian float64 timestamp then a JPEG; got {len(data)} "
                         "bytes")
    (t,) = FRAME_HEADER.unpack_from(data)
    if not math.isfinite(t):
        raise BadMessage(f"the frame's timestamp must be a finite number, got {t!r}")
    return t, bytes(data[FRAME_HEADER.size:])
