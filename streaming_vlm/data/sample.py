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
from streaming_vlm.data.frames import FrameCache
from streaming_vlm.data.windows import commentary
from streaming_vlm.layout import Kind, StreamLayout, TokenMeta
from streaming_vlm.policy import CachePolicy
from streaming_vlm.positions import assign_positions
from streaming_vlm.preprocess import VideoPreprocessor, VisionSpec
from streaming_vlm.settings import SettingsError, StreamSettings
from streaming_vlm.video import VideoError, VideoReader

IGNORE_INDEX = -100

DEFAULT_MAX_SAMPLE_TOKENS = 40_960
"""Default cap on a sample's tokens. The longest legitimate sample under the default budgets is a 4-minute clip
(``max_frames`` 480 at 2 fps): 24,576 vision tokens (the whole ``total_pixels`` budget), about 28 template tokens
per second with Qwen's tokenizer (``Time=a-bs``, turn heads and ends, the marker: 6,720), 1,024 previous-text
tokens plus ~20 of system prompt and query, and its commentary (4 words/s for 240 s is ~1,250 tokens): about
33,600. A 24-s window holds at most 24 x 768 = 18,432 vision tokens and ~20,300 tokens in all. 40,960 admits both
with room to spare and rejects pathological transcripts (20,000 words in one 24-s window made a 101k-token
sample)."""


class SampleTooLongError(AnnotationError):
    """A record whose sample would exceed ``max_sample_tokens``: a bad sample, skipped like any other."""


@dataclass(frozen=True, kw_only=True)
class SampleConfig(StreamSettings):
    """How records become samples: the stream settings (defaults, checks and help in ``streaming_vlm/settings.py``;
    the defaults are the reference's) and the cap on a sample's tokens.

    A sample uses ``fps``, ``chunk_seconds``, ``query`` (joins the first chunk of a sample that starts its stream,
    and no other: see the module doc), ``system_prompt``, ``text_sink``/``text_window`` (the previous-text cut),
    ``max_frames`` (a longer clip is cut at that many frames) and the pixel budget: a clip of known length shares
    ``total_pixels`` among its frames, within ``[min_pixels, max_pixels]`` per frame (``frame_pixels``)."""

    max_sample_tokens: int | None = DEFAULT_MAX_SAMPLE_TOKENS
    """Tokens per sample at most (vision and text); a longer record raises :class:`SampleTooLongError` before any
    frame is decoded. ``None``: no cap."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_sample_tokens is not None and self.max_sample_tokens < 1:
            raise SettingsError(f"max_sample_tokens must be >= 1 or null, got {self.max_sample_tokens}")

    def frame_max_pixels(self, n_frames: int, temporal_patch_size: int = 2) -> int:
        """Per-frame pixel cap for a sample of ``n_frames`` frames: ``frame_pixels``' cap."""
        return self.frame_pixels(n_frames, temporal_patch_size)[1]


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
    """One sample. Its frames travel **resized but still uint8** (``video_frames``), a quarter of the float32
    ``pixel_values_videos`` they become (a 24-s window of 720p at 2 fps: 81 MB instead of 325 MB), because samples
    cross the DataLoader workers' shared memory. The resize ran in :meth:`SampleBuilder.build` on the CPU, as the
    one-go preprocessing does; rescale, normalise and patchify run where the model is
    (:func:`video_pixel_values`), and the two halves equal :class:`VideoPreprocessor` in one go bit for bit."""

    input_ids: torch.Tensor  # long (L,)
    labels: torch.Tensor  # long (L,), IGNORE_INDEX where not supervised
    position_ids: torch.Tensor  # long (3, L)
    video_frames: torch.Tensor  # uint8 (T, H', W', 3): every chunk's frames, resized; T = K * frames per chunk
    video_grid_thw: torch.Tensor  # long (K, 3), one row per chunk, in vision-tower patches (as the model takes it)
    meta: TokenMeta | None = None
    chunks: list[ChunkPlan] = field(default_factory=list)
    source: str = ""
    skipped: list[dict] = field(default_factory=list)
    """Bad lines tried, and skipped, in place of this sample; reported to the trainer through the batch."""

    @property
    def num_supervised(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())

    def pixel_values_videos(self, spec: VisionSpec, device: str | torch.device | None = None) -> torch.Tensor:
        """The float32 ``pixel_values_videos`` of this sample (see :func:`video_pixel_values`)."""
        return video_pixel_values(self.video_frames, self.video_grid_thw, spec, device)


def video_pixel_values(
    video_frames: torch.Tensor,
    video_grid_thw: torch.Tensor,
    spec: VisionSpec,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``pixel_values_videos`` ``(sum t*h*w, 3 * temporal_patch_size * patch_size ** 2)`` on ``device`` (default:
    the frames' device) from resized uint8 frames: the second half of :class:`VideoPreprocessor`.

    ``video_frames`` holds, read flat and in ``video_grid_thw`` order, each chunk's ``t * temporal_patch_size``
    frames of ``(h * patch_size, w * patch_size, 3)`` (rows ``(t, h, w)`` of ``video_grid_thw``, in patches), as
    :meth:`VideoPreprocessor.resize` left them; ``spec`` gives the patch geometry and mean/std. Runs of chunks of
    one size go through one :class:`VideoPreprocessor` call whose pixel bounds equal that size, so nothing is
    resized again and the rows are exactly those of the one-go preprocessing, chunk after chunk.
    ``ValueError`` when the frames and the grid disagree.
    """
    flat = video_frames.reshape(-1)
    if flat.dtype != torch.uint8:
        raise ValueError(f"video_frames must be uint8, got {flat.dtype}")
    device = flat.device if device is None else torch.device(device)
    p, tp = spec.patch_size, spec.temporal_patch_size
    grid = [tuple(int(v) for v in row) for row in video_grid_thw.reshape(-1, 3).tolist()]
    out: list[torch.Tensor] = []
    offset = i = 0
    while i < len(grid):
        height, width = grid[i][1] * p, grid[i][2] * p
        n_frames = 0
        while i < len(grid) and (grid[i][1] * p, grid[i][2] * p) == (height, width):
            n_frames += grid[i][0] * tp
            i += 1
        size = n_frames * height * width * 3
        if offset + size > flat.numel():
            raise ValueError(f"video_frames hold {flat.numel()} values, fewer than video_grid_thw describes")
        exact = dataclasses.replace(spec, min_pixels=height * width, max_pixels=height * width)
        pixels, _ = VideoPreprocessor(exact, device=device, dtype=dtype)(
            flat[offset : offset + size].view(n_frames, height, width, 3)
        )
        out.append(pixels)
        offset += size
    if offset != flat.numel():
        raise ValueError(f"video_frames hold {flat.numel()} values, video_grid_thw describes {offset}")
    if not out:
        return torch.zeros(0, 3 * tp * p * p, dtype=dtype, device=device)
    return torch.cat(out)


class SampleBuilder:
    """Builds ``TrainingSample``s from ``StreamRecord``s with the inference layout.

    Args:
        tokenizer: the model's tokenizer.
        vision_spec: patch geometry (``VisionSpec.from_pretrained(model_dir)``); its pixel bounds are
            replaced by the config's per-sample budget.
        config: ``SampleConfig``; its chunks must hold an even whole number of frames (``SettingsError``).
        tokens_per_second: the model's ``vision_config.tokens_per_second`` (2 for Qwen2.5-VL).
        frame_cache: whole decoded videos kept in memory (``data/frames.py``); ``None``: every sample decodes its
            own window. The samples are the same either way.
    """

    def __init__(self, tokenizer, vision_spec: VisionSpec | None = None, config: SampleConfig | None = None,
                 tokens_per_second: float = 2, frame_cache: FrameCache | None = None):
        self.config = config or SampleConfig()
        self.config.check_chunks()  # Qwen2.5-VL encodes frames in pairs
        self.spec = vision_spec or VisionSpec()
        time_interval = tokens_per_second * self.spec.temporal_patch_size / self.config.fps
        self.layout = StreamLayout(tokenizer, self.config.system_prompt, time_interval=time_interval)
        self.policy = CachePolicy(None, None, self.config.text_sink, self.config.text_window)
        self.frames_per_chunk = round(self.config.fps * self.config.chunk_seconds)
        self.frame_cache = frame_cache

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

    def check_length(self, record: StreamRecord, meta: TokenMeta) -> None:
        """:class:`SampleTooLongError` when the sample's tokens exceed ``max_sample_tokens``."""
        cap = self.config.max_sample_tokens
        if cap is None or len(meta) <= cap:
            return
        vision = int((meta.kind == Kind.VISION).sum())
        raise SampleTooLongError(
            f"{record.source}: {len(meta)} tokens ({vision} vision, {len(meta) - vision} text; {len(record.words)} "
            f"words), above max_sample_tokens={cap}"
        )

    def build(self, record: StreamRecord, video_path: str | Path) -> TrainingSample:
        """Read the clip's frames and build the sample; ``VideoError``/``AnnotationError`` on bad input,
        :class:`SampleTooLongError` (before any frame is decoded) when it would exceed ``max_sample_tokens``."""
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
            pre = VideoPreprocessor(cfg.vision_spec(self.spec, n_frames))
            # Every decoded frame has the probed size (video.py rescales a mid-stream change to it), so the grid,
            # the tokens and the sample's length are known before a single frame is decoded.
            grid = pre.grid_thw(self.frames_per_chunk, reader.info.height, reader.info.width)
            m = self.spec.merge_size
            meta, labels = self.tokens(record, plans, [(grid[0], grid[1] // m, grid[2] // m)] * len(plans))
            self.check_length(record, meta)
            size = (grid[1] * self.spec.patch_size, grid[2] * self.spec.patch_size)
            decoded = self.frame_cache.chunk_frames(reader, len(plans)) if self.frame_cache is not None else None
            if decoded is None:
                decoded = (chunk.frames for chunk in reader.chunks())
            frames = []
            for _plan, raw in zip(plans, decoded, strict=False):  # plans first: no chunk decoded past them
                resized = pre.resize(raw)  # uint8 [frames per chunk, H', W', 3], on the CPU
                if tuple(resized.shape[1:3]) != size:
                    raise VideoError(f"{video_path}: frames of {raw.shape[2]}x{raw.shape[1]} "
                                     f"where the probe found {reader.info.width}x{reader.info.height}")
                frames.append(resized)
        if len(frames) != len(plans):
            raise AnnotationError(f"{record.source}: the video ends before the clip does")
        positions, _ = assign_positions(meta.group_start, meta.rel)
        return TrainingSample(
            input_ids=meta.ids,
            labels=labels,
            position_ids=positions,
            video_frames=torch.cat(frames),
            video_grid_thw=torch.tensor([grid] * len(plans), dtype=torch.long),
            meta=meta,
            chunks=plans,
            source=record.source,
        )
