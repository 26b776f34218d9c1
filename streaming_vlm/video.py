"""Read a video file by time, chunk by chunk, in one sequential decoding pass.

Contract
--------
* **Time origin.** Time 0 is the presentation timestamp (pts) of the first frame the decoder
  outputs for the video stream. Every time in this module (``VideoInfo.duration``, ``start``,
  ``Chunk.start``/``end``/``times``/``frame_times``) is in seconds relative to that origin.
* **Video end.** The end of the video is the end of the last frame: its pts plus its duration.
  The last frame's duration is the duration the container stores for the last packet (in decode
  order); when the container stores none, it is one frame at the stream's frame rate (``1 / 25`` s
  when that is unknown too).
* **Chunks.** Chunk ``k`` covers ``[start + k*c, start + (k+1)*c)`` with ``c = chunk_seconds``.
  Chunks are produced while the chunk start is before the end (the video end, or
  ``start + duration`` when that is earlier); the last chunk may be partial and then ends there.
  ``Chunk.end`` is ``min(start + (k+1)*c, end)``, the same float as the next chunk's start.
* **Samples.** Every chunk, the last one included, holds exactly ``n = fps * c`` frames (this product
  must be a whole number), sampled at ``t_j = chunk_start + (j + 0.5) / fps`` for ``j = 0 .. n-1``:
  the centres of ``n`` equal sub-intervals.
* **Which frame.** The frame used for time ``t`` is the one on screen at ``t``: the last decoded
  frame whose pts is ``<= t`` (compared exactly, in the stream's own time base). Before the first
  frame the first frame is used; at or after the end (or ``start + duration``) the last frame before
  it is used. This works for any frame rate, variable frame rates, gaps in the timestamps and
  sources slower than the sampling rate (frames then repeat).
* **What is read.** Opening a video reads its container header and its first frame (time 0), once per
  process and file: the stated duration, time base, frame rate and size come from the container's metadata,
  never from a pass over the file. The duration a container states is not trusted as the end (it is
  estimated for MPEG-TS, too short for some variable-frame-rate MP4s, too long for a file cut short), so:
  a window that ends more than ``_END_SLACK_S`` (1 s) before the stated duration reads nothing else up
  front (``end`` is ``start + duration``); a window that reaches closer to it, or runs to the end, also
  demuxes, without decoding, the packets from the keyframe before that point to the end of the file (from
  the keyframe before ``start`` when the container states no duration), and ``end`` is exact. Reading then
  opens the file again, does at most one seek (to the keyframe before ``start``, only when ``start > 0``;
  if the first frame after it is too late, the file is reopened and decoded from the beginning instead)
  and decodes forward, packet by packet, only as far as the window needs. Only frames that are used are
  converted to RGB. Only the current chunk is held in memory.
* **A stream that ends early.** When the stream ends inside the window (before ``end``), the reader
  learns it while decoding: the last chunk ends at the end of the last frame (a partial chunk), and
  ``end`` and ``info.duration`` are updated. If that is more than ``_END_SLACK_S`` before the duration
  the container states (or an MPEG-TS file ends inside a transport packet), the file was cut short: one
  :class:`VideoTruncatedWarning` per pass says where the stream ended and what the container states, and
  ``VideoReader.cut_short`` holds the same words.
* **Errors.** A file that cannot be used raises :class:`VideoError` (one line, naming the file).
  Damaged data inside a usable video is skipped: one :class:`VideoDecodeWarning` per damaged region,
  and decoding goes on after it.

Frames are returned at the stored resolution as RGB ``uint8``; rotation metadata is not applied.
If the resolution changes mid-stream, later frames are rescaled to the first frame's size (with a
warning).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import sys
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from streaming_vlm.settings import DEFAULTS

__all__ = ["Chunk", "VideoDecodeWarning", "VideoError", "VideoInfo", "VideoReader", "VideoTruncatedWarning", "probe"]

logger = logging.getLogger(__name__)

# Decoders FFmpeg uses for text files ("tty" demuxer and relatives): such a "video" is not a video.
_TEXT_CODECS = frozenset({"ansi", "bintext", "xbin", "idf"})
_TEXT_FORMATS = frozenset({"tty", "bin", "xbin", "idf", "adf"})
# Decode errors less than this many seconds apart are reported as one damaged region.
_MERGE_GAP_S = 1.0
# Give up on a file after this many demux errors in a row without a packet in between.
_MAX_DEMUX_ERRORS = 32
# A window ending within this many seconds of the container's stated duration reads the file's last packets
# for the exact end; a stream ending more than this before the stated duration was cut short.
_END_SLACK_S = 1.0
# Transport packet sizes of MPEG-TS files (plain, M2TS with a timecode, with Reed-Solomon parity).
_TS_PACKET_SIZES = (188, 192, 204)


class VideoError(Exception):
    """A video cannot be used; str(e) is ONE clear line naming the file and the problem."""

    def __init__(self, message: str) -> None:
        super().__init__(_one_line(message))


class VideoDecodeWarning(UserWarning):
    """Part of a video could not be decoded and was skipped; decoding went on after it."""


class VideoTruncatedWarning(VideoDecodeWarning):
    """The video stream ended before the duration its container states: the file was cut short."""


@dataclass(frozen=True)
class VideoInfo:
    path: str
    duration: float
    """Seconds from time 0 to the end of the video as far as it is known: the end of the last frame (last pts +
    its duration) when the end was read (always by :func:`probe`); for a reader whose window ends well before
    the stated duration, that stated duration, or the window's end when the container states none."""
    avg_fps: float  # average source frame rate from the container (0.0 if unknown)
    width: int
    height: int
    stated_duration: float | None = None
    """The duration the container states for the video stream, in seconds from time 0 (None if none)."""


@dataclass
class Chunk:
    index: int  # k, 0-based
    start: float  # seconds (absolute video time) = start + k * chunk_seconds
    end: float  # min(start + chunk_seconds, video end)
    times: np.ndarray  # float64 [n], sampling times
    frame_times: np.ndarray  # float64 [n], pts (s) of the source frame used for each sample
    frames: np.ndarray  # uint8 [n, H, W, 3] RGB


# --------------------------------------------------------------------------------------------------
# helpers


def _one_line(text: object) -> str:
    return " ".join(str(text).splitlines()).strip()


def _fmt_s(seconds: float) -> str:
    """Seconds for messages: up to 3 decimals, at least one ("12.0", "0.05", "99.25")."""
    text = f"{seconds:.3f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _ffmpeg_reason(exc: BaseException) -> str:
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return _one_line(reason)


def _warn(message: str, category: type[VideoDecodeWarning] = VideoDecodeWarning) -> None:
    """Emit a warning attributed to the first caller outside this module."""
    frame = sys._getframe(1)
    level = 2
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
        level += 1
    warnings.warn(category(message), stacklevel=level)


def _open_input(path: str):
    """Open ``path`` with PyAV or raise VideoError."""
    if not os.path.exists(path):
        raise VideoError(f"{path}: no such file")
    if os.path.isdir(path):
        raise VideoError(f"{path}: is a directory, not a video file")
    if not os.path.isfile(path):
        raise VideoError(f"{path}: is not a regular file")
    if os.path.getsize(path) == 0:
        raise VideoError(f"{path}: is empty (0 bytes)")
    try:
        return av.open(path, mode="r")
    except av.error.InvalidDataError:
        raise VideoError(f"{path}: not a video file (FFmpeg cannot read its format)") from None
    except av.error.EOFError:
        raise VideoError(f"{path}: is empty or truncated (no media data)") from None
    except (av.FFmpegError, OSError) as exc:
        raise VideoError(f"{path}: cannot open the file ({_ffmpeg_reason(exc)})") from None


def _video_stream(container, path: str):
    """The first real video stream of ``container`` (cover art excluded), or VideoError."""
    fmt_names = set((container.format.name or "").split(","))
    for stream in container.streams.video:
        if stream.disposition & av.stream.Disposition.attached_pic:
            continue
        ctx = stream.codec_context
        if ctx is None:
            raise VideoError(f"{path}: no decoder available for its video stream")
        if ctx.name in _TEXT_CODECS or fmt_names & _TEXT_FORMATS:
            raise VideoError(f"{path}: not a video file (FFmpeg reads it as text)")
        return stream
    kinds = sorted({s.type for s in container.streams})
    found = f" (only {', '.join(kinds)})" if kinds else ""
    raise VideoError(f"{path}: has no video stream{found}")


def _packet_ts(packet) -> int | None:
    return packet.pts if packet.pts is not None else packet.dts


@dataclass(frozen=True)
class _Probe:
    path: str
    time_base: Fraction
    origin: int  # pts (ticks) of the first decoded frame = time 0
    frame_ticks: int  # ticks per frame: stamps frames that carry no timestamp; the last frame's default duration
    avg_fps: float
    width: int
    height: int
    stated: float | None  # the duration the container states for the video (s from time 0), None if none
    cut_packet: bool  # an MPEG-TS file whose size is no whole number of transport packets: cut mid-packet
    stamp: tuple = ()  # (size, mtime_ns) of a regular file: the key of the cached scans of its end

    def seconds(self, ticks: int) -> float:
        return float((ticks - self.origin) * self.time_base)

    def ticks(self, seconds: float) -> int:
        """The last tick at or before ``seconds``."""
        return self.origin + math.floor(Fraction(seconds) / self.time_base)

    def info(self, duration: float) -> VideoInfo:
        return VideoInfo(path=self.path, duration=duration, avg_fps=self.avg_fps, width=self.width,
                         height=self.height, stated_duration=self.stated)


class _StreamEnd:
    """Where a stream ends, from its demuxed packets: the largest timestamp plus the last packet's duration
    (in decode order), or one frame when the container stores no packet durations."""

    def __init__(self) -> None:
        self.packets = 0
        self.max_ts: int | None = None
        self.last_duration = 0
        self.last_frame: int | None = None  # pts of the last decoded frame, when frames are decoded too

    def add(self, packet) -> None:
        if packet.size and not packet.is_discard:
            self.packets += 1
            ts = _packet_ts(packet)
            if ts is not None:
                self.max_ts = ts if self.max_ts is None else max(self.max_ts, ts)
                self.last_duration = packet.duration or 0

    def ticks(self, frame_ticks: int) -> int | None:
        if self.max_ts is None:  # no packet timestamps: the last frame (stamped by the decoder) plus one frame
            return None if self.last_frame is None else self.last_frame + frame_ticks
        return self.max_ts + (self.last_duration if self.last_duration > 0 else frame_ticks)


def _demux(container, stream, on_error: Callable[[BaseException], None] | None = None) -> Iterator:
    """The packets of ``stream``, going on after unreadable parts (up to ``_MAX_DEMUX_ERRORS`` in a row);
    ``on_error`` sees each demuxing error."""
    packets = container.demux(stream)
    errors = 0
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except (av.FFmpegError, OSError) as exc:
            if on_error is not None:
                on_error(exc)
            errors += 1
            if errors >= _MAX_DEMUX_ERRORS:
                return
            packets = container.demux(stream)
            continue
        errors = 0
        yield packet


def _probe(path: str) -> _Probe:
    """Probe ``path``; a regular file's result is remembered per (path, size, mtime), so training, which reads
    thousands of clips from the same videos, opens each file's header once per process instead of once per clip."""
    try:
        st = os.stat(path)
    except OSError:
        st = None
    if st is None or not os.path.isfile(path):
        return _probe_uncached(path)  # raises the precise VideoError
    return _probe_file(path, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=1024)
def _probe_file(path: str, size: int, mtime_ns: int) -> _Probe:
    return dataclasses.replace(_probe_uncached(path), stamp=(size, mtime_ns))


def _probe_uncached(path: str) -> _Probe:
    container = _open_input(path)
    try:
        return _probe_open(container, path)
    finally:
        container.close()


def _probe_open(container, path: str) -> _Probe:
    """Metadata (time base, frame rate, size, stated duration) and the first frame; never reads past it."""
    stream = _video_stream(container, path)
    tb = stream.time_base
    if tb is None or tb <= 0:
        raise VideoError(f"{path}: the video stream has no usable time base")
    tb = Fraction(tb)

    first = None  # first decoded frame: its pts is time 0
    first_ts: int | None = None  # first packet timestamp, for a frame that carries none
    n_packets = decode_errors = 0
    for packet in _demux(container, stream):
        if packet.size and not packet.is_discard:
            n_packets += 1
            if first_ts is None:
                first_ts = _packet_ts(packet)
        try:
            for frame in packet.decode():
                first = frame
                break
        except (av.FFmpegError, OSError):
            decode_errors += 1
        if first is not None:
            break
    if first is None:
        detail = f"; {decode_errors} packet(s) failed to decode" if decode_errors else ""
        raise VideoError(f"{path}: contains no decodable video frames ({n_packets} packet(s){detail})")
    origin = first.pts if first.pts is not None else (first.dts if first.dts is not None else first_ts)
    origin = int(origin or 0)

    rate = stream.average_rate or stream.guessed_rate
    avg_fps = float(rate) if rate else 0.0
    frame_ticks = max(1, round(1 / (avg_fps * tb))) if avg_fps > 0 else max(1, round(Fraction(1, 25) / tb))

    size = os.path.getsize(path)
    fmt = container.format.name or ""
    return _Probe(
        path=path,
        time_base=tb,
        origin=origin,
        frame_ticks=frame_ticks,
        avg_fps=avg_fps,
        width=int(first.width),
        height=int(first.height),
        stated=_stated_end(container, stream, origin, tb),
        cut_packet=fmt == "mpegts" and all(size % n for n in _TS_PACKET_SIZES),
    )


def _stated_end(container, stream, origin: int, tb: Fraction) -> float | None:
    """The end of the video as the container states it, in seconds from time 0; None if it states none.

    In order: the stream's own duration (MP4, and MPEG-TS, where FFmpeg estimates it from the last timestamps
    in the file), Matroska's per-track ``DURATION`` tag, the container's duration (of its longest stream).
    """
    if stream.duration and stream.duration > 0:
        start = stream.start_time if stream.start_time is not None else origin
        return float((start + stream.duration - origin) * tb)
    tag = _parse_clock((stream.metadata or {}).get("DURATION", ""))
    if tag:
        return float(tag - origin * tb)
    if container.duration and container.duration > 0:
        start = Fraction(container.start_time or 0, av.time_base)
        return float(start + Fraction(container.duration, av.time_base) - origin * tb)
    return None


def _parse_clock(text: str) -> Fraction | None:
    """``HH:MM:SS.fffffffff`` (Matroska's DURATION tag) in seconds, or None."""
    parts = text.strip().split(":")
    if len(parts) != 3:
        return None
    try:
        h, m, s = int(parts[0]), int(parts[1]), Fraction(parts[2])
    except ValueError:
        return None
    total = h * 3600 + m * 60 + s
    return total if total > 0 else None


def _scan_end(p: _Probe, from_s: float) -> float | None:
    """Demux (without decoding) from the keyframe before ``from_s`` to the end of the file; where the stream
    ends (s), or None if no timestamped packet is found there (e.g. the file is cut before that keyframe)."""
    if p.stamp:
        return _scan_end_cached(p, from_s)
    return _scan_end_uncached(p, from_s)


@functools.lru_cache(maxsize=1024)
def _scan_end_cached(p: _Probe, from_s: float) -> float | None:
    return _scan_end_uncached(p, from_s)


def _scan_end_uncached(p: _Probe, from_s: float) -> float | None:
    container = _open_input(p.path)
    try:
        stream = _video_stream(container, p.path)
        if from_s > 0:
            try:
                container.seek(p.ticks(from_s), stream=stream, backward=True, any_frame=False)
            except (av.FFmpegError, OSError) as exc:
                logger.debug("%s: seek failed (%s); scanning from the beginning", p.path, exc)
                container.close()
                container = _open_input(p.path)
                stream = _video_stream(container, p.path)
                from_s = 0.0
        end = _StreamEnd()
        for packet in _demux(container, stream):
            end.add(packet)
    finally:
        container.close()
    ticks = end.ticks(p.frame_ticks)
    if ticks is None and end.packets and from_s <= 0:  # no timestamps at all: one frame_ticks per packet
        ticks = p.origin + end.packets * p.frame_ticks
    return None if ticks is None else p.seconds(ticks)


def probe(path: str | os.PathLike) -> VideoInfo:
    """A video's duration (the end of its last frame), frame rate and size. Raises VideoError.

    Reads the container's header, the first frame and the packets from the keyframe before the stated
    duration to the end of the file (the whole file only when the container states no duration or the file is
    cut before it); the result is remembered per file.
    """
    p = _probe(os.fsdecode(os.fspath(path)))
    end = _scan_end(p, max(0.0, p.stated - _END_SLACK_S)) if p.stated is not None else None
    if end is None:
        end = _scan_end(p, 0.0)
    return p.info(end if end is not None else p.seconds(p.origin + p.frame_ticks))


class _DamageReport:
    """Collect decode errors and warn once per damaged region (errors close together in time); ``report``, when
    given, receives each region's one-line message instead of a :class:`VideoDecodeWarning` (live sources)."""

    def __init__(self, path: str, report: Callable[[str], None] | None = None) -> None:
        self.path = path
        self._report = report
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.t0 = self.t1 = 0.0
        self.reason = self.what = ""

    def error(self, t: float, exc: BaseException, what: str = "undecodable packet(s)") -> None:
        if self.count and t - self.t1 > _MERGE_GAP_S:
            self.flush()
        if self.count:
            self.t1 = max(self.t1, t)
        else:
            self.t0 = self.t1 = t
            self.reason, self.what = _ffmpeg_reason(exc), what
        self.count += 1

    def progress(self, t: float) -> None:
        if self.count and t - self.t1 > _MERGE_GAP_S:
            self.flush()

    def flush(self) -> None:
        if not self.count:
            return
        if self.t1 - self.t0 < 1e-3:
            where = f"at {_fmt_s(self.t0)} s"
        else:
            where = f"between {_fmt_s(self.t0)} s and {_fmt_s(self.t1)} s"
        message = (
            f"{self.path}: damaged video, skipped {self.count} {self.what} {where} ({self.reason}); decoding continues"
        )
        self.reset()
        if self._report is not None:
            self._report(message)
        else:
            _warn(message)


# --------------------------------------------------------------------------------------------------
# reader


def _frames_per_chunk(fps: float, chunk_seconds: float) -> int:
    """``fps * chunk_seconds`` as a whole number (a reader's, or a live source's, frames per chunk); ValueError
    otherwise."""
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if not (math.isfinite(chunk_seconds) and chunk_seconds > 0):
        raise ValueError(f"chunk_seconds must be a positive number, got {chunk_seconds!r}")
    per_chunk = fps * chunk_seconds
    n = round(per_chunk)
    if n < 1 or abs(per_chunk - n) > 1e-9 * max(1.0, per_chunk):
        raise ValueError(
            f"fps * chunk_seconds must be a positive whole number of frames per chunk, "
            f"got {fps:g} * {chunk_seconds:g} = {per_chunk:g}"
        )
    return n


class VideoReader:
    """Chunked, time-based reader; see the module docstring for the exact sampling contract.

    Construction probes the file (raises :class:`VideoError`) and validates the options (raises
    ``ValueError``). Attributes: ``path``, ``info`` (:class:`VideoInfo`), ``fps``, ``chunk_seconds``,
    ``frames_per_chunk`` (``n``), ``start``, ``duration`` (as given), ``end`` (where the last chunk
    ends: the video end, or ``start + duration`` when earlier; lowered by a pass that finds the stream
    ending before it) and ``cut_short`` (None, or one line saying where a stream cut short ended and
    what its container states). Each :meth:`chunks` call is a fresh pass.

    >>> with VideoReader("clip.mp4", fps=2.0, chunk_seconds=1.0) as reader:  # doctest: +SKIP
    ...     for chunk in reader.chunks():
    ...         use(chunk.frames)  # uint8 [2, H, W, 3]
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        fps: float = DEFAULTS.fps,
        chunk_seconds: float = DEFAULTS.chunk_seconds,
        start: float = 0.0,
        duration: float | None = None,
    ) -> None:
        fps = float(fps)
        chunk_seconds = float(chunk_seconds)
        start = float(start)
        n = _frames_per_chunk(fps, chunk_seconds)
        if not (math.isfinite(start) and start >= 0):
            raise ValueError(f"start must be a finite number >= 0, got {start!r}")
        if duration is not None:
            duration = float(duration)
            if not (duration > 0):  # also rejects NaN
                raise ValueError(f"duration must be > 0 seconds, got {duration!r}")

        self.path = os.fsdecode(os.fspath(path))
        self.fps = fps
        self.chunk_seconds = chunk_seconds
        self.frames_per_chunk = n
        self.start = start
        self.duration = duration
        self.cut_short: str | None = None
        self._probe = _probe(self.path)
        video_end = self._video_end(None if duration is None else start + duration)
        self.info: VideoInfo = self._probe.info(video_end)
        if start >= video_end:
            raise VideoError(
                f"{self.path}: --start {_fmt_s(start)} s is past the end of the video ({_fmt_s(video_end)} s)"
            )
        self.end = video_end if duration is None else min(video_end, start + duration)
        self._closed = False
        self._generators: weakref.WeakSet = weakref.WeakSet()

    def _video_end(self, window_end: float | None) -> float:
        """The end of the video as far as this window needs it (see "What is read" in the module docstring)."""
        p = self._probe
        if window_end is not None and (p.stated is None or window_end <= p.stated - _END_SLACK_S):
            # well inside the stated duration, or nothing stated: the window bounds the read; decoding finds an
            # earlier end
            return p.stated if p.stated is not None else window_end
        found = _scan_end(p, max(0.0, p.stated - _END_SLACK_S) if p.stated is not None else self.start)
        if found is None and p.stated is None and self.start > 0:
            found = _scan_end(p, 0.0)
        if found is None:  # cut before the keyframe the scan started at: decoding finds the end
            found = p.stated if p.stated is not None else p.seconds(p.origin + p.frame_ticks)
        return found

    # -- geometry ---------------------------------------------------------------------------------

    def _chunk_start(self, k: int) -> float:
        # chunk k ends where chunk k + 1 starts: start + (k + 1) * c (exactly the same float)
        return self.start + k * self.chunk_seconds

    def num_chunks(self) -> int:
        """How many chunks :meth:`chunks` yields (the last one may be partial)."""
        k = max(0, math.ceil((self.end - self.start) / self.chunk_seconds))
        while k > 0 and self._chunk_start(k - 1) >= self.end:
            k -= 1
        while self._chunk_start(k) < self.end:
            k += 1
        return k

    def _sample_times(self, k: int) -> np.ndarray:
        chunk_start = self._chunk_start(k)
        return np.array([chunk_start + (j + 0.5) / self.fps for j in range(self.frames_per_chunk)], dtype=np.float64)

    # -- decoding ---------------------------------------------------------------------------------

    def _open_decoder(self, seek_seconds: float | None):
        container = _open_input(self.path)
        try:
            stream = _video_stream(container, self.path)
            stream.thread_type = "AUTO"
            if seek_seconds is not None:
                target = self._probe.origin + math.floor(Fraction(seek_seconds) / self._probe.time_base)
                container.seek(target, stream=stream, backward=True, any_frame=False)
        except BaseException:
            container.close()
            raise
        return container, stream

    def _decoded_frames(self, container, stream, report: _DamageReport, end: _StreamEnd
                        ) -> Iterator[tuple[int, object]]:
        """Yield ``(pts_ticks, frame)`` in decode output order, skipping what cannot be decoded; ``end`` sees
        every packet demuxed and the last frame's pts."""
        tb = self._probe.time_base
        origin = self._probe.origin
        step = self._probe.frame_ticks
        last_pts: int | None = None
        last_t = 0.0

        def seconds(ticks: int | None) -> float:
            return last_t if ticks is None else float((ticks - origin) * tb)

        def unreadable(exc: BaseException) -> None:
            report.error(last_t, exc, "unreadable part(s) of the file")

        for packet in _demux(container, stream, unreadable):
            end.add(packet)
            try:
                frames = packet.decode()
            except (av.FFmpegError, OSError) as exc:
                report.error(seconds(_packet_ts(packet)), exc)
                continue
            for frame in frames:
                pts = frame.pts if frame.pts is not None else frame.dts
                if pts is None:
                    pts = origin if last_pts is None else last_pts + step
                last_pts = end.last_frame = pts
                last_t = seconds(pts)
                report.progress(last_t)
                yield pts, frame
        try:  # drain what the decoder still holds (nothing after a clean end: the last packet flushed it)
            for frame in stream.codec_context.decode(None):
                pts = frame.pts if frame.pts is not None else (origin if last_pts is None else last_pts + step)
                last_pts = end.last_frame = pts
                yield pts, frame
        except (av.FFmpegError, OSError):
            pass

    def _to_rgb(self, frame, state: dict) -> np.ndarray:
        width, height = self.info.width, self.info.height
        if frame.width == width and frame.height == height:
            return frame.to_ndarray(format="rgb24")
        if not state.get("resized"):
            state["resized"] = True
            _warn(
                f"{self.path}: resolution changes from {width}x{height} to {frame.width}x{frame.height} "
                f"mid-stream; rescaling to {width}x{height}"
            )
        return frame.reformat(width=width, height=height, format="rgb24").to_ndarray()

    def chunks(self) -> Iterator[Chunk]:
        """Yield every chunk in order, decoding the file once from ``start`` to the end."""
        if self._closed:
            raise ValueError(f"{self.path}: the VideoReader is closed")
        gen = self._chunks()
        self._generators.add(gen)
        return gen

    def _chunks(self) -> Iterator[Chunk]:
        tb = self._probe.time_base
        origin = self._probe.origin
        # Frames at or after the end are never used: the last usable pts is < end.
        last_usable = math.ceil(origin + Fraction(self.end) / tb) - 1

        def threshold(t: float) -> int:
            """Largest pts (ticks) shown at time ``t``: pts <= t, and pts before the end."""
            return min(math.floor(origin + Fraction(t) / tb), last_usable)

        first_times = self._sample_times(0)
        report = _DamageReport(self.path)
        container, frames_iter, pending, stream_end = self._start_decoding(threshold(float(first_times[0])), report)
        try:
            current = None  # (pts, frame): last frame with pts <= current threshold
            exhausted = pending is None  # the stream has no more frames
            ended = False  # the end of the stream has been handled
            converted_key = None
            converted: np.ndarray | None = None
            state: dict = {}
            height, width = self.info.height, self.info.width

            def advance(limit: int) -> None:
                """Make ``current`` the last frame with pts <= limit; sets ``exhausted`` at the end of the stream."""
                nonlocal current, pending, exhausted
                while not exhausted:
                    if pending is None:
                        pending = next(frames_iter, None)
                        if pending is None:
                            exhausted = True
                            break
                    if pending[0] <= limit:
                        current, pending = pending, None
                    else:
                        break

            k = 0
            while self._chunk_start(k) < self.end:
                times = first_times if k == 0 else self._sample_times(k)
                n = len(times)
                frames = np.empty((n, height, width, 3), dtype=np.uint8)
                frame_times = np.empty(n, dtype=np.float64)
                for j in range(n):
                    advance(threshold(float(times[j])))
                    chosen = current if current is not None else pending
                    if chosen is None:
                        raise VideoError(f"{self.path}: no video frame could be decoded")
                    if chosen[1] is not converted_key:
                        converted = self._to_rgb(chosen[1], state)
                        converted_key = chosen[1]
                    frames[j] = converted
                    frame_times[j] = float((chosen[0] - origin) * tb)
                # Does the stream reach the end of this chunk? Frames before it would be current for the next
                # chunk's first sample anyway; past the last chunk they are not used.
                boundary = min(self._chunk_start(k + 1), self.end)
                advance(math.ceil(origin + Fraction(boundary) / tb) - 1)
                if exhausted and not ended:
                    ended = True
                    self._stream_ended(stream_end)
                chunk_start = self._chunk_start(k)
                if chunk_start >= self.end:  # the stream ended before this chunk
                    break
                yield Chunk(
                    index=k,
                    start=chunk_start,
                    end=min(self._chunk_start(k + 1), self.end),
                    times=times,
                    frame_times=frame_times,
                    frames=frames,
                )
                k += 1
            report.flush()
            if k == 0:
                raise VideoError(
                    f"{self.path}: --start {_fmt_s(self.start)} s is past the end of the video ({_fmt_s(self.end)} s)"
                )
        finally:
            frames_iter.close()
            container.close()

    def _stream_ended(self, stream_end: _StreamEnd) -> None:
        """The stream ended inside the window: end there, and say so if the file was cut short."""
        p = self._probe
        ticks = stream_end.ticks(p.frame_ticks)
        real = p.seconds(ticks) if ticks is not None else self.start
        if real < self.end:
            self.end = real
            self.info = dataclasses.replace(self.info, duration=real)
        if p.stated is not None and real < p.stated - _END_SLACK_S:
            note = f"the video stream ends at {_fmt_s(real)} s of the {_fmt_s(p.stated)} s its container states"
        elif p.cut_packet:
            note = f"the video stream ends at {_fmt_s(real)} s, and the file ends inside an MPEG-TS packet"
        else:
            return
        self.cut_short = note
        _warn(f"{self.path}: {note} (file cut short?)", VideoTruncatedWarning)

    def _start_decoding(self, first_limit: int, report: _DamageReport):
        """Open the decoder positioned for the first sample; returns (container, frames, first frame, stream end).

        With ``start > 0`` this seeks once to the keyframe before ``start``. If the first frame after
        the seek comes too late (the seek overshot), the file is reopened and decoded from its
        beginning instead, without seeking.
        """
        if self.start > 0:
            try:
                container, stream = self._open_decoder(self.start)
            except (av.FFmpegError, OSError) as exc:
                logger.debug("%s: seek failed (%s); decoding from the beginning", self.path, exc)
            else:
                stream_end = _StreamEnd()
                frames_iter = self._decoded_frames(container, stream, report, stream_end)
                first = next(frames_iter, None)
                if first is not None and (first[0] <= first_limit or first[0] == self._probe.origin):
                    return container, frames_iter, first, stream_end
                logger.debug("%s: seek overshot the start; decoding from the beginning", self.path)
                frames_iter.close()
                container.close()
                report.reset()  # the pass from the beginning reports again
        container, stream = self._open_decoder(None)
        stream_end = _StreamEnd()
        frames_iter = self._decoded_frames(container, stream, report, stream_end)
        return container, frames_iter, next(frames_iter, None), stream_end

    # -- lifetime ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop any iteration in progress and release the file. Idempotent."""
        self._closed = True
        for gen in list(self._generators):
            try:
                gen.close()
            except ValueError:  # generator is running (close() called from inside it)
                pass
        self._generators = weakref.WeakSet()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"VideoReader({self.path!r}, fps={self.fps:g}, chunk_seconds={self.chunk_seconds:g}, "
            f"start={self.start:g}, duration={self.duration!r})"
        )
