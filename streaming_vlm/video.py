"""Read a video file by time, chunk by chunk, in one sequential decoding pass.

Contract
--------
* **Time origin.** Time 0 is the presentation timestamp (pts) of the first frame the decoder
  outputs for the video stream. Every time in this module (``VideoInfo.duration``, ``start``,
  ``Chunk.start``/``end``/``times``/``frame_times``) is in seconds relative to that origin.
* **Video end.** ``VideoInfo.duration`` is the end of the last frame: its pts plus its duration.
  The last frame's duration is the duration the container stores for the last packet (in decode
  order); when the container stores none, it is ``1 / avg_fps``; when that is unknown too, the
  container's duration is used.
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
* **One pass.** Probing demuxes every packet once without decoding (only the first frame is
  decoded) to find the last frame's pts; container metadata is not trusted for that (it is missing
  or wrong for MPEG-TS and some variable-frame-rate MP4s). Reading opens the file again, does at
  most one seek (to the keyframe before ``start``, only when ``start > 0``; if the first frame after
  it is too late, the file is reopened and decoded from the beginning instead) and then decodes
  forward, packet by packet. Only frames that are used are converted to RGB. Only the current chunk
  is held in memory.
* **Errors.** A file that cannot be used raises :class:`VideoError` (one line, naming the file).
  Damaged data inside a usable video is skipped: one :class:`VideoDecodeWarning` per damaged region,
  and decoding goes on after it.

Frames are returned at the stored resolution as RGB ``uint8``; rotation metadata is not applied.
If the resolution changes mid-stream, later frames are rescaled to the first frame's size (with a
warning).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

__all__ = ["Chunk", "VideoDecodeWarning", "VideoError", "VideoInfo", "VideoReader", "probe"]

logger = logging.getLogger(__name__)

# Decoders FFmpeg uses for text files ("tty" demuxer and relatives): such a "video" is not a video.
_TEXT_CODECS = frozenset({"ansi", "bintext", "xbin", "idf"})
_TEXT_FORMATS = frozenset({"tty", "bin", "xbin", "idf", "adf"})
# Decode errors less than this many seconds apart are reported as one damaged region.
_MERGE_GAP_S = 1.0
# Give up on a file after this many demux errors in a row without a packet in between.
_MAX_DEMUX_ERRORS = 32


class VideoError(Exception):
    """A video cannot be used; str(e) is ONE clear line naming the file and the problem."""

    def __init__(self, message: str) -> None:
        super().__init__(_one_line(message))


class VideoDecodeWarning(UserWarning):
    """Part of a video could not be decoded and was skipped; decoding went on after it."""


@dataclass(frozen=True)
class VideoInfo:
    path: str
    duration: float  # seconds, end of the last frame (last pts + its duration), relative to stream start
    avg_fps: float  # average source frame rate (0.0 if unknown)
    width: int
    height: int


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


def _warn(message: str) -> None:
    """Emit a VideoDecodeWarning attributed to the first caller outside this module."""
    frame = sys._getframe(1)
    level = 2
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
        level += 1
    warnings.warn(VideoDecodeWarning(message), stacklevel=level)


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
    info: VideoInfo
    time_base: Fraction
    origin: int  # pts (ticks) of the first decoded frame = time 0
    frame_ticks: int  # ticks per frame used to stamp frames that carry no timestamp


def _probe(path: str) -> _Probe:
    """Probe ``path``; a regular file's result is remembered per (path, size, mtime), so training, which reads
    thousands of clips from the same videos, demuxes each file once per process instead of once per clip."""
    try:
        st = os.stat(path)
    except OSError:
        st = None
    if st is None or not os.path.isfile(path):
        return _probe_uncached(path)  # raises the precise VideoError
    return _probe_file(path, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=1024)
def _probe_file(path: str, size: int, mtime_ns: int) -> _Probe:
    return _probe_uncached(path)


def _probe_uncached(path: str) -> _Probe:
    container = _open_input(path)
    try:
        return _probe_open(container, path)
    finally:
        container.close()


def _probe_open(container, path: str) -> _Probe:
    stream = _video_stream(container, path)
    tb = stream.time_base
    if tb is None or tb <= 0:
        raise VideoError(f"{path}: the video stream has no usable time base")
    tb = Fraction(tb)

    first = None  # first decoded frame
    n_packets = 0
    min_ts: int | None = None
    max_ts: int | None = None
    last_duration = 0  # duration of the last packet in decode order
    demux_errors = 0
    decode_errors = 0
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            break
        except (av.FFmpegError, OSError):
            demux_errors += 1
            if demux_errors >= _MAX_DEMUX_ERRORS:
                break
            packets = container.demux(stream)
            continue
        demux_errors = 0
        ts = _packet_ts(packet)
        if packet.size and not packet.is_discard:
            n_packets += 1
            if ts is not None:
                min_ts = ts if min_ts is None else min(min_ts, ts)
                max_ts = ts if max_ts is None else max(max_ts, ts)
                last_duration = packet.duration or 0
        if first is None:
            try:
                for frame in packet.decode():
                    first = frame
                    break
            except (av.FFmpegError, OSError):
                decode_errors += 1

    if first is None:
        detail = f"; {decode_errors} packet(s) failed to decode" if decode_errors else ""
        raise VideoError(f"{path}: contains no decodable video frames ({n_packets} packet(s){detail})")

    origin = first.pts if first.pts is not None else (first.dts if first.dts is not None else min_ts)
    if origin is None:
        origin = 0
    if max_ts is None or max_ts < origin:
        max_ts = origin

    rate = stream.average_rate
    avg_fps = float(rate) if rate else 0.0
    if avg_fps <= 0 and n_packets >= 2 and min_ts is not None and max_ts > min_ts:
        avg_fps = (n_packets - 1) / float((max_ts - min_ts) * tb)

    if avg_fps > 0:
        frame_ticks = max(1, round(1 / (avg_fps * tb)))
    else:
        frame_ticks = max(1, round(Fraction(1, 25) / tb))

    if last_duration > 0:
        end_ticks = max_ts + last_duration
    elif avg_fps > 0:
        end_ticks = max_ts + frame_ticks
    else:
        end_ticks = max_ts
        if container.duration:  # microseconds, counted from the container's start time
            c_start = container.start_time or 0
            c_end = Fraction(c_start + container.duration, av.time_base) / tb
            end_ticks = max(end_ticks, math.ceil(c_end))
        if end_ticks <= max_ts:
            end_ticks = max_ts + frame_ticks
        if min_ts is None:  # no timestamps at all: frames get stamped one frame_ticks apart
            end_ticks = max(end_ticks, origin + n_packets * frame_ticks)

    info = VideoInfo(
        path=path,
        duration=float((end_ticks - origin) * tb),
        avg_fps=avg_fps,
        width=int(first.width),
        height=int(first.height),
    )
    return _Probe(info=info, time_base=tb, origin=int(origin), frame_ticks=frame_ticks)


def probe(path: str | os.PathLike) -> VideoInfo:
    """Read a video's duration, frame rate and size (demuxes the file once). Raises VideoError."""
    return _probe(os.fsdecode(os.fspath(path))).info


class _DamageReport:
    """Collect decode errors and warn once per damaged region (errors close together in time)."""

    def __init__(self, path: str) -> None:
        self.path = path
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
        _warn(message)


# --------------------------------------------------------------------------------------------------
# reader


class VideoReader:
    """Chunked, time-based reader; see the module docstring for the exact sampling contract.

    Construction probes the file (raises :class:`VideoError`) and validates the options (raises
    ``ValueError``). Attributes: ``path``, ``info`` (:class:`VideoInfo`), ``fps``, ``chunk_seconds``,
    ``frames_per_chunk`` (``n``), ``start``, ``duration`` (as given) and ``end`` (where the last chunk
    ends: the video end, or ``start + duration`` when earlier). Each :meth:`chunks` call is a fresh pass.

    >>> with VideoReader("clip.mp4", fps=2.0, chunk_seconds=1.0) as reader:  # doctest: +SKIP
    ...     for chunk in reader.chunks():
    ...         use(chunk.frames)  # uint8 [2, H, W, 3]
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        fps: float = 2.0,
        chunk_seconds: float = 1.0,
        start: float = 0.0,
        duration: float | None = None,
    ) -> None:
        fps = float(fps)
        chunk_seconds = float(chunk_seconds)
        start = float(start)
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
        self._probe = _probe(self.path)
        self.info: VideoInfo = self._probe.info
        if start >= self.info.duration:
            raise VideoError(
                f"{self.path}: --start {_fmt_s(start)} s is past the end of the video ({_fmt_s(self.info.duration)} s)"
            )
        self.end = self.info.duration if duration is None else min(self.info.duration, start + duration)
        self._closed = False
        self._generators: weakref.WeakSet = weakref.WeakSet()

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

    def _decoded_frames(self, container, stream, report: _DamageReport) -> Iterator[tuple[int, object]]:
        """Yield ``(pts_ticks, frame)`` in decode output order, skipping what cannot be decoded."""
        tb = self._probe.time_base
        origin = self._probe.origin
        step = self._probe.frame_ticks
        last_pts: int | None = None
        last_t = 0.0

        def seconds(ticks: int | None) -> float:
            return last_t if ticks is None else float((ticks - origin) * tb)

        packets = container.demux(stream)
        demux_errors = 0
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except (av.FFmpegError, OSError) as exc:
                report.error(last_t, exc, "unreadable part(s) of the file")
                demux_errors += 1
                if demux_errors >= _MAX_DEMUX_ERRORS:
                    packet = None
                    break
                packets = container.demux(stream)
                continue
            demux_errors = 0
            try:
                frames = packet.decode()
            except (av.FFmpegError, OSError) as exc:
                report.error(seconds(_packet_ts(packet)), exc)
                continue
            for frame in frames:
                pts = frame.pts if frame.pts is not None else frame.dts
                if pts is None:
                    pts = origin if last_pts is None else last_pts + step
                last_pts = pts
                last_t = seconds(pts)
                report.progress(last_t)
                yield pts, frame
        if demux_errors >= _MAX_DEMUX_ERRORS:
            try:  # drain what the decoder still holds
                for frame in stream.codec_context.decode(None):
                    pts = frame.pts if frame.pts is not None else (origin if last_pts is None else last_pts + step)
                    last_pts = pts
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
        total = self.num_chunks()
        if total == 0:
            return
        tb = self._probe.time_base
        origin = self._probe.origin
        # Frames at or after the end are never used: the last usable pts is < end.
        last_usable = math.ceil(origin + Fraction(self.end) / tb) - 1

        def threshold(t: float) -> int:
            """Largest pts (ticks) shown at time ``t``: pts <= t, and pts before the end."""
            return min(math.floor(origin + Fraction(t) / tb), last_usable)

        first_times = self._sample_times(0)
        report = _DamageReport(self.path)
        container, frames_iter, pending = self._start_decoding(threshold(float(first_times[0])), report)
        try:
            current = None  # (pts, frame): last frame with pts <= current threshold
            exhausted = pending is None
            converted_key = None
            converted: np.ndarray | None = None
            state: dict = {}
            height, width = self.info.height, self.info.width
            for k in range(total):
                times = first_times if k == 0 else self._sample_times(k)
                n = len(times)
                frames = np.empty((n, height, width, 3), dtype=np.uint8)
                frame_times = np.empty(n, dtype=np.float64)
                for j in range(n):
                    limit = threshold(float(times[j]))
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
                    chosen = current if current is not None else pending
                    if chosen is None:
                        raise VideoError(f"{self.path}: no video frame could be decoded")
                    if chosen[1] is not converted_key:
                        converted = self._to_rgb(chosen[1], state)
                        converted_key = chosen[1]
                    frames[j] = converted
                    frame_times[j] = float((chosen[0] - origin) * tb)
                chunk_start = self._chunk_start(k)
                yield Chunk(
                    index=k,
                    start=chunk_start,
                    end=min(self._chunk_start(k + 1), self.end),
                    times=times,
                    frame_times=frame_times,
                    frames=frames,
                )
            report.flush()
        finally:
            frames_iter.close()
            container.close()

    def _start_decoding(self, first_limit: int, report: _DamageReport):
        """Open the decoder positioned for the first sample; returns (container, frames, first frame).

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
                frames_iter = self._decoded_frames(container, stream, report)
                first = next(frames_iter, None)
                if first is not None and (first[0] <= first_limit or first[0] == self._probe.origin):
                    return container, frames_iter, first
                logger.debug("%s: seek overshot the start; decoding from the beginning", self.path)
                frames_iter.close()
                container.close()
                report.reset()  # the pass from the beginning reports again
        container, stream = self._open_decoder(None)
        frames_iter = self._decoded_frames(container, stream, report)
        return container, frames_iter, next(frames_iter, None)

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
