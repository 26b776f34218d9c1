"""Baseline commentary from an OpenAI-compatible vision chat model (e.g. GPT-4o-mini), one segment at a time.

:class:`OpenAIBaseline` turns a :class:`Segment` (a video file and a time span) into commentary: it samples
frames with our :class:`~streaming_vlm.video.VideoReader` at an explicit frame rate (``fps``: one frame at the
centre of every ``1 / fps`` seconds, so a span of ``d`` seconds sends ``ceil(d * fps)`` frames), scales each to
at most ``max_height`` pixels high, encodes it as a base64 JPEG ``image_url`` part and sends it with the same
system prompt and instruction (``query``) our model gets. When a segment holds more than
``max_frames_per_request`` frames it is split into consecutive windows of at most that many frames, one request
each, asked in order; each later window is told the commentary of the earlier ones (its last
``max_previous_chars`` characters), as our model remembers its own. Every window becomes one item ``{response,
start_time, end_time, frames}``.

Requests use deterministic settings by default (temperature 0, a fixed seed). Connection errors, timeouts
(``timeout_s`` per request), rate limits, 408/409/5xx answers and 200 answers that are not a chat completion are
retried a bounded number of times, after a capped exponential backoff or the server's ``Retry-After``
(:meth:`~streaming_vlm.eval.judge.ChatConfig.chat`), then :class:`BaselineError` is raised; other errors raise
at once. Resuming a run is the caller's business (the benchmarks hand segments to ``runner.run_items``). It knows
nothing about benchmarks or scores; the ``openai`` package (the ``eval`` extra) and Pillow are imported only when
used.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from streaming_vlm.eval.judge import ChatConfig
from streaming_vlm.settings import DEFAULTS

__all__ = ["BaselineConfig", "BaselineError", "OpenAIBaseline", "Segment"]

log = logging.getLogger(__name__)


class BaselineError(RuntimeError):
    """The baseline API could not be reached or kept failing after the allowed retries (one line)."""


@dataclass(frozen=True)
class BaselineConfig(ChatConfig):
    """How to reach the baseline model and how it is asked (:class:`~streaming_vlm.eval.judge.ChatConfig`: by
    default temperature 0, seed 42, up to 300 reply tokens, 120 s per request), and what it is shown.

    ``system_prompt`` and ``query`` should be exactly what our model gets, so both sides follow the same
    instruction. ``fps`` is the frame budget per second of video (the same as our model's by default).
    """

    max_tokens: int = 300
    timeout_s: float = 120.0
    system_prompt: str = DEFAULTS.system_prompt
    query: str = DEFAULTS.query
    fps: float = DEFAULTS.fps
    max_frames_per_request: int = 64
    max_height: int = 360
    jpeg_quality: int = 85
    detail: str | None = None
    """``image_url.detail`` ("low", "high", "auto"); None leaves it out (the server's default)."""
    max_previous_chars: int = 4000
    """Earlier commentary shown with a request is cut to its last this many characters."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"baseline fps must be a positive number, got {self.fps}")
        if self.max_frames_per_request < 1:
            raise ValueError(f"max_frames_per_request must be >= 1, got {self.max_frames_per_request}")
        if self.max_height < 16:
            raise ValueError(f"max_height must be >= 16 pixels, got {self.max_height}")
        if not 1 <= self.jpeg_quality <= 95:
            raise ValueError(f"jpeg_quality must be in 1..95, got {self.jpeg_quality}")
        if self.detail not in (None, "low", "high", "auto"):
            raise ValueError(f"detail must be low, high or auto, got {self.detail!r}")
        if self.max_previous_chars < 0:
            raise ValueError(f"max_previous_chars must be >= 0, got {self.max_previous_chars}")


@dataclass(frozen=True)
class Segment:
    """A span ``[start, end)`` (seconds) of ``video`` to comment on, with optional earlier commentary."""

    video: str
    start: float
    end: float
    previous_text: str = ""

    def __post_init__(self) -> None:
        if not (self.start >= 0 and self.end > self.start):
            raise ValueError(f"segment [{self.start:g}, {self.end:g}) of {self.video} is empty")


class OpenAIBaseline:
    """Commentary for segments from a chat model; see the module docstring.

    ``client`` is any object with ``client.chat.completions.create(...)`` like ``openai.OpenAI``; when None one
    is built from the config with the client's own retries disabled (retries happen here). ``stats`` counts
    ``requests`` (sent, failed ones included), ``retries`` and ``frames`` (images sent).
    """

    def __init__(
        self, config: BaselineConfig, client: Any = None, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.config = config
        self.client = client if client is not None else config.client()
        self._sleep = sleep
        self.stats: dict[str, int] = {"requests": 0, "retries": 0, "frames": 0}

    # -- frames ---------------------------------------------------------------------------------------------

    def encode(self, frame: np.ndarray) -> str:
        """A ``data:image/jpeg;base64,...`` URL of one RGB ``uint8 [H, W, 3]`` frame, at most ``max_height`` high."""
        from PIL import Image

        image = Image.fromarray(frame)
        if image.height > self.config.max_height:
            width = max(1, round(image.width * self.config.max_height / image.height))
            image = image.resize((width, self.config.max_height), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=self.config.jpeg_quality)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")

    def frames(self, segment: Segment) -> tuple[list[tuple[float, str]], float]:
        """(sample time, JPEG data URL) for every frame of the segment, in one decoding pass, and where the
        segment really ends (earlier than ``segment.end`` when the video is shorter).

        Raises ``VideoError`` for an unreadable video or a segment starting past its end.
        """
        from streaming_vlm.video import VideoReader

        fps = self.config.fps
        out = []
        # One frame per 1/fps-second chunk, taken at the chunk's centre (the reader's sampling contract).
        with VideoReader(segment.video, fps=fps, chunk_seconds=1.0 / fps, start=segment.start,
                         duration=segment.end - segment.start) as reader:
            for chunk in reader.chunks():
                out.append((float(chunk.times[0]), self.encode(chunk.frames[0])))
            end = float(reader.end)
        return out, end

    # -- requests -------------------------------------------------------------------------------------------

    def messages(self, start: float, end: float, images: list[str], previous_text: str = "") -> list[dict]:
        """System prompt, then one user turn: the instruction, earlier commentary, the span, the frames."""
        c = self.config
        text = c.query
        if previous_text.strip():
            text += f"\n\nYour commentary so far:\n{previous_text.strip()}"
        text += (
            f"\n\nVideo from {start:.1f} s to {end:.1f} s: {len(images)} frames sampled at {c.fps:g} frames per "
            "second follow, in order."
        )
        image_url: list[dict] = []
        for url in images:
            part: dict[str, Any] = {"url": url}
            if c.detail is not None:
                part["detail"] = c.detail
            image_url.append({"type": "image_url", "image_url": part})
        return [
            {"role": "system", "content": c.system_prompt},
            {"role": "user", "content": [{"type": "text", "text": text}, *image_url]},
        ]

    def complete(self, messages: list[dict]) -> str:
        """The reply text of one chat completion, retried with capped exponential backoff."""
        return self.config.chat(self.client, messages, sleep=self._sleep, stats=self.stats, what="baseline",
                                error=BaselineError, calls_key="requests").strip()

    def describe(self, segment: Segment) -> list[dict[str, Any]]:
        """One item ``{response, start_time, end_time, frames}`` per request window of the segment, in order."""
        frames, segment_end = self.frames(segment)
        step = self.config.max_frames_per_request
        window_s = step / self.config.fps
        items: list[dict[str, Any]] = []
        for j in range(0, len(frames), step):
            start = segment.start + (j // step) * window_s
            end = min(start + window_s, segment_end)
            images = [url for _, url in frames[j : j + step]]
            previous = " ".join(t for t in [segment.previous_text, *(it["response"] for it in items)] if t.strip())
            previous = previous[-self.config.max_previous_chars :] if self.config.max_previous_chars else ""
            reply = self.complete(self.messages(start, end, images, previous))
            self.stats["frames"] += len(images)
            items.append({"response": reply, "start_time": round(start, 3), "end_time": round(end, 3),
                          "frames": len(images)})
        return items

    def commentary(self, segment: Segment) -> str:
        """The segment's commentary as one text (the windows' replies joined by spaces)."""
        return " ".join(it["response"] for it in self.describe(segment) if it["response"])
