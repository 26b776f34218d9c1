"""Synthetic videos for demos, tests and benchmarks: coloured shapes moving over a gradient.

Deterministic by seed, any length, written frame by frame with PyAV (memory stays flat for hours of
video); :func:`synthetic_scene` gives the same frames in memory, by time, without encoding. It knows nothing
about models or commentary.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
}


def _frame(t: float, width: int, height: int, shapes: np.ndarray, background: np.ndarray) -> np.ndarray:
    img = background.copy()
    for x0, y0, vx, vy, size, color in shapes:
        # bounce inside the frame: triangle wave of the unbounded motion
        span_x, span_y = width - size, height - size
        x = abs((x0 + vx * t) % (2 * span_x) - span_x) if span_x > 0 else 0
        y = abs((y0 + vy * t) % (2 * span_y) - span_y) if span_y > 0 else 0
        xi, yi, s = int(span_x - x), int(span_y - y), int(size)
        img[yi : yi + s, xi : xi + s] = list(COLORS.values())[int(color)]
    return img


def synthetic_scene(width: int = 160, height: int = 112, *, seed: int = 0,
                    shapes: int = 3) -> Callable[[float], np.ndarray]:
    """The scene :func:`write_synthetic_video` draws, as a function from time (s) to the RGB frame at that time
    (uint8 [height, width, 3], a new array each call)."""
    rng = np.random.default_rng(seed)
    size = max(8, min(width, height) // 5)
    spec = np.stack(
        [
            rng.uniform(0, width, shapes),
            rng.uniform(0, height, shapes),
            rng.uniform(-40, 40, shapes),
            rng.uniform(-30, 30, shapes),
            np.full(shapes, size),
            rng.integers(0, len(COLORS), shapes),
        ],
        axis=1,
    )
    yy, xx = np.mgrid[0:height, 0:width]
    background = np.stack([xx * 255 // max(width, 1), yy * 255 // max(height, 1), np.full_like(xx, 90)], -1)
    background = background.astype(np.uint8)
    return lambda t: _frame(t, width, height, spec, background)


def write_synthetic_video(
    path: str | Path,
    seconds: float,
    *,
    fps: int = 10,
    width: int = 160,
    height: int = 112,
    seed: int = 0,
    shapes: int = 3,
) -> Path:
    """Write an H.264 mp4 of ``seconds`` seconds; returns its path."""
    if seconds <= 0 or fps <= 0:
        raise ValueError("seconds and fps must be > 0")
    import av  # only writing needs it: the in-memory scene runs where PyAV is not installed (the GPU benchmark)

    scene = synthetic_scene(width, height, seed=seed, shapes=shapes)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps, 1))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # no macroblock-tree rate control: with it this libx264 encodes the same frames differently run to run
        stream.options = {"preset": "veryfast", "crf": "28", "x264-params": "no-mbtree=1"}
        for i in range(int(round(seconds * fps))):
            frame = av.VideoFrame.from_ndarray(scene(i / fps), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
