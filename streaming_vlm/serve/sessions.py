"""Live sessions on one model: each with its own source, feed, engine session and event log; one worker runs them.

Contract
--------
* **One model, one worker.** The model runs in ONE thread (:class:`SessionManager`'s worker); every model call of
  every session happens there, so sessions never run the model concurrently. Each session owns a
  :class:`~streaming_vlm.engine.StreamSession` (its cache), a :class:`~streaming_vlm.sources.LiveFeed` (its source
  read in the feed's own thread, concurrently with the model) and an :class:`~streaming_vlm.serve.events.EventLog`.
* **Fair scheduling (round robin).** The worker visits the running sessions in creation order, starting after the
  session it served last, and serves the first one with a chunk ready: one chunk (one model step) per turn. A
  session with a ready chunk therefore waits for at most one step of each other session: none starves another.
  Issues and the end of a feed are handled as the worker passes, without taking a turn. With ``N`` sessions whose
  steps take ``s`` seconds, each gets a step every ``N * s`` seconds at worst; when that is longer than a chunk,
  its feed skips chunks (the pacing policy of ``sources.LiveFeed``: lag stays under ``max_ready`` chunks).
* **Batched turns.** When the session served is a ``StreamSession`` and its next chunk is not a question with options,
  the worker also takes one ready chunk from each later session in the round-robin order that is the same (its
  engine on the same model, no question with options next) and runs them all in one ``batch.step_many``: each
  prefill alone, their decode steps in one forward per token, each session's result what its own ``step`` gives.
  A batch is one turn of each of its sessions; the next turn starts after its last one. Events are the same as for
  a chunk served alone (``latency_s``: the batch's wall time), but a model error in a batch ends every session of
  the batch (their chunks were in flight together).
* **Questions** queue on their session (at most ``Limits.max_pending_questions``) and join the next chunk the
  session delivers, one question per chunk, first asked first: free text is that chunk's generation (streamed as
  ``token`` events, with up to ``Limits.answer_tokens`` tokens instead of the chunk's ``max_new_tokens``), options
  go through ``StreamSession.choose``. That chunk yields an ``answer`` event instead of ``commentary``; commentary
  resumes with the next chunk. Questions left when a session ends get an ``error`` event each.
* **Ends.** A session ends when its source ends (``end of stream``), when its source fails (the source's one-line
  reason), when stopped (``stopped``), when a push session gets no frame for ``Limits.push_idle_s`` seconds, when
  the server shuts down, or when the model raises on one of its chunks (``model error: ...``): the exception ends
  that session only; the worker and the other sessions go on. The ``end`` event is the last of its log; its engine
  (cache) is released at once. Ended sessions stay listed, with their transcripts, until ``Limits.ended_kept``
  newer ones have ended.
* **Capacity.** At most ``Limits.max_sessions`` sessions run at once; one more is refused with HTTP 429.

Times: ``latency_s`` is the wall time of a chunk's model work; ``lag_s`` the feed's lag (from a chunk being
complete to the worker taking it), ``delay_s`` lag plus model work, both on the session's clock (real seconds
unless a file source is replayed at ``speed``). Nothing here runs at import; the worker starts in :meth:`start`.
"""

from __future__ import annotations

import collections
import itertools
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from streaming_vlm import settings as stream_settings
from streaming_vlm.memory import current_rss_mb
from streaming_vlm.serve.events import EventLog
from streaming_vlm.serve.feeds import LosslessFeed, WakingSource
from streaming_vlm.serve.messages import BadMessage, QuestionRequest, SessionRequest
from streaming_vlm.serve.security import AccessError, classify_source
from streaming_vlm.sources import (
    NETWORK_PROTOCOLS,
    Clock,
    FeedChunk,
    FeedEnd,
    FeedIssue,
    FileSource,
    FrameError,
    LiveFeed,
    PushSource,
    Source,
    SourceError,
    UrlSource,
    camera_source,
)
from streaming_vlm.video import VideoError

logger = logging.getLogger(__name__)

NOT_STREAMED = ("total_pixels", "max_frames")
"""Settings of clips of known length: a session cannot set them."""
STREAMED_NAMES = tuple(name for name in stream_settings.SETTING_NAMES if name not in NOT_STREAMED)


@dataclass(frozen=True)
class Limits:
    """Server-wide limits (``streaming-vlm serve`` flags)."""

    max_sessions: int = 4
    answer_tokens: int = 64
    """Most tokens a free-text answer may take (a question may ask for fewer)."""
    max_frame_bytes: int = 4 << 20
    """Largest pushed frame message (a JPEG, or raw RGB data)."""
    max_frame_width: int = 3840
    max_frame_height: int = 2160
    max_push_fps: float = 30.0
    """Frames per second a push session takes; more are refused (a burst of one second's worth is allowed)."""
    push_idle_s: float = 60.0
    """A push session that receives no frame for this long ends."""
    event_log: int = 4096
    """Events kept per session for replay."""
    max_pending_questions: int = 8
    ended_kept: int = 16
    """Ended sessions kept listed (transcripts, events) before the oldest is forgotten."""
    transcript: int = 100_000
    """Chunks kept in a session's transcript (the oldest go first)."""
    step_delay_s: float = 0.0
    """Testing aid: sleep this long after every model step, as if the model were slower."""
    errors_per_s: int = 10
    """``error`` events a session logs per second at most (the rest are counted into the next one)."""

    def __post_init__(self) -> None:
        for name in ("max_sessions", "answer_tokens", "max_frame_bytes", "max_frame_width", "max_frame_height",
                     "event_log", "max_pending_questions", "ended_kept", "transcript", "errors_per_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        for name in ("max_push_fps", "push_idle_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not self.step_delay_s >= 0:
            raise ValueError(f"step_delay_s must be >= 0, got {self.step_delay_s!r}")


@dataclass
class Question:
    id: str
    request: QuestionRequest
    asked_at: float  # time.perf_counter()


class Session:
    """One live stream: its source, feed, engine, questions, transcript and events. Mutated by the worker only,
    except where noted (questions, stop requests and pushed frames come from request handlers)."""

    def __init__(self, *, id: str, ordinal: int, request: SessionRequest, kind: str, label: str, target: str | None,
                 settings: stream_settings.StreamSettings, sources: Mapping[str, str], source: Source, feed,
                 engine, clock: Clock, limits: Limits) -> None:
        self.id, self.ordinal, self.request = id, ordinal, request
        self.kind, self.label, self.target = kind, label, target
        self.settings, self.setting_sources = settings, dict(sources)
        self.source, self.feed, self.engine, self.clock, self.limits = source, feed, engine, clock, limits
        self.created = time.time()
        self.log = EventLog(id, limits.event_log)
        self.transcript: collections.deque[dict[str, Any]] = collections.deque(maxlen=limits.transcript)
        self.state = "starting"  # starting -> running (a chunk done) -> ended
        self.end_reason: str | None = None
        self.end_error = False
        self.stop_reason: str | None = None  # set by a handler; the worker ends the session
        self._lock = threading.Lock()
        self._questions: collections.deque[Question] = collections.deque()
        self._question_ids = itertools.count(1)
        self.asked = self.answered = self.chunks = self.skipped = 0
        self.last_lag_s: float | None = None
        self.max_lag_s: float | None = None
        self.cache_tokens = 0
        self.stream_time = 0.0
        self.last_frame: np.ndarray | None = None
        # push sessions
        self.last_frame_at = time.monotonic()
        self._bucket = float(limits.max_push_fps)
        self._bucket_at = time.monotonic()
        self.push_lock = threading.Lock()  # one push (or finish) at a time, in order
        self._raw_header = None  # a raw RGB frame header waiting for its binary message
        # rate-limited error events
        self._errors_window = 0.0
        self._errors_in_window = 0
        self._errors_suppressed = 0

    # ---- handlers' side -------------------------------------------------------------------------------------

    @property
    def ended(self) -> bool:
        return self.state == "ended"

    def queue_question(self, request: QuestionRequest) -> Question:
        with self._lock:
            if self.ended or self.stop_reason:
                raise AccessError(409, f"session {self.id} has ended")
            if len(self._questions) >= self.limits.max_pending_questions:
                raise AccessError(429, f"session {self.id} already has {len(self._questions)} questions waiting "
                                       "for a chunk; ask again later")
            question = Question(f"q{next(self._question_ids)}", request, time.perf_counter())
            self._questions.append(question)
            self.asked += 1
        event = {"question_id": question.id, "text": request.text, "options": list(request.options or []) or None}
        if request.ref is not None:
            event["ref"] = request.ref
        self.log.append("question", **event)
        return question

    def peek_question(self) -> Question | None:
        """The question the next chunk will answer, left in the queue."""
        with self._lock:
            return self._questions[0] if self._questions else None

    def next_question(self) -> Question | None:
        with self._lock:
            return self._questions.popleft() if self._questions else None

    def drop_questions(self) -> list[Question]:
        with self._lock:
            left, self._questions = list(self._questions), collections.deque()
            return left

    @property
    def pending_questions(self) -> int:
        return len(self._questions)

    def report_error(self, message: str) -> None:
        """An ``error`` event (a bad client message or frame), at most ``errors_per_s`` per second; the ones over
        that are counted into the next event that is logged."""
        now = time.monotonic()
        with self._lock:
            if now - self._errors_window >= 1.0:
                self._errors_window, self._errors_in_window = now, 0
            if self._errors_in_window >= self.limits.errors_per_s:
                self._errors_suppressed += 1
                return
            self._errors_in_window += 1
            suppressed, self._errors_suppressed = self._errors_suppressed, 0
        fields: dict[str, Any] = {"message": message}
        if suppressed:
            fields["suppressed"] = suppressed
        self.log.append("error", **fields)

    def take_frame_slot(self) -> None:
        """Count one pushed frame against the rate limit (a token bucket of ``max_push_fps`` per second, one
        second's burst); :class:`FrameError` when over it."""
        now = time.monotonic()
        rate = self.limits.max_push_fps
        with self._lock:
            self.last_frame_at = now
            self._bucket = min(rate, self._bucket + (now - self._bucket_at) * rate)
            self._bucket_at = now
            if self._bucket < 1.0:
                raise FrameError(f"{self.label}: frame refused: over the limit of {rate:g} frames per second")
            self._bucket -= 1.0

    def settings_record(self) -> dict[str, Any]:
        """The session's stream settings by name (JSON-able; windows unlimited as None)."""
        record = self.settings.as_record()
        return {name: record[name] for name in STREAMED_NAMES}

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id, "source": self.label, "kind": self.kind, "state": self.state,
            "created": round(self.created, 3), "mode": self.request.mode, "realtime": self.request.realtime,
            "speed": self.request.speed, "chunks": self.chunks, "skipped": self.skipped, "questions": self.asked,
            "answered": self.answered, "pending_questions": self.pending_questions,
            "stream_time": round(self.stream_time, 3),
            "last_lag_s": None if self.last_lag_s is None else round(self.last_lag_s, 4),
            "max_lag_s": None if self.max_lag_s is None else round(self.max_lag_s, 4),
            "cache_tokens": self.cache_tokens, "events": self.log.last_seq, "end_reason": self.end_reason,
            "media": self.kind == "file",
        }


def _memory_mb(device) -> float:
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        return torch.cuda.memory_allocated(device) / 2**20
    return current_rss_mb()


class _Answer:
    """Streams a free-text answer's tokens as ``token`` events: the text so far and what it added, without the
    `` ...`` end marker and without a half-decoded character."""

    def __init__(self, session: Session, question: Question, layout, t0: float) -> None:
        self.session, self.question, self.layout, self.t0 = session, question, layout, t0
        self.ids: list[int] = []
        self.sent = ""
        self.first_token_at: float | None = None

    def __call__(self, token: int) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.ids.append(token)
        marker = self.layout.marker
        held = 0  # trailing ids that may start the end marker: sent once the next token shows they do not
        for j in range(min(len(marker), len(self.ids)), 0, -1):
            if self.ids[-j:] == marker[:j]:
                held = j
                break
        text = self.layout.decode(self.ids[:len(self.ids) - held]).strip()
        while text.endswith("\ufffd"):  # a character split across tokens: wait for the rest
            text = text[:-1]
        self._send(text)

    def finish(self, text: str) -> None:
        """Send what the streamed text lacks of the final answer (e.g. held back as a possible marker)."""
        self._send(text)

    def _send(self, text: str) -> None:
        if text == self.sent:
            return
        delta = text[len(self.sent):] if text.startswith(self.sent) else None
        self.sent = text
        self.session.log.append("token", question_id=self.question.id, text=text, delta=delta)


class SessionManager:
    """The sessions of one model (see the module doc).

    ``loaded``: the ``LoadedModel``; ``checkpoint``: its ``streaming_vlm.json`` settings; ``server_settings``: the
    settings given to the server (its flags: above the checkpoint, below a session's own); ``media_root``: where
    file sources may be; ``demo_video``: the bundled clip (source ``demo``). ``engine_factory(config, vision_spec)``
    builds a session's engine (default: a ``StreamSession`` on ``loaded``; tests pass their own).
    """

    def __init__(self, loaded, *, checkpoint: Mapping[str, Any], server_settings: Mapping[str, Any],
                 limits: Limits, media_root: str, demo_video: str, model_name: str,
                 engine_factory: Callable[..., Any] | None = None) -> None:
        from streaming_vlm.preprocess import VisionSpec

        self.loaded, self.limits, self.media_root, self.demo_video = loaded, limits, media_root, demo_video
        self.model_name = model_name
        self.checkpoint, self.server_settings = dict(checkpoint), dict(server_settings)
        self.base_settings, self.base_sources = stream_settings.resolve(self.server_settings,
                                                                        checkpoint=self.checkpoint)
        self.base_spec = VisionSpec.from_pretrained(loaded.path) if loaded is not None else VisionSpec()
        self.device = getattr(loaded, "device", "cpu")
        tokenizer = getattr(loaded, "tokenizer", None)
        self.special_tokens: frozenset[str] = frozenset()
        if tokenizer is not None:
            added = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
            self.special_tokens = frozenset(added | set(tokenizer.all_special_tokens))
        self._engine_factory = engine_factory or self._stream_session
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._ordinals = itertools.count()
        self._wake = threading.Event()
        self._closing = False
        self._worker: threading.Thread | None = None
        self._last_served = -1
        self.steps = 0
        self.batches: collections.Counter[int] = collections.Counter()  # step_many calls by number of sessions

    # ---- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="model worker", daemon=True)
                self._worker.start()

    def stop_all(self, reason: str = "server shutting down") -> None:
        """Refuse new sessions and ask the worker to end every session with ``reason``; does not wait."""
        with self._lock:
            self._closing = True
            sessions = [s for s in self._sessions.values() if isinstance(s, Session)]
        for session in sessions:
            self.stop(session.id, reason)
        self._wake.set()

    def close(self, timeout: float = 5.0) -> None:
        """End every session ("server shutting down") and stop the worker (waits up to ``timeout`` s for it)."""
        self.stop_all()
        if self._worker is not None:
            self._worker.join(timeout)

    def wake(self) -> None:
        self._wake.set()

    # ---- sessions -------------------------------------------------------------------------------------------

    def _stream_session(self, config, vision_spec):
        from streaming_vlm.engine import StreamSession

        return StreamSession(self.loaded.model, self.loaded.tokenizer, config, vision_spec=vision_spec)

    def resolve_settings(self, given: Mapping[str, Any]) -> tuple[stream_settings.StreamSettings, dict[str, str]]:
        """A session's settings: defaults < checkpoint < the server's flags < ``given``; :class:`AccessError` 400
        for a name that is not a session's setting or a bad value."""
        unknown = sorted(str(k) for k in set(given) - set(STREAMED_NAMES))
        if unknown:
            raise AccessError(400, f"unknown stream setting(s) {', '.join(unknown)} "
                                   f"(known: {', '.join(STREAMED_NAMES)})")
        try:
            resolved, sources = stream_settings.resolve(
                dict(given), config=self.server_settings, checkpoint=self.checkpoint)
            resolved.check_chunks()
        except (ValueError, TypeError) as exc:
            raise AccessError(400, f"settings: {exc}") from None
        return resolved, {k: ("session" if v == "flag" else "server" if v == "config" else v)
                          for k, v in sources.items() if k in STREAMED_NAMES}

    def check_text(self, text: str, what: str) -> None:
        """:class:`AccessError` 400 when ``text`` (a question, an option, a prompt) holds one of the tokenizer's special
        tokens as text: the tokenizer would read it as that token and break the turns or the vision blocks."""
        for token in self.special_tokens:
            if token in text:
                raise AccessError(400, f"{what} contains the special token {token!r}")

    def ask(self, session: Session, request: QuestionRequest) -> Question:
        """Queue a question on ``session`` (see :meth:`Session.queue_question`) and wake the worker."""
        self.check_text(request.text, "the question")
        for option in request.options or ():
            self.check_text(option, "an option")
        question = session.queue_question(request)
        self.wake()
        return question

    def create(self, request: SessionRequest) -> Session:
        """Check ``request``, build its source, feed and engine, and start it. :class:`AccessError`: 400 bad
        request or settings, 403 a path outside the media root, 404 a missing file, 429 at capacity."""
        if request.mode not in ("streaming", "full", "sliding", "recompute"):
            raise AccessError(400, f"mode must be one of streaming, full, sliding, recompute, got {request.mode!r}")
        resolved, sources = self.resolve_settings(request.settings)
        for text, what in ((request.previous_text, "previous_text"), (resolved.query, "the query"),
                           (resolved.system_prompt, "the system prompt")):
            self.check_text(text, what)
        spec = None if request.push else classify_source(request.source, media_root=self.media_root,
                                                         protocols=NETWORK_PROTOCOLS, demo_video=self.demo_video)
        kind = "push" if spec is None else spec.kind
        if kind != "file" and not request.push and any(
                getattr(request, n) != d for n, d in (("realtime", True), ("speed", 1.0), ("start", 0.0),
                                                      ("duration", None))):
            raise AccessError(400, "realtime, speed, start and duration apply to file sources only")
        generation = getattr(self.loaded, "generation_defaults", None)
        try:
            config = resolved.stream_config(request.mode, previous_text=request.previous_text,
                                            generation_defaults=generation)
        except (ValueError, TypeError) as exc:
            raise AccessError(400, f"settings: {exc}") from None
        vision_spec = resolved.vision_spec(self.base_spec)

        with self._lock:  # reserve a slot before building anything
            if self._closing:
                raise AccessError(503, "the server is shutting down")
            running = sum(1 for s in self._sessions.values() if not s.ended)
            if running >= self.limits.max_sessions:
                raise AccessError(429, f"the server runs its maximum of {self.limits.max_sessions} sessions; "
                                       "stop one or try later")
            ordinal = next(self._ordinals)
            sid = f"s{ordinal + 1}-{secrets.token_hex(3)}"
            self._sessions[sid] = placeholder = _Reserved(sid)
        try:
            clock = Clock(request.speed if kind == "file" else 1.0)
            source = self._open_source(kind, spec, request, resolved, clock)
            try:
                engine = self._engine_factory(config, vision_spec)
            except Exception:
                source.close()
                raise
        except AccessError:
            self._release(sid, placeholder)
            raise
        except (SourceError, VideoError, ValueError) as exc:
            self._release(sid, placeholder)
            raise AccessError(400, str(exc)) from None
        except BaseException:
            self._release(sid, placeholder)
            raise
        waking = WakingSource(source, self.wake)
        if kind == "file" and not request.realtime:
            feed = LosslessFeed(waking)
        else:
            feed = LiveFeed(waking, max_ready=request.max_ready, clock=clock)
        session = Session(id=sid, ordinal=ordinal, request=request, kind=kind,
                          label=spec.label if spec else "push", target=spec.target if spec else None,
                          settings=resolved, sources=sources, source=source, feed=feed, engine=engine, clock=clock,
                          limits=self.limits)
        session.log.append("started", source=session.label, kind=kind, mode=request.mode,
                           settings=session.settings_record(), setting_sources=session.setting_sources,
                           realtime=request.realtime, speed=request.speed, max_ready=request.max_ready)
        with self._lock:
            self._sessions[sid] = session
        feed.start()
        self.wake()
        return session

    def _release(self, sid: str, placeholder) -> None:
        with self._lock:
            if self._sessions.get(sid) is placeholder:
                del self._sessions[sid]

    def _open_source(self, kind: str, spec, request: SessionRequest, s, clock: Clock) -> Source:
        if kind == "push":
            return PushSource(fps=s.fps, chunk_seconds=s.chunk_seconds, max_width=self.limits.max_frame_width,
                              max_height=self.limits.max_frame_height, max_bytes=self.limits.max_frame_bytes,
                              clock=clock, name="push")
        if kind == "file":
            return FileSource(spec.target, fps=s.fps, chunk_seconds=s.chunk_seconds, start=request.start,
                              duration=request.duration, realtime=request.realtime, clock=clock, name=spec.label)
        if kind == "camera":
            return camera_source(spec.target, fps=s.fps, chunk_seconds=s.chunk_seconds, clock=clock)
        return UrlSource(spec.target, fps=s.fps, chunk_seconds=s.chunk_seconds, protocols=NETWORK_PROTOCOLS,
                         clock=clock)

    def get(self, sid: str) -> Session:
        """:class:`AccessError` 404 for an unknown (or forgotten) session."""
        session = self._sessions.get(sid)
        if not isinstance(session, Session):
            raise AccessError(404, f"no session {sid!r}")
        return session

    def sessions(self) -> list[Session]:
        with self._lock:
            return [s for s in self._sessions.values() if isinstance(s, Session)]

    def running(self) -> int:
        with self._lock:
            return sum(1 for s in self._sessions.values() if not s.ended)

    def stop(self, sid: str, reason: str = "stopped") -> Session:
        """Ask the worker to end session ``sid`` with ``reason`` (its source stops at once)."""
        session = self.get(sid)
        if not session.ended and session.stop_reason is None:
            session.stop_reason = reason
            session.feed.close(timeout=0)
        self.wake()
        return session

    def push(self, session: Session, data: bytes, t: float, *, format: str = "jpeg", width: int | None = None,
             height: int | None = None) -> None:
        """Push one frame to a push session (blocking: decodes the frame). :class:`FrameError` (frame dropped, the
        session goes on) or :class:`AccessError` 409 (not a push session, or ended)."""
        if session.kind != "push":
            raise AccessError(409, f"session {session.id} is not a push session")
        if session.ended or session.stop_reason:
            raise AccessError(409, f"session {session.id} has ended")
        session.take_frame_slot()
        if len(data) > self.limits.max_frame_bytes:
            raise FrameError(f"frame of {len(data)} bytes is over the limit of {self.limits.max_frame_bytes}")
        with session.push_lock:
            session.source.push(data, t, format=format, width=width, height=height)

    def finish_push(self, session: Session, end: float | None = None) -> None:
        if session.kind != "push":
            raise AccessError(409, f"session {session.id} is not a push session")
        with session.push_lock:
            session.source.finish(end)
        self.wake()

    # ---- the worker -----------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.clear()
            with self._lock:
                live = sorted((s for s in self._sessions.values() if isinstance(s, Session) and not s.ended),
                              key=lambda s: s.ordinal)
                if self._closing and not live:
                    return
            # round robin: start after the session served last
            order = [s for s in live if s.ordinal > self._last_served] + [s for s in live
                                                                          if s.ordinal <= self._last_served]
            served = False
            for i, session in enumerate(order):
                fed = self._guarded(session, self._poll, session)
                if fed is None:
                    continue
                group = [(session, fed)]
                if self._batchable(session):  # one ready chunk from each later session that can join it
                    for other in order[i + 1:]:
                        if self._batchable(other, session):
                            more = self._guarded(other, self._poll, other)
                            if more is not None:
                                group.append((other, more))
                self._guarded(session, self._serve, group)
                self._last_served = group[-1][0].ordinal
                served = True
                break
            if not served:
                self._wake.wait(0.05 if live else 1.0)

    def _guarded(self, session: Session, work: Callable[..., Any], *args: Any) -> Any:
        """``work(*args)`` for ``session``; an exception (a bug here must not take the worker, and every session,
        down) ends ``session`` and gives None."""
        try:
            return work(*args)
        except Exception as exc:
            logger.exception("session %s failed", session.id)
            if not session.ended:
                self._end(session, f"internal error: {type(exc).__name__}: {_line(exc)}", True)
            return None

    def _poll(self, session: Session) -> FeedChunk | None:
        """Handle a stop request, idleness, issues and the end of ``session``'s feed; its next chunk if one is
        ready (taken from the feed), else None."""
        if session.stop_reason is not None:
            self._end(session, session.stop_reason, False)
            return None
        if session.kind == "push" and time.monotonic() - session.last_frame_at > self.limits.push_idle_s:
            self._end(session, f"no frame for {self.limits.push_idle_s:g} s", False)
            return None
        while True:
            try:
                event = session.feed.get(timeout=0)
            except Exception as exc:  # the feed is ours; never let it take the worker down
                logger.exception("feed of session %s failed", session.id)
                self._end(session, f"source failed: {type(exc).__name__}: {_line(exc)}", True)
                return None
            if event is None:
                return None
            if isinstance(event, FeedIssue):
                session.log.append("issue", message=event.message)
                continue
            if isinstance(event, FeedEnd):
                self._end(session, event.reason, event.error)
                return None
            return event

    def _batchable(self, session: Session, lead: Session | None = None) -> bool:
        """Whether ``session``'s next chunk can go through ``batch.step_many`` (with ``lead``'s): a ``StreamSession``
        on ``lead``'s model, running, whose next question, if any, is free text."""
        from streaming_vlm.engine import StreamSession

        engine = session.engine
        if not isinstance(engine, StreamSession) or session.ended or session.stop_reason is not None:
            return False
        if lead is not None and engine.model is not getattr(lead.engine, "model", None):
            return False
        question = session.peek_question()
        return question is None or not question.request.options

    def _serve(self, group: list[tuple[Session, FeedChunk]]) -> None:
        """Run one chunk of each session of ``group`` through the model (together when two or more can be)."""
        work = [(session, fed, session.next_question()) for session, fed in group]
        alone = [w for w in work if w[2] is not None and w[2].request.options]  # asked with options just now
        together = [w for w in work if w not in alone]
        if len(together) < 2:
            alone, together = work, []
        if together:
            try:
                self._step_many(together)
            except Exception as exc:  # a model error ends the sessions of the batch
                logger.exception("model error in a batch of sessions %s", ", ".join(w[0].id for w in together))
                for session, _, _ in together:
                    if not session.ended:
                        self._end(session, f"model error: {type(exc).__name__}: {_line(exc)}", True)
                self._empty_cuda_cache()
        for session, fed, question in alone:
            try:
                self._step(session, fed, question)
            except Exception as exc:  # a model error ends this session only
                logger.exception("model error in session %s", session.id)
                self._end(session, f"model error: {type(exc).__name__}: {_line(exc)}", True)
                self._empty_cuda_cache()

    def _empty_cuda_cache(self) -> None:
        if getattr(self.device, "type", "cpu") == "cuda":  # e.g. out of memory: give back the cache
            import torch

            torch.cuda.empty_cache()

    def _begin(self, session: Session, fed: FeedChunk) -> None:
        """Bookkeeping of a chunk taken for the model: skipped chunks, lag."""
        if fed.skipped is not None:
            sk = fed.skipped
            session.skipped += sk.count
            session.log.append("skipped", first=sk.first, last=sk.last, count=sk.count, start=round(sk.start, 3),
                               end=round(sk.end, 3))
        session.last_lag_s = fed.lag_s
        session.max_lag_s = fed.lag_s if session.max_lag_s is None else max(session.max_lag_s, fed.lag_s)

    def _step_many(self, work: list[tuple[Session, FeedChunk, Question | None]]) -> None:
        """One chunk of each session in one ``batch.step_many``; the same events as :meth:`_step` gives each."""
        from streaming_vlm.batch import step_many

        for session, fed, _ in work:
            self._begin(session, fed)
        t0 = time.perf_counter()
        streams = [None if q is None else _Answer(s, q, s.engine.layout, t0) for s, _, q in work]
        limits = [None if q is None else q.request.max_tokens or self.limits.answer_tokens for _, _, q in work]
        results = step_many([s.engine for s, _, _ in work],
                            [(f.chunk.frames, f.chunk.start, f.chunk.end) for _, f, _ in work],
                            questions=[None if q is None else q.request.text for _, _, q in work],
                            on_token=streams, max_new_tokens=limits)
        self.batches[len(work)] += 1
        if self.limits.step_delay_s:
            time.sleep(self.limits.step_delay_s)
        for (session, fed, question), stream, result in zip(work, streams, results, strict=True):
            first_token_at = None
            if stream is not None:
                stream.finish(result.text)
                first_token_at = stream.first_token_at or time.perf_counter()
            self._record(session, fed, question, result.text, result.new_tokens, t0, first_token_at, {})

    def _step(self, session: Session, fed: FeedChunk, question: Question | None) -> None:
        """One chunk of ``session`` alone (``question``: the one it answers, already taken from its queue)."""
        chunk = fed.chunk
        self._begin(session, fed)
        engine = session.engine
        first_token_at = None
        t0 = time.perf_counter()
        extra: dict[str, Any] = {}
        if question is not None and question.request.options:
            options = list(question.request.options)
            choice = engine.choose(chunk.frames, chunk.start, chunk.end, question.request.text, options)
            first_token_at = time.perf_counter()
            text, new_tokens = choice.option, 0
            extra = {"choice": choice.index, "logprobs": [round(x, 4) for x in choice.logprobs]}
        elif question is not None:
            limit = question.request.max_tokens or self.limits.answer_tokens
            stream = _Answer(session, question, engine.layout, t0)
            result = engine.step(chunk.frames, chunk.start, chunk.end, question=question.request.text,
                                 on_token=stream, max_new_tokens=limit)
            stream.finish(result.text)
            first_token_at = stream.first_token_at or time.perf_counter()
            text, new_tokens = result.text, result.new_tokens
        else:
            result = engine.step(chunk.frames, chunk.start, chunk.end)
            text, new_tokens = result.text, result.new_tokens
        if self.limits.step_delay_s:
            time.sleep(self.limits.step_delay_s)
        self._record(session, fed, question, text, new_tokens, t0, first_token_at, extra)

    def _record(self, session: Session, fed: FeedChunk, question: Question | None, text: str, new_tokens: int,
                t0: float, first_token_at: float | None, extra: dict[str, Any]) -> None:
        """The events and transcript line of a chunk whose model work began at ``t0`` and has just ended."""
        chunk, engine = fed.chunk, session.engine
        latency = time.perf_counter() - t0
        self.steps += 1
        session.chunks += 1
        session.state = "running"
        session.cache_tokens = int(engine.cache.num_tokens)
        session.stream_time = chunk.end
        session.last_frame = chunk.frames[-1].copy()
        delay = max(0.0, session.clock.now() - fed.ready_at)
        fields = {"index": chunk.index, "round": session.chunks - 1, "start": round(chunk.start, 3),
                  "end": round(chunk.end, 3), "text": text, "latency_s": round(latency, 4),
                  "lag_s": round(fed.lag_s, 4), "delay_s": round(delay, 4), "cache_tokens": session.cache_tokens,
                  "new_tokens": new_tokens, "memory_mb": round(_memory_mb(self.device), 1)}
        record = {"index": chunk.index, "start": fields["start"], "end": fields["end"], "text": text,
                  "latency_s": fields["latency_s"], "new_tokens": new_tokens, "cache_tokens": session.cache_tokens,
                  "lag_s": fields["lag_s"]}
        if question is None:
            session.log.append("commentary", **fields)
        else:
            session.answered += 1
            qfields = {"question_id": question.id, "question": question.request.text,
                       "first_token_s": round(first_token_at - t0, 4),
                       "wait_s": round(first_token_at - question.asked_at, 4), **extra}
            record |= {"question_id": question.id, "question": question.request.text, **extra}
            session.log.append("answer", **fields, **qfields)
        session.transcript.append(record)

    def _end(self, session: Session, reason: str, error: bool) -> None:
        session.feed.close(timeout=0)
        session.state = "ended"
        session.end_reason, session.end_error = reason, error
        for question in session.drop_questions():
            session.log.append("error", message=f"question {question.id} was not answered: the session ended",
                               question_id=question.id)
        session.engine = None  # the cache goes with it
        report = {"chunks": session.chunks, "skipped": session.skipped,
                  "max_lag_s": None if session.max_lag_s is None else round(session.max_lag_s, 4)}
        session.log.append("end", reason=reason, error=error, **report)
        logger.info("session %s ended: %s", session.id, reason)
        with self._lock:
            ended = [s for s in self._sessions.values() if isinstance(s, Session) and s.ended]
            for old in ended[:max(0, len(ended) - self.limits.ended_kept)]:
                del self._sessions[old.id]


def _line(exc: BaseException, limit: int = 300) -> str:
    """An exception's text on one line, shortened."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


class _Reserved:
    """A slot taken by a session being built."""

    def __init__(self, sid: str) -> None:
        self.id = sid
        self.ended = False


def parse_session_request(obj: Any) -> SessionRequest:
    """:class:`SessionRequest` from JSON, or :class:`AccessError` 400."""
    try:
        return SessionRequest.from_json(obj)
    except BadMessage as exc:
        raise AccessError(400, str(exc)) from None

