"""Training samples laid out exactly like the streaming inference context.

A sample is built from one annotation record (a clip ``[video_start, video_end)`` with word timestamps) with
the inference engine's own pieces: the stream layout (``layout.py``), the frame reader (``video.py``, same
sampling times), the preprocessing (``preprocess.py``, same resize rules), the previous-text cut
(``CachePolicy.keep_previous``: first ``text_sink`` and last ``text_window`` tokens, exactly as the cache keeps
them) and the position rule (``positions.py``: contiguous M-RoPE over the cut sequence). So a sample of the
window ``[a, a + V)`` of a stream *is* what the inference cache holds after streaming that stream from 0 s
with its commentary teacher-forced, up to second ``a + V - 1``, with vision window and text rounds V: the
system prompt, the previous text (the stream's initial previous text followed by every earlier second's
commentary, as ``data/windows.py`` composes it and as the cache retires it, cut to its first ``text_sink``
and last ``text_window`` tokens), then the window's rounds. ``tests/test_alignment.py`` asserts it token for
token (ids, kinds, positions, layer-0 keys and values) while blocks are evicted, turns retired and previous
text cut.

Per 1-second chunk: a user turn ``Time=a-bs`` with that second's frames (a QA question joins the turn of the
second it is asked in), then an assistant turn with the words that *end* inside that second, followed by
`` ...`` and ``<|im_end|>``. Labels cover the assistant content, the marker and ``<|im_end|>``; nothing else.

The query joins the first chunk's turn only when the sample starts its stream (``video_start`` 0 s, where
``streaming-vlm infer`` starts a stream by default): the engine puts it in round 0 and evicts it with that
round once the vision window has passed, so a window starting later corresponds to a cache that no longer
holds it (the reference trained with no query at all and inferred with it in round 0 only). Known residual: a
stream started mid-video (``infer --start S``) has the query in its round 0, while the training window at S
has none, for its first vision-window seconds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from streaming_vlm.data.annotations import AnnotationError, StreamRecord
from streaming_vlm.data.windows import commentary
from streaming_vlm.layout import DEFAULT_QUERY, DEFAULT_SYSTEM_PROMPT, StreamLayout, TokenMeta
from streaming_vlm.policy import CachePolicy
from streaming_vlm.positions import assign_positions
from streaming_vlm.preprocess import VideoPreprocessor, VisionSpec
from streaming_vlm.video import VideoReader

IGNORE_INDEX = -100


@dataclass(frozen=True)
class SampleConfig:
    """How records become samples; the defaults are the reference's."""

    text_sink: int | None = 512
    text_window: int | None = 512
    fps: float = 2.0
    chunk_seconds: float = 1.0
    query: str = DEFAULT_QUERY
    """Joins the first chunk of a sample that starts its stream, and no other (see the module doc)."""
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    min_pixels: int = 100 * 28 * 28
    """Per frame."""
    max_pixels: int = 768 * 28 * 28
    """Per frame (the inference cap)."""
    total_pixels: int = 24576 * 28 * 28
    """Whole sample: long clips get fewer pixels per frame (never fewer than ``min_pixels``)."""
    max_frames: int = 480
    """Frames per sample at most; a longer clip is cut at that many frames."""

    def frame_max_pixels(self, n_frames: int, temporal_patch_size: int = 2) -> int:
        """Per-frame pixel cap for a sample of ``n_frames`` frames (the reference's rule)."""
        budget = int(self.total_pixels * temporal_patch_size / max(n_frames, 1))
        return max(min(self.max_pixels, budget), self.min_pixels)


def opens_stream(record: StreamRecord) -> bool:
    """Whether ``record`` starts its stream (``video_start`` 0 s): only then does the query join its first chunk."""
    return abs(record.video_start) < 1e-6


@dataclass
class ChunkPlan:
    """What one second of a sample holds, before any frame is read."""

    index: int
    start: float
    end: float
    text: str
    """Assistant commentary: the words ending in (start, end], each with a leading space."""
    question: str | None = None
    answer: str | None = None

    @property
    def assistant_text(self) -> str:
        return f"{self.answer}\n{self.text}" if self.answer else self.text


@dataclass
class TrainingSample:
    input_ids: torch.Tensor  # long (L,)
    labels: torch.Tensor  # long (L,), IGNORE_INDEX where not supervised
    position_ids: torch.Tensor  # long (3, L)
    pixel_values_videos: torch.Tensor  # float32 (N, 3 * temporal_patch * patch * patch)
    video_grid_thw: torch.Tensor  # long (K, 3), one row per chunk
    meta: TokenMeta | None = None
    chunks: list[ChunkPlan] = field(default_factory=list)
    source: str = ""

    @property
    def num_supervised(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())


class SampleBuilder:
    """Builds ``TrainingSample``s from ``StreamRecord``s with the inference layout.

    Args:
        tokenizer: the model's tokenizer.
        vision_spec: patch geometry (``VisionSpec.from_pretrained(model_dir)``); its pixel bounds are
            replaced by the config's per-sample budget.
        config: ``SampleConfig``.
        tokens_per_second: the model's ``vision_config.tokens_per_second`` (2 for Qwen2.5-VL).
    """

    def __init__(self, tokenizer, vision_spec: VisionSpec | None = None, config: SampleConfig | None = None,
                 tokens_per_second: float = 2):
        self.config = config or SampleConfig()
        self.spec = vision_spec or VisionSpec()
        time_interval = tokens_per_second * self.spec.temporal_patch_size / self.config.fps
        self.layout = StreamLayout(tokenizer, self.config.system_prompt, time_interval=time_interval)
        self.policy = CachePolicy(None, None, self.config.text_sink, self.config.text_window)
        self.frames_per_chunk = round(self.config.fps * self.config.chunk_seconds)

    # ---- planning (no video needed) ------------------------------------------------------------------------

    def plan(self, record: StreamRecord, video_end: float | None = None) -> list[ChunkPlan]:
        """The chunks of a record: times, commentary and QA per second.

        ``video_end``: where the video really ends, if earlier than ``record.video_end``.
        """
        c = self.config.chunk_seconds
        end = min(record.video_end, video_end) if video_end is not None else record.video_end
        max_chunks = self.config.max_frames // self.frames_per_chunk
        n = 0
        while record.video_start + n * c < end - 1e-9 and n < max_chunks:
            n += 1
        plans = []
        for k in range(n):
            t0 = record.video_start + k * c
            t1 = min(t0 + c, end)
            words = [w.text for w in record.words if t0 < w.end <= t1]
            qa = [q for q in record.qa if t0 < q.ask_time <= t1]
            plans.append(
                ChunkPlan(
                    k, t0, t1, commentary(words),
                    question="\n".join(q.question for q in qa) or None,
                    answer="\n".join(q.answer for q in qa) or None,
                )
            )
        return plans

    def previous_ids(self, text: str) -> list[int]:
        """Previous text ids cut to the first ``text_sink`` and last ``text_window`` tokens."""
        return self.policy.cut_previous(self.layout.encode(text))

    def tokens(self, record: StreamRecord, plans: list[ChunkPlan], grids: list[tuple[int, int, int]]
               ) -> tuple[TokenMeta, torch.Tensor]:
        """Token bookkeeping and labels of a sample given each chunk's LLM grid (t, h, w)."""
        layout = self.layout
        parts: list[TokenMeta] = [layout.system(), layout.previous_text(self.previous_ids(record.previous))]
        supervised: list[torch.Tensor] = [torch.zeros(len(parts[0]) + len(parts[1]), dtype=torch.bool)]
        query = self.config.query if opens_stream(record) else None
        for plan, grid in zip(plans, grids, strict=True):
            user = layout.user_turn(plan.index, plan.start, plan.end, grid,
                                    layout.user_text(query if plan.index == 0 else None, plan.question))
            head = layout.assistant_head(plan.index)
            content = layout.content_meta(plan.index, layout.assistant_content(plan.assistant_text))
            close = layout.assistant_close(plan.index)
            parts += [user, head, content, close]
            close_sup = torch.zeros(len(close), dtype=torch.bool)
            close_sup[0] = True  # <|im_end|>, not the newline after it
            supervised += [torch.zeros(len(user) + len(head), dtype=torch.bool),
                           torch.ones(len(content), dtype=torch.bool), close_sup]
        meta = TokenMeta.cat(parts)
        sup = torch.cat(supervised)
        labels = torch.where(sup, meta.ids, torch.full_like(meta.ids, IGNORE_INDEX))
        return meta, labels

    # ---- the sample ----------------------------------------------------------------------------------------

    def build(self, record: StreamRecord, video_path: str | Path) -> TrainingSample:
        """Read the clip's frames and build the sample; ``VideoError``/``AnnotationError`` on bad input."""
        cfg = self.config
        reader = VideoReader(video_path, fps=cfg.fps, chunk_seconds=cfg.chunk_seconds, start=record.video_start,
                             duration=record.video_end - record.video_start)
        with reader:
            plans = self.plan(record, video_end=reader.end)
            if not plans:
                raise AnnotationError(f"{record.source}: the clip holds no full chunk of video")
            if not any(p.text or p.answer for p in plans):
                raise AnnotationError(f"{record.source}: empty transcript (no word ends inside the clip)")
            n_frames = len(plans) * self.frames_per_chunk
            frame_max = cfg.frame_max_pixels(n_frames, self.spec.temporal_patch_size)
            spec = dataclasses.replace(self.spec, min_pixels=min(cfg.min_pixels, frame_max), max_pixels=frame_max)
            pre = VideoPreprocessor(spec)
            pixels, grids = [], []
            for chunk, _plan in zip(reader.chunks(), plans, strict=False):
                pv, grid = pre(chunk.frames)
                pixels.append(pv)
                grids.append(grid)
        if len(grids) != len(plans):
            raise AnnotationError(f"{record.source}: the video ends before the clip does")
        m = self.spec.merge_size
        llm_grids = [(int(g[0, 0]), int(g[0, 1]) // m, int(g[0, 2]) // m) for g in grids]
        meta, labels = self.tokens(record, plans, llm_grids)
        positions, _ = assign_positions(meta.group_start, meta.rel)
        return TrainingSample(
            input_ids=meta.ids,
            labels=labels,
            position_ids=positions,
            pixel_values_videos=torch.cat(pixels),
            video_grid_thw=torch.cat(grids),
            meta=meta,
            chunks=plans,
            source=record.source,
        )
