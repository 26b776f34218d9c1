"""Decoded videos kept in memory for training, so that a video's windows decode it once, not once per window.

Contract
--------
* :class:`FrameCache` holds, up to ``max_bytes``, the chunks of whole videos as
  :class:`~streaming_vlm.video.VideoReader` decodes them (RGB ``uint8`` at the sampling ``fps``, before any
  resize), keyed by the file (path, size and modification time), ``fps`` and ``chunk_seconds``, and within a
  video by each chunk's start time.
* :meth:`FrameCache.chunk_frames` gives the frames of a reader's first ``n`` chunks, or ``None``. When the video
  is not held yet and its decoded frames fit the budget, one sequential pass from time 0 decodes all of it and keeps it;
  the least recently used videos are dropped to make room. The window's chunks are then looked up by their
  start times, which must equal (as floats) the start times of the whole pass's chunks: windows that start on a
  multiple of ``chunk_seconds``, as every window the project writes does. Otherwise (a window at 12.5 s with
  1-s chunks), and for a video larger than the whole budget, it returns ``None`` and the caller's reader decodes
  the window as without a cache.
* **The frames are those of the window's own pass.** The frame used for a sampling time is the last frame
  shown at that time (``video.py``), which does not depend on where a pass starts: the same time in the whole
  pass and in the window's pass picks the same frame, so a sample built from the cache equals the sample built
  without it bit for bit (``tests/test_frame_cache.py``). One exception: in a file with damaged data, frames
  after the damage can differ between a pass that decoded through it and one that started after it.
* Each process holds its own cache: with DataLoader workers, every worker holds up to ``max_bytes``.

Nothing is decoded at import or construction.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from streaming_vlm.video import VideoReader

__all__ = ["FrameCache", "FrameCacheStats"]

logger = logging.getLogger(__name__)


@dataclass
class FrameCacheStats:
    """Counts since the cache was made: windows served from memory (``hits``), whole videos decoded and kept
    (``fills``), videos dropped for room (``evictions``) and windows decoded on their own (``bypasses``: a video
    over the budget, or chunk starts that are not the whole pass's)."""

    hits: int = 0
    fills: int = 0
    evictions: int = 0
    bypasses: int = 0


class FrameCache:
    """Whole decoded videos in memory, least recently used dropped first (see the module docstring).

    Args:
        max_bytes: the budget for the frames held (> 0).
    """

    def __init__(self, max_bytes: int):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.stats = FrameCacheStats()
        self._videos: OrderedDict[tuple, tuple[dict[float, np.ndarray], int]] = OrderedDict()
        self._too_big: set[tuple] = set()

    def __len__(self) -> int:
        """Videos held."""
        return len(self._videos)

    def chunk_frames(self, reader: VideoReader, n: int) -> list[np.ndarray] | None:
        """The frames (``uint8 [frames per chunk, H, W, 3]``) of ``reader``'s chunks ``0 .. n-1`` that start before
        its end, from memory (decoding and keeping the whole video first if it fits); ``None`` when the cache cannot
        serve them, and the caller decodes the window with ``reader``."""
        held = self._held(self._key(reader), reader)
        if held is not None:
            starts = [reader.start + k * reader.chunk_seconds for k in range(n)]
            starts = [s for s in starts if s < reader.end]
            if all(s in held for s in starts):
                self.stats.hits += 1
                return [held[s] for s in starts]
        self.stats.bypasses += 1
        return None

    def _key(self, reader: VideoReader) -> tuple:
        path = os.path.realpath(reader.path)
        st = os.stat(path)
        return path, st.st_size, st.st_mtime_ns, reader.fps, reader.chunk_seconds

    def _held(self, key: tuple, reader: VideoReader) -> dict[float, np.ndarray] | None:
        """The video's chunks by start time, decoding and keeping them first if they fit; ``None`` if not."""
        if key in self._videos:
            self._videos.move_to_end(key)
            return self._videos[key][0]
        if key in self._too_big:
            return None
        info = reader.info
        expected = int(info.duration * reader.fps + reader.frames_per_chunk) * info.height * info.width * 3
        if expected > self.max_bytes:
            self._too_big.add(key)
            logger.info("frame cache: %s (~%.0f MB decoded) is over the %.0f MB budget; its windows are decoded "
                        "one by one", reader.path, expected / 2**20, self.max_bytes / 2**20)
            return None
        chunks: dict[float, np.ndarray] = {}
        size = 0
        with VideoReader(reader.path, fps=reader.fps, chunk_seconds=reader.chunk_seconds) as whole:
            for chunk in whole.chunks():
                chunks[chunk.start] = chunk.frames
                size += chunk.frames.nbytes
        while self._videos and self.bytes + size > self.max_bytes:
            _, (_, dropped) = self._videos.popitem(last=False)
            self.bytes -= dropped
            self.stats.evictions += 1
        if size > self.max_bytes:  # the stated duration was short of the real one
            self._too_big.add(key)
            return chunks
        self._videos[key] = (chunks, size)
        self.bytes += size
        self.stats.fills += 1
        return chunks
