"""Live video sources and real-time pacing: timed chunks for a live session, never waiting for the model.

This module owns where a live session's frames come from and when its chunks are handed over. It knows nothing of
models, sessions or servers: it yields :class:`~streaming_vlm.video.Chunk` objects exactly like
:meth:`VideoReader.chunks() <streaming_vlm.video.VideoReader.chunks>` and leaves them to whoever consumes them.

Contract
--------
* **Sources.** A :class:`Source` yields chunks in order through ``chunks(notify)``, a blocking generator, and stops
  soon after ``close()`` (from any thread). ``notify`` receives one line per non-fatal problem (a reconnection, a
  damaged region, a frame rescaled); a fatal one raises :class:`SourceError` (one line, naming the source). Four
  kinds: :class:`FileSource` (a file, optionally played at wall-clock speed), :class:`UrlSource` (any URL FFmpeg
  opens, with timeouts and bounded reconnection), :func:`camera_source` (a local camera device through FFmpeg's
  ``v4l2`` input) and :class:`PushSource` (frames pushed by a client, JPEG or raw RGB).
* **Chunks and samples.** Chunk ``k`` covers ``[k*c, (k+1)*c)`` seconds (``c = chunk_seconds``; a file source
  starts at its ``start``) and holds exactly ``n = fps * c`` RGB ``uint8`` frames ``[n, H, W, 3]`` sampled at the
  centres of ``n`` equal sub-intervals; the frame used at time ``t`` is the one on screen: the last frame whose
  timestamp is ``<= t`` (exactly, in the source's own time base), the first frame before it. A gap in the
  timestamps repeats the last frame. Every frame has the first frame's size (others are rescaled, once noted).
  A live chunk is complete, and yielded, when the source has a frame at or after its end; when the stream ends
  the last chunk may be partial and ends where the stream ends (the last frame's end).
* **Timestamps come from the source, never from arrival.** Time 0 is the first frame's timestamp: its pts for
  files and URLs (as in :mod:`streaming_vlm.video`), the first pushed timestamp for a push source. A timestamp
  more than 1 s before the previous one (a restarted or wrapped stream, a reconnection to a stream whose pts start
  over) or more than 60 s after it (a bogus jump, which would otherwise fill a minute or more of chunks with one
  frozen frame) re-anchors the timeline: that frame follows the previous one by ``max(one frame, the wall time
  since the previous frame)``, and is reported. A smaller step back (damaged or reordered data) is kept, as the
  file reader keeps it; a smaller gap (a reconnection whose pts go on) is kept and repeats the last frame.
* **Pacing.** :class:`LiveFeed` runs a source in its own thread, so frames keep arriving while the model works,
  and holds at most ``max_ready`` complete chunks (default 1). When a chunk completes while the buffer is full,
  the oldest ready chunk is dropped: the consumer always gets the oldest of the newest ``max_ready`` chunks, so a
  consumer slower than real time skips whole chunks instead of falling behind. Skipped chunks are reported with
  the next delivered chunk (their indices and time range). **Lag** of a delivered chunk = the clock when it is
  handed to the consumer minus the clock when the source completed it (for a paced file: when its end passed on
  the wall clock). While the source runs it stays below ``max_ready`` chunk periods (plus thread scheduling),
  whatever the model's speed; the at most ``max_ready`` chunks still ready when the stream ends are delivered
  after it, each within one more model step. Time spent before the source receives data (network, encoder,
  segment latency) is not visible here; the consumer's own processing time is its to add (``ready_at``).
* **Clocks.** Every wait and timestamp of wall time goes through a :class:`Clock` (monotonic seconds, optionally
  faster than real time), so tests and replays need not sleep in real time.

Nothing here runs at import; threads start only in :meth:`LiveFeed.start`.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

import av
import numpy as np

from streaming_vlm.settings import DEFAULTS
from streaming_vlm.video import (
    _MAX_DEMUX_ERRORS,
    Chunk,
    VideoError,
    VideoReader,
    _DamageReport,
    _ffmpeg_reason,
    _fmt_s,
    _frames_per_chunk,
    _one_line,
    _StreamEnd,
    _video_stream,
)

__all__ = [
    "NETWORK_PROTOCOLS",
    "Clock",
    "FeedChunk",
    "FeedEnd",
    "FeedEvent",
    "FeedIssue",
    "FeedReport",
    "FileSource",
    "FrameError",
    "LiveFeed",
    "PushSource",
    "Skipped",
    "Source",
    "SourceError",
    "UrlSource",
    "camera_source",
    "open_source",
]

logger = logging.getLogger(__name__)

Notify = Callable[[str], None]

# FFmpeg protocols a server may let clients name (UrlSource(protocols=...)): network only, no local files
# (file:, concat:, subfile:, pipe:, ...). FFmpeg applies the list to nested opens too (HLS segments, RTSP's RTP).
NETWORK_PROTOCOLS = ("http", "https", "tls", "tcp", "udp", "rtp", "rtsp", "rtsps", "srtp", "rtmp", "rtmps", "hls",
                     "crypto", "httpproxy")
# Errors that retrying cannot fix: the source ends at once instead of reconnecting.
_PERMANENT = (
    av.error.InvalidDataError,  # not a media format FFmpeg reads
    av.error.LookupError,  # unknown protocol, demuxer, option or decoder
    av.error.ArgumentError,  # bad option, or a protocol outside the allowed list
    av.error.PermissionError,
    av.error.IsADirectoryError,
    av.error.HTTPBadRequestError,
    av.error.HTTPUnauthorizedError,
    av.error.HTTPForbiddenError,
    VideoError,  # no video stream, a text file, ...
)
# A timeline going back by more than _RESTART_S seconds (restarted, wrapped) or forward by more than _MAX_GAP_S (a
# jump no stream time should fill with repeated frames, e.g. a client's bogus timestamp) is re-anchored.
_RESTART_S = Fraction(1)
_MAX_GAP_S = Fraction(60)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")  # two letters at least: "C:" is a Windows drive


class SourceError(Exception):
    """A source cannot go on; str(e) is ONE line naming the source and the reason."""

    def __init__(self, message: str) -> None:
        super().__init__(_one_line(message))


class FrameError(ValueError):
    """A pushed frame was refused (bad size, not a JPEG, bad timestamp, ...); the push source goes on."""

    def __init__(self, message: str) -> None:
        super().__init__(_one_line(message))


class _Closed(Exception):
    """Raised inside a source's frame generator when the source is closed."""


# --------------------------------------------------------------------------------------------------
# clock


class Clock:
    """Monotonic seconds, running ``speed`` times faster than real time (1 = real time).

    ``now()`` reads it; ``wait(event, s)`` waits ``s`` of its seconds or until ``event`` is set (True if set);
    ``sleep(s)`` waits unconditionally. Subclass it for a fake clock in single-threaded tests.
    """

    def __init__(self, speed: float = 1.0) -> None:
        speed = float(speed)
        if not (math.isfinite(speed) and speed > 0):
            raise ValueError(f"clock speed must be a positive number, got {speed!r}")
        self.speed = speed

    def now(self) -> float:
        return time.monotonic() * self.speed

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(max(0.0, seconds) / self.speed)

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds) / self.speed)


# --------------------------------------------------------------------------------------------------
# the chunk grid of a live stream


def _grid_chunks(frames: Iterator[tuple[Fraction, object]], *, fps: float, chunk_seconds: float, n: int,
                 to_rgb: Callable[[object], np.ndarray]) -> Iterator[Chunk]:
    """Chunks on the grid from frames ``(time in s from time 0, picture)`` in presentation order.

    The sampling rule is :class:`~streaming_vlm.video.VideoReader`'s (the frame on screen; same float sample
    times), applied as frames arrive: each sample waits for the first frame after it, and a chunk is yielded once
    a frame at or after its end arrives or the stream ends. ``frames`` returns (``StopIteration.value``) where
    the stream ends, in s; that ends the last chunk. Only the frames in use are held and converted.
    """
    current: tuple[Fraction, object] | None = None  # the last frame at or before the latest sample time
    pending: tuple[Fraction, object] | None = None  # the next frame, not yet on screen
    exhausted = False
    stream_end: Fraction | None = None

    def advance(limit: Fraction, inclusive: bool) -> None:
        """Make ``current`` the last frame with time <= limit (< limit unless ``inclusive``)."""
        nonlocal current, pending, exhausted, stream_end
        while not exhausted:
            if pending is None:
                try:
                    pending = next(frames)
                except StopIteration as stop:
                    exhausted, stream_end = True, stop.value
                    break
            if pending[0] <= limit if inclusive else pending[0] < limit:
                current, pending = pending, None
            else:
                break

    converted_key: object = None
    converted: np.ndarray | None = None
    end: float | None = None
    k = 0
    while True:
        chunk_start = 0.0 + k * chunk_seconds  # the same floats as VideoReader with start = 0
        if end is not None and chunk_start >= end:
            return
        times = np.array([chunk_start + (j + 0.5) / fps for j in range(n)], dtype=np.float64)
        frames_out: np.ndarray | None = None
        frame_times = np.empty(n, dtype=np.float64)
        for j in range(n):
            advance(Fraction(float(times[j])), inclusive=True)
            chosen = current if current is not None else pending
            if chosen is None:  # the stream ended without a frame
                return
            if chosen[1] is not converted_key:
                converted, converted_key = to_rgb(chosen[1]), chosen[1]
            if frames_out is None:
                frames_out = np.empty((n, *converted.shape), dtype=np.uint8)
            frames_out[j] = converted
            frame_times[j] = float(chosen[0])
        boundary = 0.0 + (k + 1) * chunk_seconds
        advance(Fraction(boundary), inclusive=False)  # a live chunk is complete once a frame reaches its end
        if exhausted and end is None:
            end = float(stream_end if stream_end is not None else current[0] if current is not None else 0)
        if end is not None and chunk_start >= end:
            return
        yield Chunk(index=k, start=chunk_start, end=boundary if end is None else min(boundary, end), times=times,
                    frame_times=frame_times, frames=frames_out)
        k += 1


class _Timeline:
    """Source timestamps (absolute s) to stream time (s from time 0).

    A frame more than ``_RESTART_S`` before the previous one or more than ``_MAX_GAP_S`` after it re-anchors the
    timeline: it follows the previous frame by ``max(frame_duration, wall time since the previous frame)``.
    Smaller steps back (damaged or reordered data) are kept, as the file reader keeps them (such a frame is on
    screen from when it arrives); smaller gaps are kept and repeat the last frame.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.base: Fraction | None = None  # absolute time of time 0
        self.last = Fraction(0)  # stream time of the latest frame
        self.last_wall = 0.0
        self.anchors = 0  # re-anchorings so far

    def place(self, absolute: Fraction, frame_duration: Fraction) -> tuple[Fraction, Fraction | None]:
        """Stream time of a frame at ``absolute`` s, and the jump it re-anchored (s, raw) or None."""
        now = self.clock.now()
        jump = None
        if self.base is None:
            self.base = absolute
        elif not (-_RESTART_S <= absolute - self.base - self.last <= _MAX_GAP_S):
            jump = absolute - self.base - self.last
            gap = max(frame_duration, Fraction(max(0.0, now - self.last_wall)))
            self.base = absolute - (self.last + gap)
            self.anchors += 1
        t = absolute - self.base
        self.last, self.last_wall = t, now
        return t, jump


def _paced(chunks: Iterator[Chunk], clock: Clock, stop: threading.Event, origin: float) -> Iterator[Chunk]:
    """Release each chunk once ``chunk.end - origin`` s have passed on ``clock`` since the first request."""
    t0 = clock.now()
    for chunk in chunks:
        delay = t0 + (chunk.end - origin) - clock.now()
        if delay > 0 and clock.wait(stop, delay):
            return
        if stop.is_set():
            return
        yield chunk


def _raising(exc: BaseException) -> Iterator[Chunk]:
    raise exc
    yield  # a generator


def _log_notify(message: str) -> None:
    logger.warning("%s", message)


# --------------------------------------------------------------------------------------------------
# sources


class Source(Protocol):
    """What :class:`LiveFeed` consumes. ``name`` names the source in messages; ``clock`` times it."""

    name: str
    clock: Clock

    def chunks(self, notify: Notify | None = None) -> Iterator[Chunk]:
        """Yield chunks in order as they complete; return at the end of the stream or soon after ``close()``;
        raise :class:`SourceError` when the source cannot go on. ``notify`` gets non-fatal problems."""
        ...

    def close(self) -> None:
        """Stop: the generator returns soon (from any thread). Idempotent."""
        ...


class FileSource:
    """A video file through :class:`~streaming_vlm.video.VideoReader`: the same chunks, bit for bit.

    With ``realtime`` each chunk is released once ``chunk.end - start`` seconds have passed on ``clock`` since
    :meth:`chunks` was called (decoding runs ahead; ``clock`` may run faster than real time); otherwise as fast
    as the file decodes. Construction opens the file: :class:`~streaming_vlm.video.VideoError` or ``ValueError``
    for a bad file or option. Decoding damage is reported through Python's warnings, as by the reader.
    """

    def __init__(self, path: str | os.PathLike, *, fps: float = DEFAULTS.fps,
                 chunk_seconds: float = DEFAULTS.chunk_seconds, start: float = 0.0,
                 duration: float | None = None, realtime: bool = True, clock: Clock | None = None,
                 name: str | None = None) -> None:
        self.reader = VideoReader(path, fps=fps, chunk_seconds=chunk_seconds, start=start, duration=duration)
        self.realtime = realtime
        self.clock = clock or Clock()
        self.name = name or self.reader.path
        self._stop = threading.Event()

    def chunks(self, notify: Notify | None = None) -> Iterator[Chunk]:
        chunks = self.reader.chunks()
        if self.realtime:
            chunks = _paced(chunks, self.clock, self._stop, self.reader.start)
        try:
            for chunk in chunks:
                if self._stop.is_set():
                    return
                yield chunk
        except VideoError as exc:
            raise SourceError(str(exc)) from None
        finally:
            chunks.close()

    def close(self) -> None:
        self._stop.set()


def _default_opener(url: str, fmt: str | None, options: Mapping[str, str], timeouts: tuple[float, float]):
    return av.open(url, mode="r", format=fmt, options=dict(options), timeout=timeouts)


class UrlSource:
    """Any URL or device FFmpeg opens (RTSP, HLS, HTTP, ``file:``, a plain path, ``lavfi``...), through PyAV.

    * **Timeouts.** Opening waits at most ``open_timeout`` s, each read at most ``read_timeout`` s (PyAV's
      interrupt, and FFmpeg's ``rw_timeout`` for a URL, which also bounds the reads made while opening).
      ``close()`` is seen between packets, so a stalled read holds the thread for up to ``read_timeout``.
    * **Reconnection.** A failed open, a read error or a timeout closes the connection and opens the URL again
      after ``backoff_s * 2**(i-1)`` s (at most ``max_backoff_s``) for the ``i``-th consecutive failure; each is
      reported through ``notify``. After ``max_reconnects`` consecutive failures without a decoded frame the
      source ends with :class:`SourceError` (the last reason). Errors retrying cannot fix (not a media format,
      unknown protocol, refused protocol, permission, no video stream, HTTP 400/401/403) end it at once. A clean
      end of stream ends the source, unless ``reconnect_at_eof`` (a live server that may close cleanly).
    * **Times** come from the stream's pts (see the module contract for timelines that go back); the last chunk
      ends where :class:`~streaming_vlm.video.VideoReader` would end it (last packet timestamp + its duration).
      Over a ``file:`` URL the chunks are the reader's, bit for bit. ``realtime`` paces a stream that is not
      live (a file, HLS VOD) at ``clock`` speed, like ``ffmpeg -re``.
    * **Security.** FFmpeg reads local files too (``file:``, ``concat:``, playlists naming local paths).
      ``protocols`` (e.g. :data:`NETWORK_PROTOCOLS`) is passed as FFmpeg's ``protocol_whitelist``, which also
      binds nested opens; the URL's own scheme is checked up front with a clear ``SourceError``.

    ``opener()`` (tests) replaces ``av.open`` and returns an input container.
    """

    def __init__(self, url: str, *, fps: float = DEFAULTS.fps, chunk_seconds: float = DEFAULTS.chunk_seconds,
                 format: str | None = None,
                 options: Mapping[str, str] | None = None, protocols: Collection[str] | None = None,
                 open_timeout: float = 10.0, read_timeout: float = 10.0, max_reconnects: int = 5,
                 backoff_s: float = 0.5, max_backoff_s: float = 8.0, reconnect_at_eof: bool = False,
                 realtime: bool = False, clock: Clock | None = None, name: str | None = None,
                 opener: Callable[[], object] | None = None) -> None:
        self.n = _frames_per_chunk(float(fps), float(chunk_seconds))
        for label, value in (("open_timeout", open_timeout), ("read_timeout", read_timeout),
                             ("max_backoff_s", max_backoff_s)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{label} must be a positive number of seconds, got {value!r}")
        if not (math.isfinite(backoff_s) and backoff_s >= 0):
            raise ValueError(f"backoff_s must be a number of seconds >= 0, got {backoff_s!r}")
        if int(max_reconnects) != max_reconnects or max_reconnects < 0:
            raise ValueError(f"max_reconnects must be a whole number >= 0, got {max_reconnects!r}")
        self.url = str(url)
        self.name = name or self.url
        self.fps, self.chunk_seconds = float(fps), float(chunk_seconds)
        self.max_reconnects, self.backoff_s, self.max_backoff_s = int(max_reconnects), backoff_s, max_backoff_s
        self.reconnect_at_eof, self.realtime = reconnect_at_eof, realtime
        self.clock = clock or Clock()
        opts = dict(options or {})
        if format is None:  # a protocol's own I/O timeout (us) also bounds the reads made while opening (probing)
            opts.setdefault("rw_timeout", str(round(float(read_timeout) * 1e6)))
        if protocols is not None:
            allowed = sorted({p.lower() for p in protocols})
            match = _SCHEME.match(self.url)
            scheme = match.group(1).lower() if match else "file"
            if format is None and scheme not in allowed:
                raise SourceError(f"{self.name}: protocol {scheme!r} is not allowed (allowed: {', '.join(allowed)})")
            opts["protocol_whitelist"] = ",".join(allowed)
        if opener is None:
            def opener() -> object:
                return _default_opener(self.url, format, opts, (float(open_timeout), float(read_timeout)))
        self._open = opener
        self._stop = threading.Event()

    def close(self) -> None:
        self._stop.set()

    def chunks(self, notify: Notify | None = None) -> Iterator[Chunk]:
        notify = notify or _log_notify
        state: dict = {}
        chunks = _grid_chunks(self._frames(notify, state), fps=self.fps, chunk_seconds=self.chunk_seconds, n=self.n,
                              to_rgb=lambda frame: self._to_rgb(frame, state, notify))
        if self.realtime:
            chunks = _paced(chunks, self.clock, self._stop, 0.0)
        try:
            for chunk in chunks:
                if self._stop.is_set():
                    return
                yield chunk
        except _Closed:
            return
        finally:
            chunks.close()
        if "size" not in state:
            raise SourceError(f"{self.name}: the stream ended without a decodable video frame")

    def _to_rgb(self, frame, state: dict, notify: Notify) -> np.ndarray:
        size = state.setdefault("size", (frame.width, frame.height))
        if (frame.width, frame.height) == size:
            return frame.to_ndarray(format="rgb24")
        if not state.get("resized"):
            state["resized"] = True
            notify(f"{self.name}: resolution changes from {size[0]}x{size[1]} to {frame.width}x{frame.height}; "
                   f"rescaling to {size[0]}x{size[1]}")
        return frame.reformat(width=size[0], height=size[1], format="rgb24").to_ndarray()

    def _failed(self, failures: int, what: str, exc: BaseException, notify: Notify, retry_any: bool = False) -> None:
        """Report a failure; wait the backoff, or raise SourceError when it cannot or may not be retried (a lost
        connection, ``retry_any``, is always retried, up to ``max_reconnects``)."""
        reason = _ffmpeg_reason(exc)
        if isinstance(exc, _PERMANENT) and not retry_any:
            raise SourceError(f"{self.name}: {what} ({reason})")
        if failures > self.max_reconnects:
            if self.max_reconnects == 0:
                raise SourceError(f"{self.name}: {what} ({reason})")
            raise SourceError(f"{self.name}: gave up after {self.max_reconnects} reconnection attempt(s) "
                              f"(last: {what}: {reason})")
        delay = min(self.max_backoff_s, self.backoff_s * 2 ** (failures - 1))
        notify(f"{self.name}: {what} ({reason}); reconnecting in {_fmt_s(delay)} s "
               f"(attempt {failures} of {self.max_reconnects})")
        if self.clock.wait(self._stop, delay):
            raise _Closed

    def _frames(self, notify: Notify, state: dict) -> Iterator[tuple[Fraction, object]]:
        """Decoded frames ``(stream time, frame)`` over as many connections as it takes; returns the stream end."""
        timeline = _Timeline(self.clock)
        failures = 0  # consecutive failed connections without a decoded frame
        while True:
            if self._stop.is_set():
                raise _Closed
            try:
                container = self._open()
            except (av.FFmpegError, OSError) as exc:
                failures += 1
                self._failed(failures, "cannot open the stream", exc, notify)
                continue
            try:
                stream = _video_stream(container, self.name)
                stream.thread_type = "AUTO"
                tb = Fraction(stream.time_base)
                rate = stream.average_rate or stream.guessed_rate
                frame_ticks = max(1, round(1 / (rate * tb))) if rate else max(1, round(Fraction(1, 25) / tb))
                step = frame_ticks * tb
                stream_end = _StreamEnd()
                anchors = timeline.anchors
                damage = _DamageReport(self.name, notify)
                last_pts: int | None = None
                error: BaseException | None = None
                packets = container.demux(stream)
                bad_reads = 0
                while True:
                    if self._stop.is_set():
                        raise _Closed
                    try:
                        packet = next(packets, None)
                    except av.error.InvalidDataError as exc:  # damaged data: demuxing goes on, as in the reader
                        bad_reads += 1
                        damage.error(float(timeline.last), exc, "unreadable part(s) of the stream")
                        if bad_reads < _MAX_DEMUX_ERRORS:
                            packets = container.demux(stream)
                            continue
                        error = exc
                        break
                    except (av.FFmpegError, OSError) as exc:  # the connection failed or timed out
                        error = exc
                        break
                    bad_reads = 0
                    try:
                        if packet is None:  # the end: drain what the decoder holds (as VideoReader does)
                            decoded = stream.codec_context.decode(None)
                        else:
                            stream_end.add(packet)
                            decoded = packet.decode()
                    except (av.FFmpegError, OSError) as exc:
                        if packet is None:
                            break
                        damage.error(float(timeline.last), exc)
                        continue
                    for frame in decoded:
                        pts = frame.pts if frame.pts is not None else frame.dts
                        if pts is None:
                            pts = 0 if last_pts is None else last_pts + frame_ticks
                        last_pts = stream_end.last_frame = pts
                        t, jump = timeline.place(pts * tb, step)
                        if jump is not None:
                            notify(f"{self.name}: the stream's timestamps jump by {float(jump):+.3f} s; going on at "
                                   f"{_fmt_s(float(t))} s")
                        state.setdefault("size", (frame.width, frame.height))
                        damage.progress(float(t))
                        failures = 0
                        yield t, frame
                    if packet is None:
                        break
                damage.flush()
            except _PERMANENT as exc:
                raise SourceError(f"{self.name}: {_ffmpeg_reason(exc)}") from None
            finally:
                container.close()
            if error is None:
                if not self.reconnect_at_eof:
                    if timeline.base is None:
                        return Fraction(0)
                    ticks = stream_end.ticks(frame_ticks)
                    if ticks is None or timeline.anchors != anchors:  # no packet times, or not on this timeline
                        return timeline.last + step
                    return ticks * tb - timeline.base
                error = EOFError("the stream ended")
            failures += 1
            self._failed(failures, "the connection was lost", error, notify, retry_any=True)


def camera_source(device: str = "/dev/video0", *, fps: float = DEFAULTS.fps,
                  chunk_seconds: float = DEFAULTS.chunk_seconds,
                  video_size: str | None = None, framerate: float | None = None, input_format: str | None = None,
                  clock: Clock | None = None, read_timeout: float = 5.0, max_reconnects: int = 3) -> UrlSource:
    """A local camera (Linux: ``/dev/videoN``) through FFmpeg's ``v4l2`` input: a :class:`UrlSource`.

    ``video_size`` (``"1280x720"``), ``framerate`` and ``input_format`` (the camera's pixel format, e.g.
    ``"mjpeg"``) are v4l2 options; unset, the driver's current mode is used. Times are the driver's frame
    timestamps. Raises :class:`SourceError` when the device does not exist or PyAV's FFmpeg has no ``v4l2`` input
    (PyAV's binary wheels leave it out: install PyAV built on the system's FFmpeg, ``pip install av --no-binary
    av``).
    """
    if not os.path.exists(device):
        raise SourceError(f"camera {device}: no such device")
    if "v4l2" not in av.formats_available:
        raise SourceError(f"camera {device}: this PyAV build has no v4l2 input (its wheels leave it out; "
                          f"install PyAV built on the system FFmpeg: pip install av --no-binary av)")
    options = {"video_size": video_size, "framerate": None if framerate is None else f"{framerate:g}",
               "input_format": input_format}
    return UrlSource(device, fps=fps, chunk_seconds=chunk_seconds, format="v4l2",
                     options={k: v for k, v in options.items() if v is not None}, clock=clock,
                     read_timeout=read_timeout, max_reconnects=max_reconnects, name=f"camera {device}")


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, read without decoding; None if ``data`` is not a JPEG."""
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if length < 2:
            return None
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn
            if i + 9 > len(data):
                return None
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        if marker == 0xDA:  # scan before any frame header
            return None
        i += 2 + length
    return None


class PushSource:
    """Frames pushed by a client (a browser's webcam or screen): :meth:`push` JPEG or raw RGB with timestamps.

    * **Times.** ``timestamp`` is the client's clock in seconds; the first frame's is time 0, and every one must
      be later than the one before. The frame on screen at each sample time is used, as for files.
    * **Validation.** :meth:`push` decodes the frame in the caller's thread and raises :class:`FrameError` (one
      line) for anything it refuses: an unknown format, data over ``max_bytes``, a size over
      ``max_width`` x ``max_height`` (a JPEG's size is read from its header before decoding), raw data whose
      length is not ``width * height * 3``, data that does not decode, a timestamp that is not a finite number
      later than the previous one, or a push after :meth:`finish`/:meth:`close`. A refused frame changes
      nothing: the source goes on. Frames of another size than the first are rescaled to it (noted once).
    * **Backpressure.** At most ``max_queued`` decoded frames wait for :meth:`chunks` (run by a
      :class:`LiveFeed`, which takes them at once); :meth:`push` blocks while the queue is full.
    * **End.** :meth:`finish` ends the stream: at ``end`` (client time), or at the end of the last frame (its
      timestamp plus the interval before it, or one sample, ``1/fps``, for a single frame); the last partial
      chunk is delivered. :meth:`close` stops at once.
    """

    def __init__(self, *, fps: float = DEFAULTS.fps, chunk_seconds: float = DEFAULTS.chunk_seconds,
                 max_width: int = 3840,
                 max_height: int = 2160, max_bytes: int = 3840 * 2160 * 3, max_queued: int = 8,
                 clock: Clock | None = None, name: str = "push") -> None:
        self.n = _frames_per_chunk(float(fps), float(chunk_seconds))
        for label, value in (("max_width", max_width), ("max_height", max_height), ("max_bytes", max_bytes),
                             ("max_queued", max_queued)):
            if int(value) != value or value < 1:
                raise ValueError(f"{label} must be a whole number >= 1, got {value!r}")
        self.fps, self.chunk_seconds = float(fps), float(chunk_seconds)
        self.max_width, self.max_height, self.max_bytes = int(max_width), int(max_height), int(max_bytes)
        self.clock = clock or Clock()
        self.name = name
        self._queue: collections.deque[tuple[Fraction, np.ndarray]] = collections.deque()
        self._max_queued = int(max_queued)
        self._cond = threading.Condition()
        self._push_lock = threading.Lock()  # one push at a time: timestamps are checked and queued in order
        self._timeline = _Timeline(self.clock)
        self._last_raw: Fraction | None = None  # the previous frame's timestamp, as the client gave it
        self._interval: Fraction | None = None  # stream time between the last two frames
        self._size: tuple[int, int] | None = None  # (width, height) of the first frame
        self._end: Fraction | None = None
        self._finished = False
        self._closed = False
        self._notify: Notify = _log_notify
        self._resized = False

    # -- the client's side ----------------------------------------------------------------------------

    def push(self, data: bytes | bytearray | memoryview | np.ndarray, timestamp: float, *, format: str = "jpeg",
             width: int | None = None, height: int | None = None) -> None:
        """Add one frame shown from ``timestamp`` (client seconds). ``format="jpeg"``: ``data`` is a JPEG file;
        ``format="rgb"``: a ``uint8 [H, W, 3]`` array, or ``width * height * 3`` bytes row by row. Raises
        :class:`FrameError`; may block while ``max_queued`` frames wait (see the class docstring)."""
        image = self._decode(data, format, width, height)
        try:
            ts = Fraction(float(timestamp))
        except (TypeError, ValueError, OverflowError):
            raise FrameError(f"{self.name}: timestamp must be a finite number of seconds, got {timestamp!r}") from None
        with self._push_lock:
            with self._cond:
                if self._finished or self._closed:
                    raise FrameError(f"{self.name}: the stream has ended; no more frames are taken")
                if self._last_raw is not None and ts <= self._last_raw:
                    raise FrameError(f"{self.name}: timestamp {float(ts):g} s is not after the previous frame's "
                                     f"({float(self._last_raw):g} s)")
            image = self._fit(image)
            with self._cond:
                while len(self._queue) >= self._max_queued and not self._closed:
                    self._cond.wait()
                if self._closed:
                    raise FrameError(f"{self.name}: the stream has ended; no more frames are taken")
                first = self._last_raw is None
                previous = self._timeline.last
                t, jump = self._timeline.place(ts, self._interval or 1 / Fraction(self.fps))
                if jump is not None:
                    self._notify(f"{self.name}: timestamps jump by {float(jump):+.3f} s; going on at "
                                 f"{_fmt_s(float(t))} s")
                if not first:
                    self._interval = t - previous
                self._last_raw = ts
                self._queue.append((t, image))
                self._cond.notify_all()

    def finish(self, end: float | None = None) -> None:
        """No more frames: the stream ends at ``end`` (client seconds, after the last frame) or at the last frame's
        end. Raises FrameError for an ``end`` not after the last frame. Idempotent."""
        with self._push_lock, self._cond:
            if self._finished or self._closed:
                return
            if end is not None:
                try:
                    stop: Fraction | None = Fraction(float(end))
                except (TypeError, ValueError, OverflowError):
                    stop = None
                if stop is None or (self._last_raw is not None and stop <= self._last_raw):
                    raise FrameError(f"{self.name}: the end ({end!r} s) must be a finite time after the last frame")
                if self._last_raw is not None:
                    self._end = self._timeline.last + min(stop - self._last_raw, _MAX_GAP_S)
            self._finished = True
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _decode(self, data, fmt: str, width: int | None, height: int | None) -> np.ndarray:
        if fmt == "rgb":
            if isinstance(data, np.ndarray):
                if data.dtype != np.uint8 or data.ndim != 3 or data.shape[2] != 3:
                    raise FrameError(f"{self.name}: an RGB frame must be a uint8 array [H, W, 3], "
                                     f"got {data.dtype} {list(data.shape)}")
                h, w = data.shape[:2]
                self._check_size(w, h)
                return np.array(data, dtype=np.uint8, order="C")  # a copy: the caller may reuse its array
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise FrameError(f"{self.name}: an RGB frame must be bytes or a uint8 array, got {type(data).__name__}")
            if width is None or height is None:
                raise FrameError(f"{self.name}: raw RGB bytes need width and height")
            if int(width) != width or int(height) != height or width < 1 or height < 1:
                raise FrameError(f"{self.name}: width and height must be whole numbers >= 1, got {width!r}x{height!r}")
            self._check_size(int(width), int(height))
            size = len(data) if not isinstance(data, memoryview) else data.nbytes
            if size != width * height * 3:
                raise FrameError(f"{self.name}: raw RGB frame of {size} bytes; {width}x{height} needs "
                                 f"{width * height * 3}")
            return np.frombuffer(bytes(data), dtype=np.uint8).reshape(int(height), int(width), 3)
        if fmt != "jpeg":
            raise FrameError(f"{self.name}: unknown frame format {fmt!r} (use 'jpeg' or 'rgb')")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise FrameError(f"{self.name}: a JPEG frame must be bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) > self.max_bytes:
            raise FrameError(f"{self.name}: frame of {len(data)} bytes is over the limit of {self.max_bytes}")
        size = _jpeg_size(data)
        if size is None:
            raise FrameError(f"{self.name}: not a JPEG image ({len(data)} bytes without a JPEG frame header)")
        self._check_size(*size)
        try:
            decoder = av.CodecContext.create("mjpeg", "r")
            frames = decoder.decode(av.Packet(data))
        except (av.FFmpegError, OSError) as exc:
            raise FrameError(f"{self.name}: the JPEG does not decode ({_ffmpeg_reason(exc)})") from None
        if len(frames) != 1 or (frames[0].width, frames[0].height) != size:
            raise FrameError(f"{self.name}: the JPEG does not decode to one {size[0]}x{size[1]} image")
        return frames[0].to_ndarray(format="rgb24")

    def _check_size(self, width: int, height: int) -> None:
        if width > self.max_width or height > self.max_height:
            raise FrameError(f"{self.name}: frame of {width}x{height} is over the limit of "
                             f"{self.max_width}x{self.max_height}")
        if width * height * 3 > self.max_bytes:
            raise FrameError(f"{self.name}: frame of {width}x{height} needs {width * height * 3} bytes, over the "
                             f"limit of {self.max_bytes}")

    def _fit(self, image: np.ndarray) -> np.ndarray:
        """The image at the first frame's size (rescaled, noted once)."""
        height, width = image.shape[:2]
        if self._size is None:
            self._size = (width, height)
        if (width, height) == self._size:
            return image
        w0, h0 = self._size
        if not self._resized:
            self._resized = True
            self._notify(f"{self.name}: frame size changes from {w0}x{h0} to {width}x{height}; rescaling to {w0}x{h0}")
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        return frame.reformat(width=w0, height=h0, format="rgb24").to_ndarray()

    # -- the consumer's side --------------------------------------------------------------------------

    def chunks(self, notify: Notify | None = None) -> Iterator[Chunk]:
        """The chunks of the pushed frames; ``notify`` takes effect at once (for pushes made before iterating)."""
        self._notify = notify or _log_notify
        return self._chunks()

    def _chunks(self) -> Iterator[Chunk]:
        chunks = _grid_chunks(self._frames(), fps=self.fps, chunk_seconds=self.chunk_seconds, n=self.n,
                              to_rgb=lambda image: image)
        try:
            yield from chunks
        except _Closed:
            return
        finally:
            chunks.close()

    def _frames(self) -> Iterator[tuple[Fraction, np.ndarray]]:
        while True:
            with self._cond:
                while not self._queue and not self._finished and not self._closed:
                    self._cond.wait()
                if self._closed:
                    raise _Closed
                if not self._queue:  # finished and drained
                    if self._last_raw is None:
                        return Fraction(0)
                    if self._end is not None:
                        return self._end
                    return self._timeline.last + (self._interval or 1 / Fraction(self.fps))
                item = self._queue.popleft()
                self._cond.notify_all()
            yield item


def open_source(spec: str, *, fps: float = DEFAULTS.fps, chunk_seconds: float = DEFAULTS.chunk_seconds,
                realtime: bool = True,
                clock: Clock | None = None, protocols: Collection[str] | None = None) -> Source:
    """A source for ``spec``: a URL (``scheme:...``) → :class:`UrlSource` (``realtime`` paces it only when the
    scheme is ``file``), ``/dev/video*`` → :func:`camera_source`, anything else → :class:`FileSource` (played at
    ``realtime`` pace). No access control: a server checks ``spec`` first (media root, allowed protocols)."""
    match = _SCHEME.match(spec)
    if match:
        scheme = match.group(1).lower()
        return UrlSource(spec, fps=fps, chunk_seconds=chunk_seconds, realtime=realtime and scheme == "file",
                         clock=clock, protocols=protocols)
    if spec.startswith("/dev/video"):
        return camera_source(spec, fps=fps, chunk_seconds=chunk_seconds, clock=clock)
    return FileSource(spec, fps=fps, chunk_seconds=chunk_seconds, realtime=realtime, clock=clock)


# --------------------------------------------------------------------------------------------------
# pacing


@dataclass(frozen=True)
class Skipped:
    """Chunks ``first..last`` (``count`` of them), covering ``[start, end)`` s, were dropped unseen."""

    first: int
    last: int
    count: int
    start: float
    end: float


@dataclass(frozen=True)
class FeedChunk:
    """A chunk for the consumer. ``ready_at``/``delivered_at``: the feed's clock when the source completed it and
    when it was handed over; ``lag_s`` = their difference; ``skipped``: chunks dropped since the previous one."""

    chunk: Chunk
    ready_at: float
    delivered_at: float
    lag_s: float
    skipped: Skipped | None


@dataclass(frozen=True)
class FeedIssue:
    """A non-fatal problem of the source (reconnecting, damaged data, rescaled frames), at ``at`` on the clock."""

    message: str
    at: float


@dataclass(frozen=True)
class FeedEnd:
    """The feed is over: ``reason`` is "end of stream", "closed" or the source's error (``error`` True)."""

    reason: str
    error: bool
    at: float


FeedEvent = FeedChunk | FeedIssue | FeedEnd


@dataclass(frozen=True)
class FeedReport:
    """Totals of a feed so far. ``peak_ready`` never exceeds ``max_ready``; ``issues_dropped`` counts issues
    that were not fetched before newer ones pushed them out of the bounded issue queue."""

    delivered: int
    skipped: int
    issues: int
    issues_dropped: int
    last_lag_s: float | None
    max_lag_s: float | None
    mean_lag_s: float | None
    peak_ready: int
    end: FeedEnd | None


class LiveFeed:
    """Runs a source in a thread and hands its chunks over without ever waiting for the consumer.

    ``max_ready`` complete chunks at most are held; when one more completes, the oldest is dropped (reported as
    :class:`Skipped` with the next delivered chunk). :meth:`get` returns the next event: pending issues first, then
    the oldest ready chunk, then, once the source is over and every ready chunk delivered, :class:`FeedEnd`
    (again on every later call). Iterating yields events up to and including the end. A source exception never
    escapes: it ends the feed with its one-line reason. ``clock`` defaults to the source's.
    """

    _MAX_ISSUES = 64

    def __init__(self, source: Source, *, max_ready: int = 1, clock: Clock | None = None) -> None:
        if int(max_ready) != max_ready or max_ready < 1:
            raise ValueError(f"max_ready must be a whole number >= 1, got {max_ready!r}")
        self.source = source
        self.max_ready = int(max_ready)
        self.clock = clock or getattr(source, "clock", None) or Clock()
        self._cond = threading.Condition()
        self._ready: collections.deque[tuple[Chunk, float]] = collections.deque()
        self._dropped: Skipped | None = None  # dropped since the last delivery (consecutive indices); no frames kept
        self._issues: collections.deque[FeedIssue] = collections.deque()
        self._end: FeedEnd | None = None
        self._closing = False
        self._thread: threading.Thread | None = None
        self._delivered = self._skipped = self._issue_count = self._issues_dropped = self._peak = 0
        self._lag_last: float | None = None
        self._lag_max: float | None = None
        self._lag_sum = 0.0

    def start(self) -> LiveFeed:
        """Start the ingest thread (once). Returns self."""
        with self._cond:
            if self._thread is None:
                try:  # here, not in the thread: a push source reports to the feed from now on
                    chunks = self.source.chunks(self._issue)
                except Exception as exc:  # the thread reports it as the feed's end
                    chunks = _raising(exc)
                self._thread = threading.Thread(target=self._run, args=(chunks,), name=f"feed {self.source.name}",
                                                daemon=True)
                self._thread.start()
        return self

    def _run(self, chunks: Iterator[Chunk]) -> None:
        reason, error = "end of stream", False
        try:
            for chunk in chunks:
                if self._closing:
                    break
                self._put(chunk)
        except (SourceError, VideoError) as exc:
            reason, error = str(exc), True
        except Exception as exc:  # a bug in a source must end its feed, never the process serving it
            logger.exception("source %s failed", self.source.name)
            reason, error = f"{self.source.name}: source failed: {type(exc).__name__}: {_one_line(exc)}", True
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        with self._cond:
            if self._closing and not error:
                reason = "closed"
            self._end = FeedEnd(reason=reason, error=error, at=self.clock.now())
            self._cond.notify_all()

    def _put(self, chunk: Chunk) -> None:
        now = self.clock.now()
        with self._cond:
            if self._closing:
                return
            if len(self._ready) >= self.max_ready:
                old = self._ready.popleft()[0]
                d = self._dropped
                self._dropped = (Skipped(first=old.index, last=old.index, count=1, start=old.start, end=old.end)
                                 if d is None else
                                 Skipped(first=d.first, last=old.index, count=d.count + 1, start=d.start, end=old.end))
                self._skipped += 1
            self._ready.append((chunk, now))
            self._peak = max(self._peak, len(self._ready))
            self._cond.notify_all()

    def _issue(self, message: str) -> None:
        logger.warning("%s", message)
        with self._cond:
            if len(self._issues) >= self._MAX_ISSUES:
                self._issues.popleft()
                self._issues_dropped += 1
            self._issues.append(FeedIssue(message=_one_line(message), at=self.clock.now()))
            self._issue_count += 1
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> FeedEvent | None:
        """The next event, waiting up to ``timeout`` real seconds (None: until there is one); None on timeout.
        Starts the feed if needed."""
        self.start()
        with self._cond:
            if not self._cond.wait_for(lambda: self._issues or self._ready or self._end is not None, timeout):
                return None
            if self._issues:
                return self._issues.popleft()
            if self._ready:
                chunk, ready_at = self._ready.popleft()
                now = self.clock.now()
                skipped, self._dropped = self._dropped, None
                lag = max(0.0, now - ready_at)
                self._delivered += 1
                self._lag_last, self._lag_sum = lag, self._lag_sum + lag
                self._lag_max = lag if self._lag_max is None else max(self._lag_max, lag)
                return FeedChunk(chunk=chunk, ready_at=ready_at, delivered_at=now, lag_s=lag, skipped=skipped)
            return self._end

    def __iter__(self) -> Iterator[FeedEvent]:
        while True:
            event = self.get()
            yield event
            if isinstance(event, FeedEnd):
                return

    def close(self, timeout: float = 1.0) -> None:
        """Stop the source and drop what is ready; waits up to ``timeout`` real seconds for the thread (a URL
        source stalled in a read exits within its read timeout). Idempotent."""
        with self._cond:
            self._closing = True
            self._ready.clear()
            self._cond.notify_all()
        self.source.close()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._cond:
            if self._end is None and (thread is None or not thread.is_alive()):
                self._end = FeedEnd(reason="closed", error=False, at=self.clock.now())
            self._cond.notify_all()

    @property
    def ended(self) -> FeedEnd | None:
        """The end, once the source is over (some ready chunks may still wait for :meth:`get`)."""
        return self._end

    def report(self) -> FeedReport:
        with self._cond:
            return FeedReport(
                delivered=self._delivered, skipped=self._skipped, issues=self._issue_count,
                issues_dropped=self._issues_dropped, last_lag_s=self._lag_last, max_lag_s=self._lag_max,
                mean_lag_s=self._lag_sum / self._delivered if self._delivered else None, peak_ready=self._peak,
                end=self._end,
            )

    def __enter__(self) -> LiveFeed:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
