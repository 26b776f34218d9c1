"""Tests for streaming_vlm.video: exact time-based sampling, bad input, damage, single pass.

Every test video is generated here with PyAV: 64x48 frames whose 4x3 grid of 16x16 blocks spells the
frame's index in binary, so the test can tell which source frame a returned image came from.
"""

from __future__ import annotations

import logging
import math
import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from streaming_vlm.video import (
    Chunk,
    VideoDecodeWarning,
    VideoError,
    VideoInfo,
    VideoReader,
    probe,
)

W, H = 64, 48
BITS = 12  # 4 x 3 blocks of 16 x 16 pixels


def index_image(i: int) -> np.ndarray:
    img = np.zeros((H, W, 3), np.uint8)
    for b in range(BITS):
        if (i >> b) & 1:
            r, c = divmod(b, 4)
            img[r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16] = 255
    return img


def read_index(img: np.ndarray) -> int:
    value = 0
    for b in range(BITS):
        r, c = divmod(b, 4)
        if img[r * 16 + 4 : r * 16 + 12, c * 16 + 4 : c * 16 + 12].mean() > 128:
            value |= 1 << b
    return value


def write_video(
    path: Path,
    pts: list[int],
    time_base: Fraction,
    rate: Fraction | int = 30,
    codec: str = "libx264",
    gop: int = 15,
    container_format: str | None = None,
    container_options: dict | None = None,
) -> Path:
    """Encode len(pts) frames (frame i shows index i) at the given pts (ticks of time_base)."""
    options = {"crf": "10", "g": str(gop)} if codec == "libx264" else {"qscale": "2", "g": str(gop)}
    with av.open(str(path), "w", format=container_format, options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=rate, options=options)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        stream.codec_context.thread_count = 1  # deterministic bitstream
        for i, p in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(index_image(i), format="rgb24")
            frame.pts = p
            frame.time_base = time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def expected_index(pts_s: list[Fraction], t: float, end: float) -> int:
    """Index of the frame on screen at t: last pts <= t (and < end); the first frame before it."""
    limit = Fraction(t)
    best = 0
    for i, p in enumerate(pts_s):
        if p <= limit and p < Fraction(end):
            best = i
    return best


def read_all(reader: VideoReader) -> list[Chunk]:
    chunks = list(reader.chunks())
    assert len(chunks) == reader.num_chunks()
    return chunks


def check_chunks(reader: VideoReader, chunks: list[Chunk], pts_s: list[Fraction], cut_last: bool = False) -> None:
    """Check every chunk against the sampling contract, computed from the known pts list (``cut_last``: the last
    frame's data may be cut short, so its picture is not checked, only its time)."""
    c, fps, n = reader.chunk_seconds, reader.fps, reader.frames_per_chunk
    for k, chunk in enumerate(chunks):
        assert chunk.index == k
        assert chunk.start == reader.start + k * c
        assert chunk.end == min(reader.start + (k + 1) * c, reader.end)
        assert chunk.start < reader.end
        expected_times = np.array([chunk.start + (j + 0.5) / fps for j in range(n)])
        assert chunk.times.dtype == np.float64 and chunk.frame_times.dtype == np.float64
        np.testing.assert_array_equal(chunk.times, expected_times)
        assert chunk.frames.shape == (n, H, W, 3) and chunk.frames.dtype == np.uint8
        for j in range(n):
            want = expected_index(pts_s, float(chunk.times[j]), reader.end)
            if not (cut_last and want == len(pts_s) - 1):
                assert read_index(chunk.frames[j]) == want, (k, j, float(chunk.times[j]))
            assert chunk.frame_times[j] == pytest.approx(float(pts_s[want]), abs=1e-9)
    if chunks:
        assert chunks[-1].end == reader.end
        assert reader.start + len(chunks) * c >= reader.end


def to_seconds(pts: list[int], time_base: Fraction) -> list[Fraction]:
    return [(p - pts[0]) * time_base for p in pts]


# --------------------------------------------------------------------------------------------------
# frame rates


RATES = [
    pytest.param(Fraction(24), 103, id="24fps"),
    pytest.param(Fraction(25), 107, id="25fps"),
    pytest.param(Fraction(30000, 1001), 131, id="29.97fps"),
    pytest.param(Fraction(30), 131, id="30fps"),
    pytest.param(Fraction(60), 263, id="60fps"),
]


@pytest.mark.parametrize("rate,count", RATES)
def test_constant_frame_rates(tmp_path, rate, count):
    time_base = 1 / rate
    pts = list(range(count))
    path = write_video(tmp_path / "v.mp4", pts, time_base, rate=rate)
    pts_s = to_seconds(pts, time_base)
    end = pts_s[-1] + time_base  # the last frame lasts one frame period

    info = probe(path)
    assert isinstance(info, VideoInfo)
    assert info.path == str(path)
    assert info.duration == pytest.approx(float(end), abs=1e-9)
    assert info.avg_fps == pytest.approx(float(rate), rel=1e-6)
    assert (info.width, info.height) == (W, H)

    for fps in (2.0, 3.0):
        with VideoReader(path, fps=fps, chunk_seconds=1.0) as reader:
            assert reader.num_chunks() == int(np.ceil(float(end)))
            chunks = read_all(reader)
            check_chunks(reader, chunks, pts_s)
            last = chunks[-1]
            assert last.start < float(end) < last.start + 1.0  # a partial last chunk
            assert last.end == pytest.approx(float(end), abs=1e-9)
            assert len(last.times) == int(fps)


def test_mpegts_origin_is_first_frame_pts(tmp_path):
    # MPEG-TS stores large timestamps (the stream does not start at pts 0); times are relative to it.
    rate = Fraction(30000, 1001)
    pts = [900 + i for i in range(95)]
    path = tmp_path / "v.ts"
    with av.open(str(path), "w", format="mpegts") as container:
        stream = container.add_stream("mpeg4", rate=rate, options={"qscale": "2", "g": "12"})
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.time_base = 1 / rate
        for i, p in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(index_image(i), format="rgb24")
            frame.pts, frame.time_base = p, 1 / rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with av.open(str(path)) as container:
        first = next(container.decode(video=0))
        assert first.time > 1.0  # the origin really is shifted
    pts_s = to_seconds(pts, 1 / rate)
    with VideoReader(path, fps=2.0) as reader:
        assert reader.info.duration == pytest.approx(float(pts_s[-1] + 1 / rate), abs=1e-6)
        check_chunks(reader, read_all(reader), pts_s)


# --------------------------------------------------------------------------------------------------
# irregular timing


def test_variable_frame_rate(tmp_path):
    time_base = Fraction(1, 1000)
    pts = [0, 40, 90, 100, 400, 410, 1500, 1533, 1540, 1990, 2600, 2610, 2650, 3300]
    for codec in ("libx264", "mpeg4"):
        path = write_video(tmp_path / f"vfr_{codec}.mp4", pts, time_base, rate=30, codec=codec)
        pts_s = to_seconds(pts, time_base)
        with VideoReader(path, fps=4.0, chunk_seconds=0.5) as reader:
            # the last frame's duration comes from the container: about one nominal frame (1/30 s)
            assert 0 < reader.info.duration - 3.3 <= 0.05
            assert reader.num_chunks() == 7
            check_chunks(reader, read_all(reader), pts_s)


def test_gap_in_timestamps_keeps_the_last_frame_on_screen(tmp_path):
    time_base = Fraction(1, 30)
    pts = list(range(30)) + list(range(90, 120))  # nothing between 1.0 s and 3.0 s
    path = write_video(tmp_path / "gap.mp4", pts, time_base, rate=30)
    pts_s = to_seconds(pts, time_base)
    with VideoReader(path, fps=2.0) as reader:
        assert reader.info.duration == pytest.approx(4.0, abs=1e-9)
        chunks = read_all(reader)
        check_chunks(reader, chunks, pts_s)
        in_gap = [read_index(f) for ch in chunks[1:3] for f in ch.frames]
        assert in_gap == [29, 29, 29, 29]
        assert [read_index(f) for f in chunks[3].frames] == [37, 52]  # pts 97 and 112


def test_source_slower_than_sampling_repeats_frames(tmp_path):
    time_base = Fraction(1, 1)
    pts = list(range(5))
    path = write_video(tmp_path / "slow.mp4", pts, time_base, rate=1, gop=2)
    with VideoReader(path, fps=2.0) as reader:
        assert reader.info.duration == pytest.approx(5.0, abs=1e-9)
        assert reader.info.avg_fps == pytest.approx(1.0)
        chunks = read_all(reader)
        check_chunks(reader, chunks, to_seconds(pts, time_base))
        assert [read_index(f) for ch in chunks for f in ch.frames] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
        np.testing.assert_array_equal(chunks[2].frame_times, [2.0, 2.0])


# --------------------------------------------------------------------------------------------------
# options


@pytest.fixture(scope="module")
def clip30(tmp_path_factory):
    """6 s at 30 fps, keyframe every 0.5 s."""
    pts = list(range(180))
    path = write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", pts, Fraction(1, 30), rate=30)
    return path, to_seconds(pts, Fraction(1, 30))


class SeekCounter:
    def __init__(self, monkeypatch, shift_s: float = 0.0):
        self.calls = 0
        original = av.container.InputContainer.seek
        counter = self

        def seek(container, offset, *args, **kwargs):
            counter.calls += 1
            stream = kwargs.get("stream")
            if shift_s and stream is not None:
                offset += int(shift_s / stream.time_base)  # simulate an overshooting demuxer
            return original(container, offset, *args, **kwargs)

        monkeypatch.setattr(av.container.InputContainer, "seek", seek)


def test_start_and_duration(clip30, monkeypatch):
    path, pts_s = clip30
    seeks = SeekCounter(monkeypatch)
    with VideoReader(path, fps=2.0, chunk_seconds=1.0, start=1.25, duration=2.5) as reader:
        assert reader.end == 3.75
        assert reader.num_chunks() == 3
        chunks = read_all(reader)
        check_chunks(reader, chunks, pts_s)
    assert [ch.start for ch in chunks] == [1.25, 2.25, 3.25]
    assert chunks[-1].end == 3.75
    # 4.0 is past start + duration: the last frame before 3.75 s is used, not the one at 4.0 s
    assert [read_index(f) for f in chunks[-1].frames] == [105, 112]
    assert seeks.calls == 1

    # duration running past the end of the video is cut at the end
    with VideoReader(path, start=4.5, duration=100.0) as reader:
        assert reader.end == pytest.approx(6.0)
        chunks = read_all(reader)
        check_chunks(reader, chunks, pts_s)
        assert [ch.end for ch in chunks] == [5.5, pytest.approx(6.0)]


def test_start_between_keyframes(clip30):
    path, pts_s = clip30
    for start in (0.5, 1.0, 1.1, 2.9, 3.0, 4.99, 5.5, 5.99):
        with VideoReader(path, fps=2.0, start=start) as reader:
            chunks = read_all(reader)
            check_chunks(reader, chunks, pts_s)
            assert chunks[0].start == start


def test_overshooting_seek_falls_back_to_decoding_from_the_start(clip30, monkeypatch, caplog):
    path, pts_s = clip30
    seeks = SeekCounter(monkeypatch, shift_s=2.0)
    caplog.set_level(logging.DEBUG, logger="streaming_vlm.video")
    with VideoReader(path, fps=2.0, start=2.0) as reader:
        check_chunks(reader, read_all(reader), pts_s)
    assert seeks.calls == 1
    assert "seek overshot" in caplog.text


def test_two_second_chunks(clip30):
    path, pts_s = clip30
    with VideoReader(path, fps=2.0, chunk_seconds=2.0) as reader:
        assert reader.frames_per_chunk == 4
        chunks = read_all(reader)
        assert len(chunks) == 3
        assert all(len(ch.frames) == 4 for ch in chunks)
        check_chunks(reader, chunks, pts_s)
        np.testing.assert_array_equal(chunks[1].times, [2.25, 2.75, 3.25, 3.75])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fps": 1.5, "chunk_seconds": 1.0},
        {"fps": 2.0, "chunk_seconds": 0.75},
        {"fps": 2.0, "chunk_seconds": 0.2},
        {"fps": 0.0},
        {"fps": -2.0},
        {"chunk_seconds": 0.0},
        {"start": -1.0},
        {"start": float("nan")},
        {"duration": 0.0},
        {"duration": -3.0},
    ],
)
def test_invalid_options_raise_value_error(clip30, kwargs):
    path, _ = clip30
    with pytest.raises(ValueError):
        VideoReader(path, **kwargs)


def test_one_third_second_chunks_at_3_fps_are_allowed(clip30):
    path, pts_s = clip30
    with VideoReader(path, fps=3.0, chunk_seconds=1 / 3) as reader:
        assert reader.frames_per_chunk == 1
        check_chunks(reader, read_all(reader), pts_s)


# --------------------------------------------------------------------------------------------------
# one sequential pass


def test_no_seek_per_frame_or_chunk(clip30, monkeypatch):
    path, pts_s = clip30
    seeks = SeekCounter(monkeypatch)
    with VideoReader(path, fps=8.0, chunk_seconds=0.5) as reader:
        chunks = read_all(reader)
    assert len(chunks) == 12
    assert seeks.calls == 0  # start == 0: no seek at all

    with VideoReader(path, fps=8.0, chunk_seconds=0.5, start=2.2) as reader:
        check_chunks(reader, read_all(reader), pts_s)
    assert seeks.calls == 1  # one seek to the keyframe before start, none per chunk


def test_close_stops_iteration_and_context_manager(clip30):
    path, _ = clip30
    reader = VideoReader(path)
    iterator = reader.chunks()
    first = next(iterator)
    assert first.index == 0
    reader.close()
    with pytest.raises(StopIteration):
        next(iterator)
    with pytest.raises(ValueError):
        reader.chunks()
    reader.close()  # idempotent
    with VideoReader(path) as again:
        assert sum(1 for _ in again.chunks()) == 6
        assert sum(1 for _ in again.chunks()) == 6  # each call is a fresh pass


def test_resolution_change_is_rescaled_with_a_warning(tmp_path):
    def part(name: str, offset: int, size: tuple[int, int]) -> bytes:
        path = tmp_path / name
        with av.open(str(path), "w", format="mpegts") as container:
            stream = container.add_stream("mpeg4", rate=30, options={"qscale": "2"})
            stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
            stream.time_base = Fraction(1, 30)
            for i in range(30):
                img = np.full((size[1], size[0], 3), 40 if offset == 0 else 200, np.uint8)
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts, frame.time_base = offset + i, Fraction(1, 30)
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        return path.read_bytes()

    joined = tmp_path / "joined.ts"
    joined.write_bytes(part("a.ts", 0, (W, H)) + part("b.ts", 30, (32, 24)))
    with pytest.warns(VideoDecodeWarning, match="resolution changes"):
        with VideoReader(joined, fps=2.0) as reader:
            chunks = read_all(reader)
    assert [ch.frames.shape for ch in chunks] == [(2, H, W, 3), (2, H, W, 3)]
    assert abs(int(chunks[0].frames[1].mean()) - 40) < 10
    assert abs(int(chunks[1].frames[1].mean()) - 200) < 10


# --------------------------------------------------------------------------------------------------
# bad input


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "missing.mp4"


def _directory(tmp_path: Path) -> Path:
    path = tmp_path / "folder.mp4"
    path.mkdir()
    return path


def _text_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("this is not a video\n" * 50)
    return path


def _text_named_mp4(tmp_path: Path) -> Path:
    path = tmp_path / "fake.mp4"
    path.write_text("this is not a video either\n" * 50)
    return path


def _empty_file(tmp_path: Path) -> Path:
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    return path


def _audio_wav(tmp_path: Path) -> Path:
    path = tmp_path / "speech.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 16000), np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        for packet in stream.encode(frame):
            container.mux(packet)
    return path


def _audio_m4a(tmp_path: Path) -> Path:
    path = tmp_path / "music.m4a"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _video_without_frames(tmp_path: Path) -> Path:
    # a video stream is declared, but only audio packets are stored
    path = tmp_path / "no_frames.mkv"
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=30)
        video.width, video.height = W, H
        audio = container.add_stream("pcm_s16le", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1600), np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        for packet in audio.encode(frame):
            container.mux(packet)
    return path


@pytest.mark.parametrize(
    "make,words",
    [
        (_missing, "no such file"),
        (_directory, "directory"),
        (_text_file, "not a video"),
        (_text_named_mp4, "not a video"),
        (_empty_file, "empty"),
        (_audio_wav, "no video stream"),
        (_audio_m4a, "no video stream"),
        (_video_without_frames, "no decodable video frames"),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else None,
)
def test_bad_input_raises_one_line_video_error(tmp_path, make, words):
    path = make(tmp_path)
    for call in (lambda: probe(path), lambda: VideoReader(path)):
        with pytest.raises(VideoError) as caught:
            call()
        message = str(caught.value)
        assert "\n" not in message and "\r" not in message
        assert str(path) in message
        assert words in message


def test_start_past_the_end(clip30):
    path, _ = clip30
    for start in (6.0, 99.0):
        with pytest.raises(VideoError) as caught:
            VideoReader(path, start=start)
        message = str(caught.value)
        assert "\n" not in message and str(path) in message
        assert "past the end of the video (6.0 s)" in message
    with pytest.raises(VideoError, match=r"--start 99\.0 s is past the end"):
        VideoReader(path, start=99.0)


def _mdat_payload(data: bytes) -> tuple[int, int]:
    """Byte range of the payload of the top-level 'mdat' box of an MP4 file."""
    pos = 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        header = 8
        if size == 1:
            size, header = int.from_bytes(data[pos + 8 : pos + 16], "big"), 16
        elif size == 0:
            size = len(data) - pos
        if kind == b"mdat":
            return pos + header, pos + size
        pos += size
    raise AssertionError("no mdat box")


def test_damaged_middle_is_skipped_with_one_warning(tmp_path):
    pts = list(range(120))  # 4 s at 30 fps
    path = write_video(tmp_path / "damaged.mp4", pts, Fraction(1, 30), rate=30)
    data = bytearray(path.read_bytes())
    lo, hi = _mdat_payload(bytes(data))
    middle = (lo + hi) // 2
    data[middle - 150 : middle + 150] = np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with VideoReader(path, fps=2.0) as reader:
            chunks = read_all(reader)
    damage = [w for w in caught if issubclass(w.category, VideoDecodeWarning)]
    assert len(damage) == 1, [str(w.message) for w in caught]
    message = str(damage[0].message)
    assert str(path) in message and "\n" not in message
    assert [ch.index for ch in chunks] == [0, 1, 2, 3]
    # frames well after the damage (next keyframes) are decoded and used
    assert [read_index(f) for f in chunks[-1].frames] == [97, 112]
    assert [read_index(f) for f in chunks[0].frames] == [7, 22]

    with pytest.warns(VideoDecodeWarning):
        with VideoReader(path, fps=2.0) as reader:
            assert len(read_all(reader)) == 4


def test_a_file_is_demuxed_once_per_process_until_it_changes(tmp_path, monkeypatch):
    import streaming_vlm.video as video

    calls = []
    real = video._probe_open
    monkeypatch.setattr(video, "_probe_open", lambda c, p: calls.append(p) or real(c, p))
    path = write_video(tmp_path / "c.mp4", list(range(30)), Fraction(1, 30), rate=30)
    for start in (0.0, 0.3, 0.6):  # training builds many clips from one video
        with VideoReader(path, fps=2.0, chunk_seconds=0.5, start=start) as reader:
            assert reader.info.duration == pytest.approx(1.0)
    assert len(calls) == 1
    write_video(path, list(range(60)), Fraction(1, 30), rate=30)  # rewritten: longer
    with VideoReader(path, fps=2.0, chunk_seconds=0.5) as reader:
        assert reader.info.duration == pytest.approx(2.0)
    assert len(calls) == 2


# --------------------------------------------------------------------------------------------------
# what is read: the container's metadata and the window, never the whole file


class DemuxCounter:
    """Records the pts (seconds) of every packet demuxed through PyAV, in order, from a cold probe cache."""

    def __init__(self, monkeypatch):
        import streaming_vlm.video as video

        video._probe_file.cache_clear()
        self.seconds: list[float] = []
        original = av.container.InputContainer.demux
        counter = self

        def demux(container, *args, **kwargs):
            for packet in original(container, *args, **kwargs):
                if packet.size and packet.pts is not None:
                    counter.seconds.append(float(packet.pts * packet.time_base))
                yield packet

        monkeypatch.setattr(av.container.InputContainer, "demux", demux)

    def take(self) -> list[float]:
        seen, self.seconds = self.seconds, []
        return seen


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    """Two minutes at 4 fps, a keyframe every 2 s."""
    pts = list(range(480))
    path = write_video(tmp_path_factory.mktemp("long") / "long.mp4", pts, Fraction(1, 4), rate=4, gop=8)
    return path, to_seconds(pts, Fraction(1, 4))


def test_opening_a_window_reads_metadata_and_the_window_only(long_clip, monkeypatch):
    path, pts_s = long_clip
    counter = DemuxCounter(monkeypatch)
    with VideoReader(path, fps=2.0, start=50.0, duration=10.0) as reader:
        opened = counter.take()
        chunks = read_all(reader)
        read = counter.take()
    # opening: the packets that decode the first frame (time 0), not the 480 of the file
    assert len(opened) <= 4 and max(opened) < 2.0, opened
    # reading: from the keyframe before the start (48 s) to the end of the window (decode order runs a little
    # ahead of presentation order), not a packet more
    assert min(read) >= 48.0 and max(read) <= 62.0, (min(read), max(read))
    assert len(read) <= (62 - 48) * 4
    check_chunks(reader, chunks, pts_s)
    assert reader.end == 60.0 and reader.info.stated_duration == pytest.approx(120.0, abs=1e-9)
    assert reader.info.duration == reader.info.stated_duration  # the file was not read to its end


def test_a_window_reaching_the_end_reads_the_last_packets_for_the_exact_end(long_clip, monkeypatch):
    path, pts_s = long_clip
    counter = DemuxCounter(monkeypatch)
    with VideoReader(path, fps=2.0, start=100.0) as reader:
        opened = counter.take()
        assert reader.info.duration == pytest.approx(120.0, abs=1e-9)
        chunks = read_all(reader)
    check_chunks(reader, chunks, pts_s)
    # the first frame, then the packets from the keyframe before 119 s (the stated end less a second) on
    assert all(t < 2.0 or t >= 116.0 for t in opened), opened
    assert len(opened) <= 4 + 4 * 4


def test_a_file_without_a_stated_duration_is_read_only_as_far_as_the_window(tmp_path, monkeypatch):
    # a Matroska file written as a live stream: no duration, no index
    pts = list(range(40))  # 4 s at 10 fps (Matroska stores milliseconds)
    path = write_video(tmp_path / "live.mkv", pts, Fraction(1, 10), rate=10, container_options={"live": "1"})
    pts_s = to_seconds(pts, Fraction(1, 10))
    counter = DemuxCounter(monkeypatch)
    with VideoReader(path, fps=2.0, start=0.0, duration=2.5) as reader:
        chunks = read_all(reader)
    assert max(counter.take()) <= 3.0  # 2.5 s and the decoder's look-ahead, not the whole file
    check_chunks(reader, chunks, pts_s)
    assert [ch.end for ch in chunks] == [1.0, 2.0, 2.5]
    assert reader.info.stated_duration is None
    with VideoReader(path, fps=2.0, start=1.5) as reader:  # to the end: the end comes from the file
        assert reader.info.duration == pytest.approx(4.0, abs=1e-9)
        check_chunks(reader, read_all(reader), pts_s)


# --------------------------------------------------------------------------------------------------
# files cut short


def _stream_end(path: Path) -> tuple[int, float]:
    """(frames, end in s) of the video data really in ``path``: its packets, read with PyAV directly."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        first, last, duration, count = None, None, 0, 0
        for packet in container.demux(stream):
            if packet.size and packet.pts is not None:
                count += 1
                first = packet.pts if first is None else min(first, packet.pts)
                if last is None or packet.pts > last:
                    last = packet.pts
                duration = packet.duration
        return count, float((last + duration - first) * stream.time_base)


def _cut(path: Path, at: int) -> Path:
    cut = path.with_name("cut_" + path.name)
    cut.write_bytes(path.read_bytes()[:at])
    return cut


def _eight_seconds(path: Path, **kwargs) -> Path:
    # MPEG-4 part 2 without B-frames: a file cut anywhere keeps a prefix of its frames
    return write_video(path, list(range(80)), Fraction(1, 10), rate=10, gop=10, codec="mpeg4", **kwargs)


def _faststart_mp4(tmp_path: Path) -> Path:
    return _eight_seconds(tmp_path / "fast.mp4", container_options={"movflags": "+faststart"})


def _mpegts(tmp_path: Path) -> Path:
    return _eight_seconds(tmp_path / "v.ts", container_format="mpegts")


def _matroska(tmp_path: Path) -> Path:
    return _eight_seconds(tmp_path / "v.mkv")


def _half(path: Path) -> int:
    return path.stat().st_size // 2


def _half_of_the_media(path: Path) -> int:
    """Half the MP4's media data (its header, in front, is most of a file this small)."""
    lo, hi = _mdat_payload(path.read_bytes())
    return (lo + hi) // 2


def _half_inside_a_ts_packet(path: Path) -> int:
    """Half the file, moved to the middle of its 188-byte transport packet (where 187 of 188 cuts fall)."""
    half = path.stat().st_size // 2
    return half - half % 188 + 94


def _truncation_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, VideoDecodeWarning)
            and ("container states" in str(w.message) or "MPEG-TS packet" in str(w.message))]


@pytest.mark.parametrize(
    "make,cut_at,words",
    [
        (_faststart_mp4, _half_of_the_media, " of the 8.0 s its container states"),
        (_matroska, _half, " of the 8.0 s its container states"),
        (_mpegts, _half_inside_a_ts_packet, ", and the file ends inside an MPEG-TS packet"),
    ],
    ids=["faststart-mp4", "matroska", "mpegts"],
)
def test_a_file_cut_short_ends_where_its_data_ends_with_one_warning(tmp_path, make, cut_at, words):
    import streaming_vlm.video as video

    whole = make(tmp_path)
    path = _cut(whole, cut_at(whole))
    frames, end = _stream_end(path)
    assert 10 < frames < 70 and 1.0 < end < 7.0  # cut near the middle, still playable
    pts_s = to_seconds(list(range(80)), Fraction(1, 10))[:frames]

    for _ in range(2):  # each pass says so once
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with VideoReader(path, fps=2.0) as reader:
                chunks = read_all(reader)
        said = _truncation_warnings(caught)
        assert len(said) == 1, [str(w.message) for w in caught]
        assert said == [f"{path}: the video stream ends at {video._fmt_s(end)} s{words} (file cut short?)"]
        assert [w.category for w in caught if str(w.message) == said[0]] == [video.VideoTruncatedWarning]
        assert reader.cut_short is not None and reader.cut_short in said[0]
        assert reader.end == pytest.approx(end, abs=1e-9) and reader.info.duration == reader.end
        check_chunks(reader, chunks, pts_s, cut_last=True)
        assert chunks[-1].end == reader.end


@pytest.mark.parametrize("make", [_faststart_mp4, _matroska, _mpegts, _eight_seconds], ids=lambda m: m.__name__)
def test_a_complete_file_gives_no_cut_short_warning(tmp_path, make):
    path = make(tmp_path / "plain.mp4") if make is _eight_seconds else make(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with VideoReader(path, fps=2.0) as reader:
            chunks = read_all(reader)
        with VideoReader(path, fps=2.0, start=2.0, duration=3.0) as reader:
            assert len(read_all(reader)) == 3
    assert [str(w.message) for w in caught] == []
    assert reader.cut_short is None
    assert len(chunks) == 8 and chunks[-1].end == pytest.approx(8.0, abs=1e-9)


def test_a_window_past_where_a_cut_file_ends(tmp_path):
    whole = _faststart_mp4(tmp_path)
    path = _cut(whole, _half_of_the_media(whole))
    _, end = _stream_end(path)
    with VideoReader(path, fps=2.0, start=1.0, duration=5.0) as reader:
        assert reader.end == 6.0  # the stated duration holds until the data runs out
        assert reader.num_chunks() == 5
        with pytest.warns(VideoDecodeWarning, match="container states"):
            chunks = read_all(reader)
        assert reader.end == pytest.approx(end) and len(chunks) == math.ceil(end - 1.0)
    with VideoReader(path, fps=2.0, start=6.5) as reader:  # starts after the data: an error while reading
        with pytest.warns(VideoDecodeWarning, match="container states"):
            with pytest.raises(VideoError, match=r"--start 6\.5 s is past the end of the video"):
                list(reader.chunks())


def test_training_fails_cleanly_on_a_clip_past_where_a_cut_file_ends(tiny, tmp_path):
    from streaming_vlm.data.annotations import AnnotationError, StreamRecord, Word
    from streaming_vlm.data.sample import SampleBuilder, SampleConfig
    from tests.conftest import SMALL_SPEC

    whole = _faststart_mp4(tmp_path)
    path = _cut(whole, _half_of_the_media(whole))
    _, end = _stream_end(path)
    words = [Word(t + 0.2, t + 0.6, "word") for t in range(8)]
    config = SampleConfig(min_pixels=SMALL_SPEC.min_pixels, max_pixels=SMALL_SPEC.max_pixels)
    builder = SampleBuilder(tiny.tokenizer, SMALL_SPEC, config)
    inside = builder.build(StreamRecord(str(path), 0.0, math.floor(end), words=words), path)
    assert len(inside.chunks) == math.floor(end)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VideoDecodeWarning)
        with pytest.raises(AnnotationError, match="the video ends before the clip does"):
            builder.build(StreamRecord(str(path), 1.0, 7.0, words=words, source="clips.jsonl:3"), path)
