"""The frame cache (``streaming_vlm/data/frames.py``): samples built from whole decoded videos in memory equal the
samples built window by window, bit for bit; budgets, eviction and the windows it cannot serve.

The oracle is the builder without a cache: each window decoded by its own ``VideoReader`` pass, seeking to the
keyframe before its start. The videos have keyframes every 4 frames and irregular timestamps, so the windows'
passes start at different keyframes and the frame on screen at a sampling time is not a fixed stride.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from streaming_vlm.data.annotations import parse_record
from streaming_vlm.data.frames import FrameCache
from streaming_vlm.data.sample import SampleBuilder, SampleConfig
from streaming_vlm.video import VideoReader

W, H = 64, 48


def write_irregular_video(path: Path, seconds: float, seed: int) -> Path:
    """Frames of random blocks (each frame unlike the others) at irregular times (gaps of 50-250 ms), GOP 4."""
    rng = np.random.default_rng(seed)
    tb = Fraction(1, 1000)
    times, t = [], 0
    while t < seconds * 1000:
        times.append(t)
        t += int(rng.integers(50, 251))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10, options={"crf": "18", "g": "4"})
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.time_base = tb
        stream.codec_context.time_base = tb
        for pts in times:
            blocks = rng.integers(0, 256, (H // 8, W // 8, 3), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(np.kron(blocks, np.ones((8, 8, 1), dtype=np.uint8)), format="rgb24")
            frame.pts, frame.time_base = pts, tb
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def window(video: Path, start: float, end: float, previous: str = "earlier words"):
    words = [[start + 0.1, start + 0.4, "the"], [start + 1.2, start + 1.6, "striker"]]
    return parse_record([
        {"role": "user", "content": [{"type": "video", "video": str(video), "video_start": start, "video_end": end},
                                     {"type": "text", "text": "", "previous": previous}]},
        {"role": "assistant", "content": [{"type": "text_stream", "text_stream": words}]},
    ])


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("frame_cache")
    return [write_irregular_video(root / "a.mp4", 13.3, seed=1), write_irregular_video(root / "b.mp4", 9.0, seed=2)]


@pytest.fixture(scope="module")
def make_builder(tiny_model_dir):
    from transformers import AutoTokenizer

    from streaming_vlm.preprocess import VisionSpec

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    spec = VisionSpec.from_pretrained(tiny_model_dir)

    def make(cache: FrameCache | None) -> SampleBuilder:
        config = SampleConfig(min_pixels=3136, max_pixels=3136)
        return SampleBuilder(tokenizer, spec, config, tokens_per_second=2, frame_cache=cache)

    return make


def assert_same_sample(a, b) -> None:
    for name in ("input_ids", "labels", "position_ids", "video_frames", "video_grid_thw"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_cached_samples_equal_window_by_window_samples_bit_for_bit(videos, make_builder):
    a, b = videos
    # aligned windows (the first, middle ones, the one running to the end with a partial last chunk), then one
    # on the half second (its chunk starts are not the whole pass's: decoded on its own)
    windows = [window(a, 3, 7), window(a, 0, 4), window(a, 8, 13.3), window(a, 11, 14), window(b, 4, 9),
               window(a, 2.5, 6.5)]
    cache = FrameCache(64 * 2**20)
    cached, plain = make_builder(cache), make_builder(None)
    for record in windows:
        got, want = cached.build(record, record.video), plain.build(record, record.video)
        assert want.video_frames.shape[0] == 2 * len(want.chunks)  # every second's two frames
        assert_same_sample(got, want)
    assert (cache.stats.fills, cache.stats.hits, cache.stats.bypasses) == (2, 5, 1)
    assert len(cache) == 2
    # the held chunks are the whole pass's, and the frames differ from second to second (a test that could fail)
    whole = list(VideoReader(a, fps=2.0, chunk_seconds=1.0).chunks())
    held = next(chunks for key, (chunks, _) in cache._videos.items() if key[0] == str(a.resolve()))
    assert sorted(held) == [c.start for c in whole] and len(whole) == 14
    assert all(np.array_equal(held[c.start], c.frames) for c in whole)
    assert not np.array_equal(whole[3].frames[0], whole[3].frames[1])
    assert cache.bytes == sum(c.frames.nbytes for c in whole) + sum(
        c.frames.nbytes for c in VideoReader(b, fps=2.0, chunk_seconds=1.0).chunks())


def test_least_recently_used_video_makes_room_and_a_video_over_the_budget_is_never_held(videos, make_builder):
    a, b = videos
    size_a = 14 * 2 * H * W * 3  # 14 chunks of 2 frames
    cache = FrameCache(size_a + 100)  # room for a or b, not both
    cached, plain = make_builder(cache), make_builder(None)
    for record in (window(a, 0, 4), window(b, 0, 4), window(a, 5, 9)):
        assert_same_sample(cached.build(record, record.video), plain.build(record, record.video))
    assert (cache.stats.fills, cache.stats.evictions, len(cache)) == (3, 2, 1)
    assert cache.bytes == size_a

    tiny = FrameCache(size_a // 2)  # neither fits: every window decoded on its own, nothing held
    cached = make_builder(tiny)
    for record in (window(a, 0, 4), window(a, 4, 8)):
        assert_same_sample(cached.build(record, record.video), plain.build(record, record.video))
    assert (tiny.stats.fills, tiny.stats.bypasses, len(tiny), tiny.bytes) == (0, 2, 0, 0)


def test_a_rewritten_video_is_decoded_again(tmp_path, make_builder):
    path = write_irregular_video(tmp_path / "v.mp4", 5.0, seed=3)
    cache = FrameCache(2**24)
    cached = make_builder(cache)
    record = window(path, 0, 4)
    first = cached.build(record, path)
    write_irregular_video(path, 5.5, seed=4)  # another file (size and time) under the same name
    second = cached.build(record, path)
    assert_same_sample(second, make_builder(None).build(record, path))
    assert not torch.equal(first.video_frames, second.video_frames)
    assert cache.stats.fills == 2


def test_budget_must_be_positive():
    with pytest.raises(ValueError, match="max_bytes must be > 0"):
        FrameCache(0)
