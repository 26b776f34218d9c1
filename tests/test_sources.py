"""Tests for streaming_vlm.sources: live sources give the reader's chunks, timestamps come from the source, and a
LiveFeed keeps lag bounded by skipping whole chunks.

Test videos are test_video's: 64x48 frames whose block pattern spells the frame's index, so every returned image
names the source frame it came from. A FakeClock (virtual time that a wait advances) makes single-threaded pacing
exact; threaded tests use a Clock running 10-20x faster than real time.
"""

from __future__ import annotations

import gc
import glob
import http.server
import math
import socketserver
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

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
    Skipped,
    SourceError,
    UrlSource,
    _Timeline,
    camera_source,
    open_source,
)
from streaming_vlm.video import Chunk, VideoDecodeWarning, VideoReader
from tests.test_video import H, W, _mdat_payload, index_image, read_index, write_video


class FakeClock(Clock):
    """Virtual seconds for single-threaded tests: a wait advances the time (unless the event is set) and is logged."""

    def __init__(self) -> None:
        super().__init__()
        self.t = 0.0
        self.waits: list[float] = []

    def now(self) -> float:
        return self.t

    def wait(self, event: threading.Event, seconds: float) -> bool:
        self.waits.append(seconds)
        if event.is_set():
            return True
        self.t += max(0.0, seconds)
        return False

    def sleep(self, seconds: float) -> None:
        self.t += max(0.0, seconds)


def assert_same_chunks(got: list[Chunk], want: list[Chunk]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert (a.index, a.start, a.end) == (b.index, b.start, b.end)
        np.testing.assert_array_equal(a.times, b.times)
        np.testing.assert_array_equal(a.frame_times, b.frame_times)
        assert a.frames.dtype == np.uint8 and a.frames.shape == b.frames.shape
        np.testing.assert_array_equal(a.frames, b.frames)


def reader_chunks(path: Path, **kwargs) -> list[Chunk]:
    with VideoReader(path, **kwargs) as reader:
        return list(reader.chunks())


def write_ts(path: Path, frames: list[tuple[int, float]], rate: int = 10) -> Path:
    """An MPEG-TS file (H.264 without B-frames) of frames ``(index shown, pts in s)``."""
    tb = Fraction(1, 90000)
    with av.open(str(path), "w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=rate, options={"crf": "10", "g": "10", "bf": "0"})
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.time_base = stream.codec_context.time_base = tb
        stream.codec_context.thread_count = 1
        for i, seconds in frames:
            frame = av.VideoFrame.from_ndarray(index_image(i), format="rgb24")
            frame.pts, frame.time_base = round(Fraction(seconds) / tb), tb
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """Files covering the sampling contract: constant rate, variable rate with a gap, a source slower than the
    sampling, MPEG-TS with an origin away from 0, a partial last chunk."""
    d = tmp_path_factory.mktemp("sources")
    tb = Fraction(1, 1000)
    return {
        "constant": write_video(d / "constant.mp4", [i * 100 for i in range(45)], tb, rate=10),
        "vfr_gap": write_video(d / "vfr_gap.mp4", [0, 40, 90, 100, 700, 2500, 2530, 2600, 3900], tb, rate=10),
        "slow": write_video(d / "slow.mkv", [i * 1500 for i in range(4)], tb, rate=1, container_format="matroska"),
        "ts": write_video(d / "ts.ts", [126000 + i * 3000 for i in range(50)], Fraction(1, 90000), rate=30,
                          container_format="mpegts"),
    }


class FileServer:
    """A local HTTP server (in a thread) whose i-th GET is answered by ``responses[i]``: ``(data, cut)`` sends
    ``data`` with its full Content-Length but drops the connection after ``cut`` bytes (None: all of it);
    ``(data, cut, stall)`` first stalls ``stall`` seconds after the ``cut`` bytes."""

    def __init__(self, responses: list[tuple]) -> None:
        self.responses = responses
        self.requests = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                i = owner.requests
                owner.requests += 1
                if i >= len(owner.responses):
                    self.send_error(503)
                    return
                data, cut, *stall = owner.responses[i]
                self.send_response(200)
                self.send_header("Content-Type", "video/mp2t")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data if cut is None else data[:cut])
                self.wfile.flush()
                if stall:
                    time.sleep(stall[0])
                if cut is not None:
                    self.connection.shutdown(2)

            def log_message(self, *args: object) -> None:
                pass

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/stream.ts"


# --------------------------------------------------------------------------------------------------
# file source


def test_realtime_file_source_is_the_reader_released_at_each_chunk_end(videos):
    for name, start in (("constant", 0.0), ("vfr_gap", 0.0), ("constant", 1.5)):
        clock = FakeClock()
        clock.t = 100.0
        source = FileSource(videos[name], start=start, realtime=True, clock=clock)
        got, released = [], []
        for chunk in source.chunks():
            got.append(chunk)
            released.append(clock.t)
        assert_same_chunks(got, reader_chunks(videos[name], start=start))
        # each chunk waits until its end has passed on the clock since the start, and no longer
        for chunk, at in zip(got, released, strict=True):
            assert at >= 100.0 + (chunk.end - start) - 1e-9
            assert at == pytest.approx(100.0 + (chunk.end - start), abs=1e-9)
        assert all(w > 0 for w in clock.waits)


def test_file_source_not_realtime_does_not_wait(videos):
    clock = FakeClock()
    got = list(FileSource(videos["vfr_gap"], realtime=False, clock=clock).chunks())
    assert_same_chunks(got, reader_chunks(videos["vfr_gap"]))
    assert clock.waits == [] and clock.t == 0.0


def test_realtime_file_source_through_a_feed_on_a_fast_clock(videos):
    clock = Clock(speed=20.0)
    source = FileSource(videos["constant"], realtime=True, clock=clock)
    begin = clock.now()
    with LiveFeed(source, max_ready=100) as feed:
        events = list(feed)
    chunks = [e for e in events if isinstance(e, FeedChunk)]
    assert_same_chunks([e.chunk for e in chunks], reader_chunks(videos["constant"]))
    for e in chunks:
        assert e.ready_at - begin >= e.chunk.end - 1e-6  # never released before its end
        assert e.skipped is None
    assert events[-1] == feed.ended and events[-1].reason == "end of stream" and not events[-1].error


# --------------------------------------------------------------------------------------------------
# URL source


@pytest.mark.parametrize("name", ["constant", "vfr_gap", "slow", "ts"])
def test_url_source_over_a_file_url_is_the_reader(videos, name):
    got = list(UrlSource("file:" + str(videos[name])).chunks())
    assert_same_chunks(got, reader_chunks(videos[name]))


def test_url_source_reports_damage_as_issues_not_warnings(tmp_path):
    path = write_video(tmp_path / "damaged.mp4", list(range(120)), Fraction(1, 30), rate=30)
    data = bytearray(path.read_bytes())
    lo, hi = _mdat_payload(bytes(data))
    middle = (lo + hi) // 2
    data[middle - 150 : middle + 150] = np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    issues: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would fail the test
        got = list(UrlSource("file:" + str(path)).chunks(issues.append))
    assert len(issues) == 1 and issues[0].startswith(f"file:{path}: damaged video, skipped ")
    with pytest.warns(VideoDecodeWarning):
        assert_same_chunks(got, reader_chunks(path))


class FlakyDemux:
    """A real input container whose demuxing raises InvalidDataError once, before packet ``at`` (no packet is
    lost); demuxing again goes on where it was."""

    def __init__(self, container, at: int) -> None:
        self.container, self.at, self.count, self.packets = container, at, 0, None

    def __getattr__(self, name: str):
        return getattr(self.container, name)

    def demux(self, stream):
        if self.packets is None:
            self.packets = self.container.demux(stream)
        while True:
            if self.count + 1 == self.at:
                self.at = None
                raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")
            packet = next(self.packets, None)
            if packet is None:
                return
            self.count += 1
            yield packet


def test_url_source_goes_on_after_damaged_data_without_reconnecting(videos):
    opened = []

    def opener():
        opened.append(1)
        return FlakyDemux(av.open(str(videos["constant"])), at=10)

    issues: list[str] = []
    got = list(UrlSource("rtsp://x/live", opener=opener).chunks(issues.append))
    assert len(opened) == 1
    assert len(issues) == 1 and issues[0].startswith("rtsp://x/live: damaged video, skipped 1 unreadable part(s) of "
                                                     "the stream at ")
    assert_same_chunks(got, reader_chunks(videos["constant"]))


def test_url_source_over_http_is_the_reader_and_may_be_paced(videos):
    data = videos["ts"].read_bytes()
    with FileServer([(data, None), (data, None)]) as server:
        plain = list(UrlSource(server.url, protocols=("http", "tcp")).chunks())
        clock = FakeClock()
        paced, released = [], []
        for chunk in UrlSource(server.url, realtime=True, clock=clock).chunks():
            paced.append(chunk)
            released.append(clock.t)
    want = reader_chunks(videos["ts"])
    assert_same_chunks(plain, want)
    assert_same_chunks(paced, want)
    assert released == pytest.approx([c.end for c in want], abs=1e-9)


def test_url_source_reconnects_after_the_server_drops_and_keeps_the_stream_pts(tmp_path):
    """The server drops segment A (pts 0..2.9 s) halfway; the reconnection gets segment B (pts 4.0..6.9 s, as a
    live stream goes on): the chunks keep B's pts (not arrival time), and the gap shows A's last frame."""
    a = write_ts(tmp_path / "a.ts", [(i, i / 10) for i in range(30)]).read_bytes()
    b = write_ts(tmp_path / "b.ts", [(i, i / 10) for i in range(40, 70)]).read_bytes()
    issues: list[str] = []
    with FileServer([(a, len(a) // 2), (b, None)]) as server:
        chunks = list(UrlSource(server.url, backoff_s=0.01, read_timeout=5).chunks(issues.append))
        assert server.requests == 2
    assert len(issues) == 1 and "the connection was lost" in issues[0] and "attempt 1 of 5" in issues[0]
    assert [c.index for c in chunks] == list(range(7)) and chunks[-1].end == pytest.approx(7.0)
    samples = [(float(t), read_index(img), float(ft)) for c in chunks for t, img, ft in
               zip(c.times, c.frames, c.frame_times, strict=True)]
    last_a = max(i for t, i, _ in samples if t < 4.0)
    assert 3 <= last_a < 29  # part of A came, then the drop
    for t, index, frame_time in samples:
        want = min(math.floor(t * 10 + 1e-9), last_a) if t < 4.0 else math.floor(t * 10 + 1e-9)
        assert index == want, t
        assert frame_time == pytest.approx(want / 10, abs=1e-9)


def test_url_source_read_timeout_reconnects_from_a_stalled_server(videos):
    data = videos["ts"].read_bytes()
    issues: list[str] = []
    with FileServer([(data, len(data) // 3, 3.0), (data, None)]) as server:
        started = time.monotonic()
        chunks = list(UrlSource(server.url, read_timeout=0.3, backoff_s=0.01).chunks(issues.append))
        assert time.monotonic() - started < 2.0  # gave up on the stalled read well before the server's 3 s
    assert len(issues) == 1 and "(Connection timed out); reconnecting in 0.01 s (attempt 1 of 5)" in issues[0]
    assert_same_chunks(chunks, reader_chunks(videos["ts"]))  # the stall came while probing: no frame yet


def test_url_source_reconnection_whose_pts_start_over_follows_on_after_the_outage(tmp_path):
    """The reconnection gets the stream from its start again (pts 0): the timeline is re-anchored so its first
    frame follows the last one by the outage (the 0.5-s backoff, on a fake clock), and times keep increasing."""
    a = write_ts(tmp_path / "a.ts", [(i, i / 10) for i in range(30)]).read_bytes()
    issues: list[str] = []
    with FileServer([(a, len(a) // 2), (a, None)]) as server:
        source = UrlSource(server.url, backoff_s=0.5, clock=FakeClock())
        chunks = list(source.chunks(issues.append))
    assert len(issues) == 2 and "reconnecting in 0.5 s" in issues[0]
    assert issues[1].startswith(server.url + ": the stream's timestamps jump by -")
    resumed = Fraction(issues[1].split(" at ")[1].removesuffix(" s"))
    last = int((resumed - Fraction(1, 2)) * 10)  # index (= pts in tenths) of the last frame before the drop
    assert 3 <= last < 29
    shown = [(Fraction(i, 10), i) for i in range(last + 1)] + [(resumed + Fraction(i, 10), i) for i in range(30)]
    assert chunks[-1].end == float(shown[-1][0] + Fraction(1, 10))
    for c in chunks:
        for t, img, frame_time in zip(c.times, c.frames, c.frame_times, strict=True):
            at, index = [s for s in shown if s[0] <= Fraction(float(t))][-1]
            assert (read_index(img), frame_time) == (index, float(at))


def test_url_source_backoff_then_recovers_with_an_injected_opener(videos):
    clock = FakeClock()
    attempts = []

    def opener():
        attempts.append(clock.t)
        if len(attempts) <= 2:
            raise OSError(111, "Connection refused")
        return av.open(str(videos["constant"]))

    issues: list[str] = []
    source = UrlSource("rtsp://camera.invalid/live", clock=clock, opener=opener, max_reconnects=3, backoff_s=0.5)
    got = list(source.chunks(issues.append))
    assert_same_chunks(got, reader_chunks(videos["constant"]))
    assert clock.waits == [0.5, 1.0]  # backoff doubles
    assert len(issues) == 2
    assert "cannot open the stream (Connection refused); reconnecting in 0.5 s (attempt 1 of 3)" in issues[0]
    assert "reconnecting in 1.0 s (attempt 2 of 3)" in issues[1]


def test_url_source_gives_up_after_bounded_attempts_and_refuses_permanent_errors():
    clock = FakeClock()
    calls = []

    def refused():
        calls.append(1)
        raise OSError(111, "Connection refused")

    source = UrlSource("rtsp://x/live", clock=clock, opener=refused, max_reconnects=3, backoff_s=1, max_backoff_s=1.5)
    with pytest.raises(SourceError, match=r"^rtsp://x/live: gave up after 3 reconnection attempt\(s\) \(last: cannot "
                                          r"open the stream: Connection refused\)$"):
        list(source.chunks(lambda message: None))
    assert len(calls) == 4 and clock.waits == [1, 1.5, 1.5]

    def not_media():
        raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")

    with pytest.raises(SourceError, match="cannot open the stream .*Invalid data"):
        list(UrlSource("http://x/a", clock=clock, opener=not_media).chunks())
    assert clock.waits == [1, 1.5, 1.5]  # no retry


def test_url_source_protocols_refuse_local_files_and_let_hls_play(videos):
    for spec in ("file:" + str(videos["constant"]), str(videos["constant"]), "concat:" + str(videos["constant"])):
        with pytest.raises(SourceError, match=r": protocol '(file|concat)' is not allowed \(allowed: crypto, hls, "):
            UrlSource(spec, protocols=NETWORK_PROTOCOLS)
    # HLS over HTTP under the list (FFmpeg applies it to the segment too): a playlist, then its one segment
    playlist = b"#EXTM3U\n#EXT-X-TARGETDURATION:5\n#EXTINF:4.5,\nseg.ts\n#EXT-X-ENDLIST\n"
    with FileServer([(playlist, None), (videos["ts"].read_bytes(), None)]) as server:
        url = server.url.replace("stream.ts", "live.m3u8")
        got = list(UrlSource(url, protocols=NETWORK_PROTOCOLS, max_reconnects=0).chunks())
        assert server.requests == 2
    assert_same_chunks(got, reader_chunks(videos["ts"]))


def test_url_source_with_an_ffmpeg_input_format():
    """A generated input (FFmpeg's lavfi) stands in for a device: format and options go to FFmpeg, times are its
    pts."""
    source = UrlSource("testsrc2=size=64x48:rate=10:duration=2.5", format="lavfi")
    chunks = list(source.chunks())
    assert [(c.start, c.end) for c in chunks] == [(0.0, 1.0), (1.0, 2.0), (2.0, 2.5)]
    assert chunks[0].frames.shape == (2, 48, 64, 3)
    np.testing.assert_allclose(np.concatenate([c.frame_times for c in chunks]), [0.2, 0.7, 1.2, 1.7, 2.2, 2.4])


def test_timeline_reanchors_a_stream_that_restarts_or_jumps():
    clock = FakeClock()
    line = _Timeline(clock)
    step = Fraction(1, 10)
    assert line.place(Fraction(50), step) == (0, None)
    clock.t = 0.1
    assert line.place(Fraction(501, 10), step) == (Fraction(1, 10), None)
    clock.t = 3.1  # 3 s without a frame, then pts start over: the frame follows after the 3-s outage
    assert line.place(Fraction(0), step) == (Fraction(31, 10), Fraction(-501, 10))
    clock.t = 3.2
    assert line.place(Fraction(1, 10), step) == (Fraction(32, 10), None)
    assert line.place(Fraction(-9, 10), step) == (Fraction(22, 10), None)  # back by 1 s at most: kept
    assert line.place(Fraction(-21, 10), step) == (Fraction(23, 10), Fraction(-12, 10))  # more, at once: 1 frame on
    assert line.place(Fraction(579, 10), step) == (Fraction(623, 10), None)  # forward gaps up to 60 s are kept
    assert line.place(Fraction(1000), step) == (Fraction(624, 10), Fraction(9421, 10))  # longer: re-anchored


# --------------------------------------------------------------------------------------------------
# camera


def test_camera_source_errors_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(SourceError, match=r"^camera /dev/video-none: no such device$"):
        camera_source("/dev/video-none")
    fake = tmp_path / "video0"
    fake.write_bytes(b"")
    monkeypatch.setattr(av, "formats_available", set(av.formats_available) - {"v4l2"})
    with pytest.raises(SourceError, match=r"this PyAV build has no v4l2 input"):
        camera_source(str(fake))


@pytest.mark.skipif(not glob.glob("/dev/video*") or "v4l2" not in av.formats_available,
                    reason="no camera device, or no v4l2 input in this PyAV build")
def test_camera_source_reads_a_real_camera():
    source = camera_source(sorted(glob.glob("/dev/video*"))[0], read_timeout=5, max_reconnects=0)
    chunks = []
    for chunk in source.chunks():
        chunks.append(chunk)
        if len(chunks) == 2:
            source.close()
    assert [c.index for c in chunks[:2]] == [0, 1] and chunks[0].frames.shape[0] == 2


def test_open_source_dispatches(videos):
    assert isinstance(open_source(str(videos["constant"])), FileSource)
    assert isinstance(open_source("file:" + str(videos["constant"])), UrlSource)
    assert isinstance(open_source("rtsp://127.0.0.1:1/x"), UrlSource)
    with pytest.raises(SourceError, match="no such device"):
        open_source("/dev/video-none")


# --------------------------------------------------------------------------------------------------
# push source


def jpeg(img: np.ndarray) -> bytes:
    """A JPEG file of ``img`` (PyAV's MJPEG encoder, 4:4:4, high quality)."""
    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.width, encoder.height, encoder.pix_fmt = img.shape[1], img.shape[0], "yuvj444p"
    encoder.time_base = Fraction(1, 25)
    encoder.options = {"qmin": "1", "qmax": "2"}
    packets = encoder.encode(av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuvj444p"))
    packets += encoder.encode(None)
    return bytes(packets[0])


def run_push(source: PushSource, pushes: Callable[[PushSource], None]) -> tuple[list[FeedChunk], FeedEnd, list[str]]:
    """Push (from this thread) while a feed consumes; every chunk kept (max_ready large)."""
    with LiveFeed(source, max_ready=1000) as feed:
        pushes(source)
        events = list(feed)
    chunks = [e for e in events if isinstance(e, FeedChunk)]
    assert all(e.skipped is None for e in chunks)
    return chunks, events[-1], [e.message for e in events if isinstance(e, FeedIssue)]


def expected_pushed(stamps: list[float], t: float) -> int:
    """Index of the pushed frame on screen at stream time t (time 0 = the first stamp)."""
    best = 0
    for i, s in enumerate(stamps):
        if Fraction(s) - Fraction(stamps[0]) <= Fraction(t):
            best = i
    return best


def test_push_jpeg_frames_give_chunks_at_the_clients_times():
    stamps = [1000.0 + 0.13 * i for i in range(25)] + [1000.0 + 5.2]  # ~7.7 fps, then a 2-s gap
    shade = np.linspace(0, 90, W, dtype=np.uint8)[None, :, None]  # texture, so the JPEG is not exact
    images = [np.maximum(index_image(i), shade) for i in range(len(stamps))]

    def pushes(source: PushSource) -> None:
        for stamp, img in zip(stamps, images, strict=True):
            source.push(jpeg(img), stamp, format="jpeg")
        source.finish()

    chunks, end, issues = run_push(PushSource(), pushes)
    assert end.reason == "end of stream" and issues == []
    last = Fraction(stamps[-1]) - Fraction(stamps[0])
    stream_end = float(last + (Fraction(stamps[-1]) - Fraction(stamps[-2])))
    assert [e.chunk.index for e in chunks] == list(range(math.ceil(stream_end)))
    assert chunks[-1].chunk.end == stream_end
    for e in chunks:
        c = e.chunk
        np.testing.assert_array_equal(c.times, [c.start + 0.25, c.start + 0.75])
        for t, img, frame_time in zip(c.times, c.frames, c.frame_times, strict=True):
            want = expected_pushed(stamps, float(t))
            assert read_index(img) == want
            assert frame_time == float(Fraction(stamps[want]) - Fraction(stamps[0]))
            assert 0 < np.abs(img.astype(int) - images[want]).mean() < 2  # within JPEG tolerance


def test_push_raw_frames_are_exact_and_finish_at_a_given_end():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(6)]
    stamps = [0.0, 0.4, 0.5, 1.0, 1.6, 2.2]

    def pushes(source: PushSource) -> None:
        for i, (stamp, img) in enumerate(zip(stamps, images, strict=True)):
            if i % 2:
                source.push(img.tobytes(), stamp, format="rgb", width=W, height=H)
            else:
                source.push(img, stamp, format="rgb")
        source.finish(end=2.4)

    chunks, end, _ = run_push(PushSource(), pushes)
    assert [(e.chunk.start, e.chunk.end) for e in chunks] == [(0.0, 1.0), (1.0, 2.0), (2.0, 2.4)]
    shown = [[0, 2], [3, 4], [5, 5]]  # the frame on screen at .25/.75 of each second
    for e, indices in zip(chunks, shown, strict=True):
        np.testing.assert_array_equal(e.chunk.frames, np.stack([images[i] for i in indices]))


def test_push_timestamps_that_jump_far_ahead_are_reanchored_not_filled():
    """A client's timestamp 1,000 s ahead would otherwise fill 1,000 chunks with one frozen frame."""
    clock = FakeClock()
    source = PushSource(clock=clock)
    issues: list[str] = []
    chunks = source.chunks(issues.append)
    for stamp in (10.0, 10.5, 11.0):
        source.push(index_image(int(stamp * 2)), stamp, format="rgb")
    clock.t = 2.0  # the client's next frame comes 2 s later, stamped 1,000 s later
    source.push(index_image(9), 1011.0, format="rgb")
    source.push(index_image(10), 1011.5, format="rgb")
    source.finish()
    got = list(chunks)
    assert issues == ["push: timestamps jump by +1000.000 s; going on at 3.0 s"]
    assert [(c.start, c.end) for c in got] == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.0)]
    assert [read_index(f) for c in got for f in c.frames] == [20, 21, 22, 22, 22, 22, 9, 10]


def test_push_refuses_bad_frames_with_one_line_and_goes_on():
    good = index_image(1)
    source = PushSource(max_width=64, max_height=48, max_bytes=64 * 48 * 3)
    bad: list[tuple[dict, str]] = [
        (dict(data=b"\x00garbage" * 50, timestamp=0.0), "not a JPEG image"),
        (dict(data=b"\xff\xd8\xff\xdb" + b"\x00" * 40, timestamp=0.0), "not a JPEG image"),
        (dict(data=jpeg(np.zeros((48, 96, 3), np.uint8)), timestamp=0.0), "96x48 is over the limit of 64x48"),
        (dict(data=b"\xff" * (64 * 48 * 3 + 1), timestamp=0.0), "over the limit of 9216"),
        (dict(data=good.tobytes()[:-1], timestamp=0.0, format="rgb", width=W, height=H), "needs 9216"),
        (dict(data=good.tobytes(), timestamp=0.0, format="rgb"), "need width and height"),
        (dict(data=good.astype(np.float32), timestamp=0.0, format="rgb"), "uint8 array"),
        (dict(data=good, timestamp=0.0, format="png"), "unknown frame format 'png'"),
        (dict(data=good, timestamp=float("nan"), format="rgb"), "finite number"),
    ]
    pushed: list[tuple[float, np.ndarray]] = []

    def pushes(src: PushSource) -> None:
        for kwargs, words in bad:
            with pytest.raises(FrameError, match=words) as info:
                src.push(**kwargs)
            assert "\n" not in str(info.value)
        for t in (0.0, 0.5, 1.0):
            img = index_image(int(t * 10))
            src.push(img, t, format="rgb")
            pushed.append((t, img))
        with pytest.raises(FrameError, match=r"timestamp 1 s is not after the previous frame's \(1 s\)"):
            src.push(good, 1.0, format="rgb")
        with pytest.raises(FrameError, match=r"timestamp 0.2 s is not after"):
            src.push(good, 0.2, format="rgb")
        src.push(index_image(15), 1.5, format="rgb")
        pushed.append((1.5, index_image(15)))
        src.finish()
        with pytest.raises(FrameError, match="the stream has ended"):
            src.push(good, 9.0, format="rgb")

    chunks, end, _ = run_push(source, pushes)
    assert end.reason == "end of stream"
    frames = np.concatenate([e.chunk.frames for e in chunks])
    np.testing.assert_array_equal(frames, np.stack([pushed[i][1] for i in (0, 1, 2, 3)]))


def test_push_frames_of_another_size_are_rescaled_and_noted():
    def pushes(source: PushSource) -> None:
        source.push(index_image(3), 0.0, format="rgb")
        source.push(np.zeros((24, 32, 3), np.uint8), 0.5, format="rgb")
        source.finish(end=1.0)

    chunks, _, issues = run_push(PushSource(), pushes)
    assert chunks[0].chunk.frames.shape == (2, H, W, 3) and not chunks[0].chunk.frames[1].any()
    assert issues == ["push: frame size changes from 64x48 to 32x24; rescaling to 64x48"]


# --------------------------------------------------------------------------------------------------
# pacing


@pytest.mark.parametrize("max_ready", [1, 2])
def test_a_slow_consumer_skips_whole_chunks_with_bounded_lag(tmp_path, max_ready):
    video = write_video(tmp_path / "long.mp4", [i * 100 for i in range(240)], Fraction(1, 1000), rate=10)  # 24 s
    clock = Clock(speed=10.0)
    feed = LiveFeed(FileSource(video, realtime=True, clock=clock), max_ready=max_ready).start()
    delivered, skipped = [], []
    for event in feed:
        if isinstance(event, FeedChunk):
            delivered.append(event)
            if event.skipped is not None:
                skipped.append(event.skipped)
                assert event.skipped.last == event.chunk.index - 1  # dropped right before this chunk
            clock.sleep(3.0)  # the model takes 3x real time
    assert isinstance(event, FeedEnd) and event.reason == "end of stream"
    # every chunk is delivered or reported skipped, exactly once, in order
    seen = sorted([e.chunk.index for e in delivered] + [i for s in skipped for i in range(s.first, s.last + 1)])
    assert seen == list(range(24))
    for s in skipped:
        assert s.count == s.last - s.first + 1 and s.start == s.first * 1.0 and s.end == (s.last + 1) * 1.0
    report = feed.report()
    assert report.delivered == len(delivered) and report.skipped == 24 - len(delivered) >= 12
    assert report.peak_ready == max_ready  # the buffer filled, and never grew past its bound
    # lag stays bounded: below max_ready chunk periods while the source runs (a growing queue would reach ~16 s),
    # and the at most max_ready chunks left at its end wait at most max_ready model steps
    lags = [e.lag_s for e in delivered]
    assert max(e.lag_s for e in delivered if e.delivered_at <= event.at) < max_ready * 1.0 + 1.0, lags
    assert len([e for e in delivered if e.delivered_at > event.at]) <= max_ready
    assert max(lags) < max_ready * 3.0 + 1.0, lags
    assert report.max_lag_s == max(lags)


def test_a_fast_consumer_gets_every_chunk_without_lag(videos):
    clock = Clock(speed=10.0)
    with LiveFeed(FileSource(videos["constant"], realtime=True, clock=clock)) as feed:
        events = list(feed)
    chunks = [e for e in events if isinstance(e, FeedChunk)]
    assert [e.chunk.index for e in chunks] == list(range(5)) and all(e.skipped is None for e in chunks)
    assert feed.report().skipped == 0 and max(e.lag_s for e in chunks) < 0.5


class CountingSource:
    """``count`` one-frame chunks as fast as it can, each watched through a weak reference."""

    name = "counting"

    def __init__(self, count: int) -> None:
        self.clock = Clock()
        self.count = count
        self.refs: list[weakref.ref] = []

    def chunks(self, notify=None) -> Iterator[Chunk]:
        for k in range(self.count):
            chunk = Chunk(index=k, start=float(k), end=k + 1.0, times=np.array([k + 0.5]), frame_times=np.array([k]),
                          frames=np.zeros((1, 64, 64, 3), np.uint8))
            self.refs.append(weakref.ref(chunk))
            yield chunk

    def close(self) -> None:
        pass


def test_a_consumer_that_stops_reading_holds_at_most_max_ready_chunks():
    source = CountingSource(200)
    feed = LiveFeed(source, max_ready=2).start()
    while feed.ended is None:  # the consumer is busy: it reads nothing until the source is over
        time.sleep(0.01)
    gc.collect()
    assert sum(ref() is not None for ref in source.refs) == 2  # no backlog kept, not even of dropped chunks
    first, second, end = feed.get(), feed.get(), feed.get()
    assert (first.chunk.index, second.chunk.index) == (198, 199) and isinstance(end, FeedEnd)
    assert first.skipped == Skipped(first=0, last=197, count=198, start=0.0, end=198.0) and second.skipped is None
    assert feed.report().skipped == 198 and feed.report().peak_ready == 2


class DyingSource:
    """Yields ``good`` chunks, then fails with ``error``."""

    name = "dying"

    def __init__(self, error: Exception, good: int = 2) -> None:
        self.clock = Clock()
        self.error, self.good = error, good

    def chunks(self, notify=None) -> Iterator[Chunk]:
        for k in range(self.good):
            yield Chunk(index=k, start=float(k), end=k + 1.0, times=np.array([k + 0.5]), frame_times=np.array([k]),
                        frames=np.zeros((1, 2, 2, 3), np.uint8))
        notify("dying: about to fail")
        raise self.error

    def close(self) -> None:
        pass


@pytest.mark.parametrize("error, reason", [
    (SourceError("dying: the camera was unplugged"), "dying: the camera was unplugged"),
    (RuntimeError("boom\nsecond line"), "dying: source failed: RuntimeError: boom second line"),
])
def test_a_source_that_dies_ends_the_feed_with_its_reason(error, reason):
    with LiveFeed(DyingSource(error), max_ready=10) as feed:
        events = list(feed)
    # issues come as soon as they happen, so their place among the chunks depends on the consumer's timing
    assert [type(e) for e in events if not isinstance(e, FeedIssue)] == [FeedChunk, FeedChunk, FeedEnd]
    assert [e.message for e in events if isinstance(e, FeedIssue)] == ["dying: about to fail"]
    assert events[-1].reason == reason and events[-1].error
    assert feed.get(timeout=0) is events[-1]  # the end stays


def test_a_url_source_whose_server_is_gone_ends_its_feed_after_reported_retries():
    def gone():
        raise OSError(111, "Connection refused")

    source = UrlSource("rtsp://127.0.0.1:1/live", opener=gone, max_reconnects=2, backoff_s=0.01)
    with LiveFeed(source) as feed:
        events = list(feed)
    assert [type(e) for e in events] == [FeedIssue, FeedIssue, FeedEnd]
    assert events[-1].error and "gave up after 2 reconnection attempt(s)" in events[-1].reason


def test_closing_a_feed_stops_a_waiting_source():
    source = PushSource()
    feed = LiveFeed(source).start()
    source.push(index_image(0), 0.0, format="rgb")
    assert feed.get(timeout=0.05) is None  # no chunk is complete yet
    started = time.monotonic()
    feed.close()
    end = feed.get(timeout=1)
    assert isinstance(end, FeedEnd) and end.reason == "closed" and not end.error
    assert time.monotonic() - started < 1
    with pytest.raises(FrameError, match="the stream has ended"):
        source.push(index_image(1), 1.0, format="rgb")
