"""A session's event log: numbered JSON events, kept in a bounded ring, followed by any number of clients.

Events are appended by the model's worker thread (and by request handlers: an ``error`` for a bad message) and
read by asyncio tasks (WebSocket and SSE clients). Contract:

- Every event is a JSON-able dict with ``type``, ``seq`` (1, 2, 3, ... per session, in order), ``session`` (its
  id) and ``at`` (server wall time, Unix seconds), plus the type's own fields (docs/serve.md lists them).
- The log keeps the last ``capacity`` events; :meth:`EventLog.since` replays those after a sequence number. A
  client that falls more than ``capacity`` events behind sees a jump in ``seq`` (what it missed is gone).
- :meth:`EventLog.follow` yields events after ``since`` as they come, and ``None`` every ``heartbeat`` seconds
  without one; it ends after the ``end`` event, which is always the log's last.

Waiting readers are woken through their own event loop (``call_soon_threadsafe``), so appending never blocks on a
reader and a reader never polls.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import AsyncIterator
from typing import Any


class EventLog:
    """The events of session ``session``, the last ``capacity`` kept (see the module doc)."""

    def __init__(self, session: str, capacity: int = 4096) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.session = session
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=capacity)
        self._lock = threading.Lock()
        self._seq = 0
        self._ended = False
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    @property
    def last_seq(self) -> int:
        return self._seq

    @property
    def ended(self) -> bool:
        """Whether the ``end`` event is in the log (no event follows it)."""
        return self._ended

    def append(self, type: str, **fields: Any) -> dict[str, Any] | None:
        """Add an event and wake every waiting reader; returns it (None once the log has ended: nothing follows
        ``end``)."""
        with self._lock:
            if self._ended:
                return None
            self._seq += 1
            event = {"type": type, "seq": self._seq, "session": self.session, "at": round(time.time(), 3), **fields}
            self._events.append(event)
            if type == "end":
                self._ended = True
            waiters = list(self._waiters)
        for loop, flag in waiters:
            try:
                loop.call_soon_threadsafe(flag.set)
            except RuntimeError:  # the reader's loop is closed: it is gone
                pass
        return event

    def since(self, seq: int = 0) -> list[dict[str, Any]]:
        """The kept events with ``seq`` greater than ``seq``, in order."""
        with self._lock:
            if not self._events or self._events[-1]["seq"] <= seq:
                return []
            first = self._events[0]["seq"]
            start = max(0, seq - first + 1)
            return list(self._events)[start:]

    async def wait(self, seq: int, timeout: float | None) -> list[dict[str, Any]]:
        """The events after ``seq``, waiting up to ``timeout`` seconds for one (``[]`` on timeout or once the log
        has ended with nothing after ``seq``)."""
        flag = asyncio.Event()
        key = (asyncio.get_running_loop(), flag)
        with self._lock:
            self._waiters.add(key)
        try:
            events = self.since(seq)
            if events or self._ended:
                return events
            try:
                await asyncio.wait_for(flag.wait(), timeout)
            except asyncio.TimeoutError:
                return []
            return self.since(seq)
        finally:
            with self._lock:
                self._waiters.discard(key)

    async def follow(self, since: int = 0, heartbeat: float = 15.0) -> AsyncIterator[dict[str, Any] | None]:
        """Events after ``since`` as they come (``None`` after ``heartbeat`` s of silence); ends after ``end``."""
        seq = since
        while True:
            events = await self.wait(seq, heartbeat)
            if not events:
                if self._ended and self._seq <= seq:
                    return
                yield None
                continue
            for event in events:
                seq = event["seq"]
                yield event
                if event["type"] == "end":
                    return
