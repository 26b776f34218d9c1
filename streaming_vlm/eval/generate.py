"""Streaming commentary over a span of a video, shared by every benchmark that generates text.

``stream_span`` decodes ``[start, end)`` of a video chunk by chunk (one sequential pass) and feeds each chunk
to a fresh :class:`~streaming_vlm.engine.StreamSession`, yielding the engine's ``ChunkResult`` per chunk.
The benchmark decides the query, the previous text and the mode through ``StreamConfig``; this module knows
nothing about datasets, prompts or scores.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from streaming_vlm.engine import ChunkResult, StreamConfig, StreamSession
from streaming_vlm.models import LoadedModel
from streaming_vlm.preprocess import VisionSpec
from streaming_vlm.settings import DEFAULTS, StreamSettings


@dataclass
class EvalModel:
    """A loaded checkpoint and the preprocessing geometry every benchmark uses with it (the pixel bounds of a
    stream: the settings' ``frame_pixels()``)."""

    loaded: LoadedModel
    spec: VisionSpec


def load_eval_model(model: str, settings: StreamSettings = DEFAULTS, *, device: str = "auto",
                    dtype: str = "auto") -> EvalModel:
    """Load ``model`` (hub id, directory, ``demo`` or ``tiny``) once; raises ``ModelLoadError`` (one line).

    The vision spec takes the checkpoint's geometry and the per-frame pixel bounds of a stream from ``settings``
    (``StreamSettings.vision_spec``). Under torchrun, ``device="auto"`` is this rank's GPU (``cuda:$LOCAL_RANK``).
    """
    from streaming_vlm.eval.runner import rank_device
    from streaming_vlm.models import load_model, resolve_model_path

    loaded = load_model(resolve_model_path(model), device=rank_device(device), dtype=dtype)
    return EvalModel(loaded, settings.vision_spec(loaded.path))


def new_session(model: EvalModel, config: StreamConfig, spec: VisionSpec | None = None) -> StreamSession:
    """A fresh stream (empty cache) for ``model`` under ``config``, with ``spec`` (default: the model's)."""
    return StreamSession(model.loaded.model, model.loaded.tokenizer, config, vision_spec=spec or model.spec)


def stream_span(
    model: EvalModel,
    video: str | os.PathLike[str],
    config: StreamConfig,
    *,
    start: float = 0.0,
    end: float | None = None,
) -> Iterator[ChunkResult]:
    """Commentary on ``[start, end)`` of ``video`` (to the video's end when ``end`` is None), chunk by chunk.

    Raises ``VideoError`` for an unreadable video and ``ValueError`` when ``end <= start``.
    """
    from streaming_vlm.video import VideoReader

    if end is not None and end <= start:
        raise ValueError(f"span end {end:g} is not after its start {start:g}")
    duration = None if end is None else end - start
    session = new_session(model, config)
    with VideoReader(video, fps=config.fps, chunk_seconds=config.chunk_seconds, start=start,
                     duration=duration) as reader:
        for chunk in reader.chunks():
            yield session.step(chunk.frames, chunk.start, chunk.end)
