"""Feeds of a served session, beside ``sources.LiveFeed``: a source that wakes the model worker, a feed that never
drops.

- :class:`WakingSource` wraps a source so that the worker, which polls every session's feed without blocking, is
  woken as soon as the feed has stored a chunk, on each issue and at the end (instead of polling on a timer).
- :class:`LosslessFeed` is ``realtime: false`` for a file: every chunk, read ahead by a bounded queue, handed over
  as fast as the worker takes them; the same ``start``/``get``/``close`` as ``LiveFeed``, lag 0.

Nothing here runs at import; threads start in :meth:`LosslessFeed.start` (or the ``LiveFeed`` that runs a
:class:`WakingSource`).
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
from collections.abc import Callable

from streaming_vlm.sources import FeedChunk, FeedEnd, FeedIssue, Source, SourceError
from streaming_vlm.video import VideoError

logger = logging.getLogger(__name__)


class WakingSource:
    """A source that wakes the worker after the feed has taken each chunk, after each issue and at its end."""

    def __init__(self, source: Source, wake: Callable[[], None]) -> None:
        self.source, self.wake = source, wake
        self.name, self.clock = source.name, source.clock

    def chunks(self, notify=None):
        def notify_and_wake(message: str) -> None:
            if notify is not None:
                notify(message)
            self.wake()

        return self._chunks(self.source.chunks(notify_and_wake))  # at once: a push source reports from now on

    def _chunks(self, inner):
        try:
            for chunk in inner:
                yield chunk
                self.wake()  # resumed once the feed has stored the chunk
        finally:
            close = getattr(inner, "close", None)
            if close is not None:
                close()
            self.wake()

    def close(self) -> None:
        self.source.close()


class LosslessFeed:
    """A feed that never drops: a file read ahead by at most ``depth`` chunks, handed over as fast as the worker
    takes them (``realtime: false``). The same ``start``/``get``/``close`` as ``LiveFeed`` (lag 0)."""

    def __init__(self, source: Source, depth: int = 2) -> None:
        self.source = source
        self.clock = source.clock
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._events: collections.deque = collections.deque()
        self._closed = threading.Event()
        self._end: FeedEnd | None = None
        self._thread = threading.Thread(target=self._run, name=f"feed {source.name}", daemon=True)
        self._delivered = 0

    def start(self) -> LosslessFeed:
        if not self._thread.is_alive() and self._end is None:
            self._thread.start()
        return self

    def _run(self) -> None:
        reason, error = "end of stream", False
        chunks = self.source.chunks(lambda message: self._events.append(FeedIssue(message, self.clock.now())))
        try:
            for chunk in chunks:
                while not self._closed.is_set():
                    try:
                        self._queue.put(chunk, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._closed.is_set():
                    break
        except (SourceError, VideoError) as exc:
            reason, error = str(exc), True
        except Exception as exc:  # a bug in a source ends its session, never the server
            logger.exception("source %s failed", self.source.name)
            reason, error = f"{self.source.name}: source failed: {type(exc).__name__}: {exc}", True
        finally:
            chunks.close()
        self._end = FeedEnd("closed" if self._closed.is_set() and not error else reason, error, self.clock.now())

    def get(self, timeout: float | None = None):
        if self._events:
            return self._events.popleft()
        try:
            chunk = self._queue.get_nowait()
        except queue.Empty:
            return self._end if self._end is not None and self._queue.empty() else None
        self._delivered += 1
        now = self.clock.now()
        return FeedChunk(chunk=chunk, ready_at=now, delivered_at=now, lag_s=0.0, skipped=None)

    def close(self, timeout: float = 1.0) -> None:
        self._closed.set()
        self.source.close()
        if self._end is None and not self._thread.is_alive():
            self._end = FeedEnd("closed", False, self.clock.now())
