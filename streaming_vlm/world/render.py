"""Drawing the synthetic world: a pitch, the second's object or whistle flash, written as an H.264 mp4.

Frames are drawn one at a time from the script (``script.events``), so an hour of video costs the memory of
one frame. Frame ``k`` shows time ``k / fps``; an event of second ``s`` is on screen for ``[s, s + 1)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from streaming_vlm.world.script import WHISTLE, Event, WorldConfig

RGB = {
    "red": (225, 35, 35),
    "blue": (35, 75, 235),
    "yellow": (240, 220, 35),
    "black": (15, 15, 15),
}
PITCH = (40, 120, 50)
LINE = (225, 225, 225)
FLASH = (250, 250, 250)


def pitch(size: int) -> np.ndarray:
    """The empty pitch: plain grass with a thin halfway line."""
    img = np.empty((size, size, 3), np.uint8)
    img[:] = PITCH
    img[:, size // 2 - 1 : size // 2 + 1] = LINE
    return img


def _shape_mask(shape: str, cx: float, cy: float, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    if shape == "ball":
        r = size * 0.14  # a small disc: a quarter of the bar's area, so shape shows in how much of a frame is coloured
        return np.hypot(xx + 0.5 - cx, yy + 0.5 - cy) <= r
    half_w, half_h = size * 0.46, size * 0.13  # a bar almost as wide as the pitch
    return (np.abs(xx + 0.5 - cx) <= half_w) & (np.abs(yy + 0.5 - cy) <= half_h)


def draw(background: np.ndarray, event: Event | None, t: float) -> np.ndarray:
    """The frame at time ``t`` (seconds) given the event of that second (or None)."""
    if event is None:
        return background
    if event.kind == WHISTLE:
        img = np.empty_like(background)
        img[:] = FLASH
        return img
    size = background.shape[0]
    dt = t - event.second
    cx = float(np.clip(event.x + event.vx * dt, 0, size))
    cy = float(np.clip(event.y + event.vy * dt, 0, size))
    img = background.copy()
    img[_shape_mask(event.shape, cx, cy, size)] = RGB[event.colour]
    return img


def frames(events: Iterable[Event], seconds: int, config: WorldConfig) -> Iterator[np.ndarray]:
    """Every frame of a ``seconds``-long stream, in order."""
    background = pitch(config.size)
    upcoming = iter(events)
    nxt = next(upcoming, None)
    for second in range(seconds):
        while nxt is not None and nxt.second < second:
            nxt = next(upcoming, None)
        event = nxt if nxt is not None and nxt.second == second else None
        for k in range(config.fps):
            yield draw(background, event, second + k / config.fps)


def write_video(path: str | Path, events: Iterable[Event], seconds: int, config: WorldConfig) -> Path:
    """Encode the stream as an mp4 (H.264, yuv420p, CRF 18)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(config.fps, 1))
        stream.width = stream.height = config.size
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "18"}
        for img in frames(events, seconds, config):
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)
    return path
