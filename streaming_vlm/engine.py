"""The streaming engine: one ``StreamSession`` per video stream, fed chunk by chunk.

A session holds all per-stream state (cache, round counter, sampler, the frames kept for recomputing) and
nothing about where frames come from: callers hand it each chunk's frames (a file reader, a camera, a server).
Per chunk it preprocesses the frames on the model's device, prefills the new tokens with
explicit positions (the vision tower runs on this chunk only), decodes up to ``max_new_tokens`` until
``<|im_end|>``, and closes the assistant turn, so that after ``step`` the cache holds exactly the stream
layout of ``layout.py``. Logits are computed only where a token is sampled.

Decoding runs in static steps (``cache.StreamingCache.static_step``): the sampled token stays on the device, its
forward writes at device-side slots of the cache's fixed buffers and attends over them with a mask, sampling runs on
the device (``sampling.TokenSampler``), and the one host sync per token reads the sampled id (the stop check, the
token limit and ``on_token`` need it). The closing ``<|im_end|>\n`` (after the last content token when the limit cut
it) is one more static step without logits: it cannot join the next chunk's prefill, because that prefill follows
the eviction, which would change what the closing tokens attend to and the cache would not hold the stream layout
after ``step``. Steps are captured as CUDA graphs once per shape and replayed (``graphs.py``; on by default on a
CUDA device). The cache is sized once to the policy's worst case on the first chunk (:meth:`StreamSession._reserve`).
``step`` is ``begin_chunk`` (prefill), ``decode_chunk``, ``end_chunk``; those and the static decode's per-token pieces
(``begin_static_decode``, ``take_token``, ``load_close``, ``commit_turn``) let ``batch.step_many`` decode several
sessions in one forward per token by this session's own rules.

Modes, on one code path:

- ``streaming``: the StreamingVLM cache policy (sinks, vision window, text window, contiguous M-RoPE);
- ``full``: nothing is ever evicted (full attention over the whole stream);
- ``sliding``: no eviction, but the context restarts from scratch every ``reset_every`` seconds;
- ``recompute``: keeps the same tokens as ``streaming`` but re-prefills them from scratch every chunk
  (re-encoding the kept frames), with no KV reuse.

``refresh_every`` N > 0 (``streaming`` mode only) re-prefills the kept tokens from scratch, as ``recompute`` does, on
every N-th chunk and reuses K/V in between. A kept token's deeper-layer K/V were computed while tokens since evicted
were visible, and its previous-text tokens while they were verbatim turns, unlike a training sample's from-scratch
forward of the same tokens; a refresh makes every layer equal that forward again (``tests/test_alignment.py``), at the
cost of one prefill of the kept context every N chunks. The frames of the vision window are kept for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from streaming_vlm.attention import use_streaming_attention
from streaming_vlm.cache import StreamingCache
from streaming_vlm.graphs import StepGraphs, graph_backend
from streaming_vlm.layout import Kind, StreamLayout, TokenMeta
from streaming_vlm.policy import CachePolicy
from streaming_vlm.preprocess import VideoPreprocessor, VisionSpec
from streaming_vlm.sampling import SamplingConfig, TokenSampler
from streaming_vlm.settings import DEFAULTS

logger = logging.getLogger(__name__)

MODES = ("streaming", "full", "sliding", "recompute")
TIME_TEXT_SLACK = 8
"""Tokens per round the ``Time=a-bs`` text may grow by in the worst case (longer numbers later in a stream)."""


@dataclass
class StreamConfig:
    """Everything that decides what a stream's context holds and how commentary is sampled."""

    mode: str = "streaming"
    """One of streaming, full, sliding, recompute."""
    query: str = DEFAULTS.query
    """Instruction joined to the first chunk's user turn."""
    previous_text: str = ""
    """Earlier commentary or context (title, transcript so far) placed in the previous-text turn."""
    system_prompt: str = DEFAULTS.system_prompt
    chunk_seconds: float = DEFAULTS.chunk_seconds
    fps: float = DEFAULTS.fps
    vision_window: int | None = DEFAULTS.vision_window
    text_rounds: int | None = DEFAULTS.text_rounds
    text_sink: int | None = DEFAULTS.text_sink
    text_window: int | None = DEFAULTS.text_window
    reset_every: float = DEFAULTS.reset_every
    """Seconds between context restarts in ``sliding`` mode."""
    refresh_every: int = DEFAULTS.refresh_every
    """Re-prefill the kept tokens from scratch every this many chunks in ``streaming`` mode; 0 = never."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    seed: int = DEFAULTS.seed

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.chunk_seconds <= 0 or self.fps <= 0:
            raise ValueError("chunk_seconds and fps must be > 0")
        if self.reset_every <= 0:
            raise ValueError(f"reset_every must be > 0, got {self.reset_every}")
        if self.refresh_every < 0:
            raise ValueError(f"refresh_every must be >= 0, got {self.refresh_every}")
        self.policy()  # validates the window options

    def policy(self) -> CachePolicy:
        if self.mode in ("full", "sliding"):
            return CachePolicy.unlimited()
        return CachePolicy(self.vision_window, self.text_rounds, self.text_sink, self.text_window)


@dataclass
class ChunkResult:
    index: int
    start: float
    end: float
    text: str
    """Commentary of this chunk, without the `` ...`` marker."""
    token_ids: list[int]
    """Generated (or forced) assistant content, marker included."""
    latency_s: float
    """Wall time of the whole step: preprocessing, vision tower, prefill, decoding, closing the turn."""
    decode_s: float
    """Wall time of the decoding loop alone."""
    new_tokens: int
    cache_tokens: int
    prefill_tokens: int
    logits: list[torch.Tensor] | None = None
    """The logits each token was selected from (only with ``StreamSession(..., keep_logits=True)``)."""


@dataclass
class ChunkRun:
    """A chunk between :meth:`StreamSession.begin_chunk` (prefilled) and :meth:`StreamSession.end_chunk`."""

    round: int
    start: float
    end: float
    t0: float
    """``time.perf_counter()`` when the chunk began (its result's ``latency_s`` runs from here)."""
    limit: int
    """Content tokens it may decode."""
    prefill_tokens: int
    forced: bool = False
    logits: torch.Tensor | None = None
    """The first token's logits (V,) when the commentary is to be decoded; None once forced text closed the turn."""
    content: list[int] = field(default_factory=list)
    decode_s: float = 0.0
    all_logits: list[torch.Tensor] = field(default_factory=list)


@dataclass
class ChoiceResult:
    index: int
    """Index of the chosen option."""
    option: str
    logprobs: list[float]
    """Log-probability of each option's answer (option + newline), given the context."""
    latency_s: float


class StreamSession:
    """Streaming commentary for one stream.

    Args:
        model: a ``Qwen2_5_VLForConditionalGeneration`` (eval mode, on its device). Its language model is switched to
            ``attention.streaming_sdpa`` (SDPA's results without repeating grouped K/V heads).
        tokenizer: its tokenizer.
        config: ``StreamConfig``.
        vision_spec: preprocessing geometry and pixel bounds (defaults: Qwen's patching, 100..768 x 28x28).
        keep_logits: also return the logits of every selection (tests).
        cache: an object implementing the ``StreamingCache`` protocol to use instead of a new one (tests). One that
            is not a ``StreamingCache`` (the tests' naive reference), or whose ``static_ready`` is false (layers on
            several devices), is driven by the protocol path alone: one ``append`` and forward per decoded token,
            transformers' masks, the turn closed by a forward of its own.
        cuda_graphs: capture the decode steps as CUDA graphs; None (default) = when the model is on a CUDA device.
            Asked for without CUDA, logs one line and decodes eagerly.
    """

    def __init__(
        self,
        model,
        tokenizer,
        config: StreamConfig | None = None,
        vision_spec: VisionSpec | None = None,
        keep_logits: bool = False,
        cache=None,
        cuda_graphs: bool | None = None,
    ):
        self.model = model
        use_streaming_attention(model)  # the language model's SDPA without repeated K/V (attention.py)
        self.config = config or StreamConfig()
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        vcfg = model.config.vision_config
        spec = vision_spec or VisionSpec()
        frames_per_chunk = self.config.fps * self.config.chunk_seconds
        if abs(frames_per_chunk - round(frames_per_chunk)) > 1e-6 or round(frames_per_chunk) % spec.temporal_patch_size:
            raise ValueError(
                f"fps * chunk_seconds must be a multiple of {spec.temporal_patch_size} frames, got {frames_per_chunk:g}"
            )
        time_interval = vcfg.tokens_per_second * spec.temporal_patch_size / self.config.fps
        self.layout = StreamLayout(tokenizer, self.config.system_prompt, time_interval=time_interval)
        self.preprocessor = VideoPreprocessor(spec, device=self.device, dtype=self.dtype)
        self.merge = spec.merge_size
        self.cache = cache if cache is not None else StreamingCache.for_model(model, self.config.policy(),
                                                                              initial_capacity=0)
        self.keep_logits = keep_logits
        self.generator = torch.Generator(self.device).manual_seed(self.config.seed)
        self.sampler = TokenSampler(self.config.sampling, self.layout.forbidden_ids, self.generator)
        # static steps: the whole decode loop on the device (a StreamingCache on one device; see the module doc)
        layer_types = set(getattr(model.config.text_config, "layer_types", None) or ["full_attention"])
        self._static = isinstance(self.cache, StreamingCache) and layer_types == {"full_attention"}
        self._layer_types = sorted(layer_types)
        close = self.layout.assistant_close(0).ids
        self._close_ids = close.to(self.device).view(1, -1)  # <|im_end|>\n
        self._ids = torch.zeros(1, close.numel() + 1, dtype=torch.long, device=self.device)  # a static step's tokens
        self.graphs = StepGraphs(graph_backend(self.device, cuda_graphs) if self._static else None,
                                 lambda: self.cache.static_snapshot(), lambda snap: self.cache.static_restore(snap))
        self._sized = False  # the cache was sized to the policy's worst case
        self.round = 0
        self._context_start: float | None = None
        self._pixels: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # recompute, refresh: round -> pixels, grid
        # chunks between re-prefills of the kept tokens: recompute is a refresh on every chunk; 0 = never
        self._refresh_period = {"recompute": 1, "streaming": self.config.refresh_every}.get(self.config.mode, 0)
        self.peak_cache_tokens = 0

    # ---- public API -----------------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self, frames, start: float, end: float, force_text: str | None = None,
             question: str | None = None, *, on_token: Callable[[int], None] | None = None,
             max_new_tokens: int | None = None) -> ChunkResult:
        """Feed one chunk (uint8 frames [T, H, W, 3]) covering [start, end) s; returns its commentary.

        ``force_text`` teacher-forces the commentary instead of sampling (alignment tests, replay);
        ``question`` is asked in this chunk's user turn. ``on_token`` is called with each sampled content token
        id as soon as it is selected (stop tokens excluded; the `` ...`` marker's tokens included), from this
        thread, before the next forward: a server streams an answer with it. ``max_new_tokens`` replaces the
        sampling config's limit for this chunk only (a longer answer to a question). Neither changes what is
        sampled. An exception raised by ``on_token`` propagates and leaves the session unusable.
        """
        run = self.begin_chunk(frames, start, end, force_text, question, max_new_tokens=max_new_tokens)
        self.decode_chunk(run, on_token)
        return self.end_chunk(run)

    @property
    def static_decoding(self) -> bool:
        """Whether this session decodes in static steps now (a ``StreamingCache`` whose layers are allocated on one
        device, full attention): what batched decoding (``batch.step_many``) takes part in."""
        return self._static and self.cache.static_ready

    @torch.inference_mode()
    def begin_chunk(self, frames, start: float, end: float, force_text: str | None = None,
                    question: str | None = None, *, max_new_tokens: int | None = None) -> ChunkRun:
        """The first half of :meth:`step`: apply the policy, size the cache, prefill the chunk. With ``force_text``
        the turn is also closed (nothing is left to decode: ``logits`` is None); otherwise the returned run holds the
        first token's logits and the caller decodes (:meth:`step`, or ``batch.step_many`` with other sessions),
        then calls :meth:`end_chunk`."""
        if max_new_tokens is not None and max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        t0 = time.perf_counter()
        r = self.round
        limit = self.config.sampling.max_new_tokens if max_new_tokens is None else max_new_tokens
        prefill, pv, gv = self._prepare_chunk(frames, start, end, question)
        forced = None if force_text is None else self.layout.assistant_content(force_text)
        self._reserve(prefill, r, limit if forced is None else len(forced))
        run = ChunkRun(r, start, end, t0, limit, len(prefill), forced=forced is not None)
        if forced is not None:
            self._forward(prefill, pv, gv, logits=False)
            run.content = forced
            self._close_turn(r, forced, 0)
        else:
            run.logits = self._forward(prefill, pv, gv, logits=True)
        return run

    @torch.inference_mode()
    def decode_chunk(self, run: ChunkRun, on_token: Callable[[int], None] | None = None) -> None:
        """Decode a prefilled chunk alone (static steps when :attr:`static_decoding`, else the protocol path) and close
        its turn: ``run.content`` and ``run.decode_s`` are set. Nothing to do after forced text."""
        if run.logits is not None:
            decode = self._decode_static if self.static_decoding else self._decode
            run.content, run.decode_s = decode(run.round, run.logits, run.all_logits, on_token, run.limit)

    def end_chunk(self, run: ChunkRun) -> ChunkResult:
        """The second half of :meth:`step`: the chunk's result once its turn is closed; the session moves on."""
        self.peak_cache_tokens = max(self.peak_cache_tokens, self.cache.num_tokens)
        self.round += 1
        text_ids, _ = self.layout.split_marker(run.content)
        return ChunkResult(
            index=run.round,
            start=run.start,
            end=run.end,
            text=self.layout.decode(text_ids).strip(),
            token_ids=run.content,
            latency_s=time.perf_counter() - run.t0,
            decode_s=run.decode_s,
            new_tokens=0 if run.forced else len(run.content),
            cache_tokens=self.cache.num_tokens,
            prefill_tokens=run.prefill_tokens,
            logits=run.all_logits if self.keep_logits else None,
        )

    def _prepare_chunk(self, frames, start: float, end: float, question: str | None):
        """Apply the cache policy for the next chunk and build its prefill: (meta, pixels, grids)."""
        cfg = self.config
        r = self.round
        pixels, grid = self.preprocessor(frames)
        llm_grid = (int(grid[0, 0]), int(grid[0, 1]) // self.merge, int(grid[0, 2]) // self.merge)

        fresh = r == 0 or (cfg.mode == "sliding" and start - self._context_start >= cfg.reset_every - 1e-9)
        parts: list[TokenMeta] = []
        pixel_list = [pixels]
        grid_list = [grid]
        if fresh:
            self.cache.reset()
            self._pixels.clear()
            self._context_start = start
            parts += [self.layout.system(), self.previous_text_meta(cfg.previous_text)]
        elif self._refresh_period and r % self._refresh_period == 0:
            kept = self._kept_meta_for_recompute(r)
            self.cache.reset()
            parts.append(kept)
            rounds = kept.round[(kept.kind == Kind.VISION)].unique().tolist()
            pixel_list = [self._pixels[q][0] for q in rounds] + pixel_list
            grid_list = [self._pixels[q][1] for q in rounds] + grid_list
        else:
            self.cache.apply_policy(r)
            if self._refresh_period:
                self._drop_evicted_pixels()
        text = self.layout.user_text(cfg.query if fresh else None, question)
        parts += [self.layout.user_turn(r, start, end, llm_grid, text), self.layout.assistant_head(r)]
        if self._refresh_period:
            self._pixels[r] = (pixels, grid)
        return TokenMeta.cat(parts), torch.cat(pixel_list), torch.cat(grid_list)

    @torch.inference_mode()
    def choose(self, frames, start: float, end: float, question: str, options: list[str]) -> ChoiceResult:
        """Feed one chunk with ``question`` and answer it by picking the most likely of ``options``.

        Each option is scored as a whole sequence, ``option`` then a newline (how answers are laid out in
        training), so options sharing a prefix ("1" and "10") are told apart (:meth:`score`). Scoring forwards
        are rolled back; the chosen answer then closes the turn and the stream goes on.
        """
        if not options:
            raise ValueError("choose() needs at least one option")
        t0 = time.perf_counter()
        r = self.round
        prefill, pv, gv = self._prepare_chunk(frames, start, end, question)
        answers = [self.layout.encode(option + "\n") for option in options]
        self._reserve(prefill, r, len(self.layout.marker) + max(map(len, answers)))
        scores = self.score(prefill, answers, pixels=pv, grid=gv)
        best = max(range(len(options)), key=scores.__getitem__)
        self._close_turn(r, self.layout.assistant_content(options[best] + "\n"), 0)
        self.peak_cache_tokens = max(self.peak_cache_tokens, self.cache.num_tokens)
        self.round += 1
        return ChoiceResult(best, options[best], scores, time.perf_counter() - t0)

    @torch.inference_mode()
    def score(self, prefix: TokenMeta, continuations: Sequence[Sequence[int]], *, pixels=None,
              grid=None) -> list[float]:
        """Forward ``prefix`` (with the pixel values and grid of its vision blocks, if any) into the cache, then
        return ``log p(continuation | cache, prefix)`` for each continuation of token ids, summed over its tokens.

        The prefix stays in the cache; each continuation's forward is rolled back, so the cache ends holding what
        it held plus ``prefix``. Continuation tokens are assistant text of the prefix's last round. The session's
        round does not advance: :meth:`choose` closes the turn afterwards; a caller scoring a prompt of its own
        (OVO-Bench's offline protocol) discards the session. Raises ``ValueError`` for an empty prefix, no
        continuation or an empty one.
        """
        if not len(prefix):
            raise ValueError("score() needs a non-empty prefix")
        if not continuations or not all(len(ids) for ids in continuations):
            raise ValueError("score() needs at least one continuation, none of them empty")
        r = int(prefix.round[-1])
        first = torch.log_softmax(self._forward(prefix, pixels, grid, logits=True).float(), dim=-1)
        scores = []
        for ids in continuations:
            ids = [int(i) for i in ids]
            lp = float(first[ids[0]])
            if len(ids) > 1:
                meta = TokenMeta.text(ids[:-1], Kind.ASSIST_TEXT, r)
                logits = self._forward(meta, logits=True, all_positions=True, keep=False)
                target = torch.tensor(ids[1:], device=logits.device)[:, None]
                lp += float(torch.log_softmax(logits.float(), dim=-1).gather(1, target).sum())
            scores.append(lp)
        return scores

    def previous_text_meta(self, text: str) -> TokenMeta:
        """The previous-text turn for ``text``, cut to the policy's sink and window exactly as the cache keeps it."""
        return self.layout.previous_text(self.cache.policy.cut_previous(self.layout.encode(text)))

    # ---- internals ------------------------------------------------------------------------------------------

    def _forward(self, meta: TokenMeta, pixels=None, grid=None, logits: bool = True, all_positions: bool = False,
                 keep: bool = True) -> torch.Tensor | None:
        """Forward ``meta``'s tokens through the model into the cache; logits of the last token if asked (of
        every token with ``all_positions``). ``keep=False`` rolls the cache back afterwards (scoring)."""
        position_ids = self.cache.append(meta).to(self.device)
        kwargs = dict(
            input_ids=meta.ids.to(self.device).unsqueeze(0),
            position_ids=position_ids,
            past_key_values=self.cache,
            attention_mask={t: None for t in self._layer_types},  # the new tokens after the whole cache, causal
            use_cache=True,
        )
        if pixels is not None:
            kwargs.update(pixel_values_videos=pixels, video_grid_thw=grid.to(self.device))
        try:
            if logits:
                out = self.model(**kwargs, logits_to_keep=0 if all_positions else 1).logits[0]
                out = out if all_positions else out[-1]
            else:
                self.model.model(**kwargs)
                out = None
        except BaseException:
            self.cache.abort_forward()  # leave the cache as before this forward, then surface the real error
            raise
        if keep:
            self.cache.end_forward()
        else:
            self.cache.abort_forward()
        return out

    def _reserve(self, prefill: TokenMeta, r: int, content: int) -> None:
        """Room in the cache for chunk ``r``: its prefill, ``content`` assistant tokens and the close.

        On the first chunk a bounded policy sizes the cache to its worst case (:meth:`_worst_case`); a later chunk
        that needs more (a long answer or forced text, bigger frames) grows it, said in one log line. An unbounded
        context (``full``, ``sliding``) grows geometrically as it fills. Static steps need the room in advance: they
        cannot reallocate the buffers they are captured with.
        """
        cache = self.cache
        if not self._static:
            return
        need = cache.num_tokens + len(prefill) + content + self._close_ids.shape[1]
        if need <= cache.capacity:
            return
        worst = self._worst_case(prefill, r, content)
        before = cache.capacity
        if worst is None:
            cache.reserve(max(need, 2 * before))
            return
        cache.reserve(max(need, worst))
        if self._sized:
            logger.info("streaming cache grown from %d to %d token slots: chunk %d needs %d, more than the policy's "
                        "worst case", before, cache.capacity, r, need)
        self._sized = True

    def _worst_case(self, prefill: TokenMeta, r: int, content: int) -> int | None:
        """The most tokens the cache holds during a chunk under a bounded policy (None if unbounded): the system
        prompt, the previous-text turn with S + W tokens, V vision blocks like this chunk's, max(V, T) user turns
        like this chunk's (its query or question included, its ``Time=`` text up to ``TIME_TEXT_SLACK`` tokens
        longer) and T assistant turns of ``max(content, max_new_tokens)`` tokens with their markup."""
        p = self.cache.policy
        if None in (p.vision_window, p.text_rounds, p.text_sink, p.text_window):
            return None
        this = prefill.round == r
        vision = int((this & (prefill.kind == Kind.VISION)).sum())
        user = int((this & ((prefill.kind == Kind.USER) | (prefill.kind == Kind.TIME))).sum()) + TIME_TEXT_SLACK
        turn = (len(self.layout.assistant_head(r)) + max(content, self.config.sampling.max_new_tokens)
                + self._close_ids.shape[1])
        fixed = len(self.layout.system()) + len(self.layout.previous_text([])) + p.text_sink + p.text_window
        return fixed + p.vision_window * vision + max(p.vision_window, p.text_rounds) * user + p.text_rounds * turn

    def _decode_static(self, r: int, logits: torch.Tensor, all_logits: list,
                       on_token: Callable[[int], None] | None, limit: int) -> tuple[list[int], float]:
        """Sample until a stop token or ``limit`` tokens, forwarding each in a static step, then close the turn in one
        more; returns the content ids and the seconds spent decoding (the close excluded). One host sync per token:
        reading the sampled id."""
        t0 = time.perf_counter()
        self.begin_static_decode()
        content: list[int] = []
        try:
            while (uncached := self.take_token(logits, content, all_logits, on_token, limit)) is None:
                logits = self.forward_static(1, logits=True)
            decode_s = time.perf_counter() - t0
            self.forward_static(self.load_close(uncached), logits=False)
            self.commit_turn(r, content)
        except BaseException:
            self.cache.abort_static()
            raise
        return content, decode_s

    # The per-token pieces of a static decode run, shared with batched decoding (``batch.step_many``), which
    # forwards the tokens of several sessions' ``token_ids`` in one model call instead of :meth:`forward_static`.

    def begin_static_decode(self) -> None:
        """Start a static decode run: the sampler's penalty takes the commentary in context, the cache opens a run."""
        meta = self.cache.meta
        self.sampler.begin(meta.ids[meta.kind == Kind.ASSIST_TEXT], self.config.sampling)
        self.cache.begin_static()

    def take_token(self, logits: torch.Tensor, content: list[int], all_logits: list,
                   on_token: Callable[[int], None] | None, limit: int) -> int | None:
        """Select the next token from ``logits`` (V,) and record it (``content``, ``on_token``, and the token buffer
        :attr:`token_ids` for the next step). Returns None while decoding goes on; at the end, how many content
        tokens the cache does not hold yet (1 when ``limit`` cut the turn, 0 after a stop token)."""
        logits = self.sampler.mask(logits)
        if self.keep_logits:
            all_logits.append(logits.float().cpu())
        token = self.sampler.select(logits)
        tok = int(token)  # the one host sync per token
        stop = tok in self.layout.stop_ids
        if not stop:
            content.append(tok)
            if on_token is not None:
                on_token(tok)
            self._ids[:, 0].copy_(token)
        if stop or len(content) >= limit:
            return int(not stop)
        return None

    def load_close(self, uncached: int) -> int:
        """Put the close after the ``uncached`` last content token(s) in the token buffer: [that token] +
        ``<|im_end|>\n``; returns how many tokens the closing static step forwards."""
        q = uncached + self._close_ids.shape[1]
        self._ids[:, uncached:q].copy_(self._close_ids)
        return q

    def commit_turn(self, r: int, content: list[int]) -> None:
        """End the static run of round ``r``: the cache records the content and the close it forwarded."""
        self.cache.commit_static(TokenMeta.cat([self.layout.content_meta(r, content), self.layout.assistant_close(r)]))

    @property
    def token_ids(self) -> torch.Tensor:
        """The token buffer static steps forward from (long (1, close + 1) on the device; a step of q tokens reads
        ``token_ids[:, :q]``)."""
        return self._ids

    def forward_static(self, q: int, logits: bool) -> torch.Tensor | None:
        """One static step of the tokens in ``self._ids[:, :q]`` (captured and replayed when graphs are on)."""
        out = self.graphs.run((q, logits), self.cache.buffer_version, lambda: self._static_forward(q, logits))
        self.cache.count_static(q)
        return out

    def layer_masks(self, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """The ``attention_mask`` argument of a static step: ``mask`` for every layer type of the model."""
        return {t: mask for t in self._layer_types}

    def _static_forward(self, q: int, logits: bool) -> torch.Tensor | None:
        """The forward of a static step: only device tensors with fixed addresses in, fixed shapes throughout."""
        with self.cache.static_step(q) as (position_ids, mask):
            kwargs = dict(input_ids=self._ids[:, :q], position_ids=position_ids, past_key_values=self.cache,
                          attention_mask=self.layer_masks(mask), use_cache=True)
            if logits:
                return self.model(**kwargs, logits_to_keep=1).logits[0, -1]
            self.model.model(**kwargs)
            return None

    def _decode(self, r: int, logits: torch.Tensor, all_logits: list, on_token: Callable[[int], None] | None,
                limit: int) -> tuple[list[int], float]:
        """The protocol path's decode loop (a cache without static steps): a forward per token through ``append``,
        then :meth:`_close_turn`; returns the content ids and the seconds spent decoding."""
        t0 = time.perf_counter()
        meta = self.cache.meta
        self.sampler.begin(meta.ids[meta.kind == Kind.ASSIST_TEXT], self.config.sampling)
        content: list[int] = []
        while True:
            logits = self.sampler.mask(logits)
            if self.keep_logits:
                all_logits.append(logits.float().cpu())
            tok = int(self.sampler.select(logits))
            stop = tok in self.layout.stop_ids
            if not stop:
                content.append(tok)
                if on_token is not None:
                    on_token(tok)
            if stop or len(content) >= limit:
                decode_s = time.perf_counter() - t0
                self._close_turn(r, content, len(content) - (not stop))  # the token that hit the limit is uncached
                return content, decode_s
            logits = self._forward(TokenMeta.text([tok], Kind.ASSIST_TEXT, r), logits=True)

    def _close_turn(self, r: int, content: list[int], n_cached: int) -> None:
        """Label the content's marker and forward what is left of the turn: uncached content + ``<|im_end|>\\n``."""
        full = self.layout.content_meta(r, content)
        if n_cached:
            self.cache.relabel_tail(full.kind[:n_cached])
        rest = full.select(torch.arange(n_cached, len(full)))
        self._forward(TokenMeta.cat([rest, self.layout.assistant_close(r)]), logits=False)

    def _kept_meta_for_recompute(self, now: int) -> TokenMeta:
        meta = self.cache.meta
        plan = self.cache.policy.plan(meta, now)
        if plan is not None:
            meta = plan[1]
        self._drop_evicted_pixels(meta)
        return meta

    def _drop_evicted_pixels(self, meta: TokenMeta | None = None) -> None:
        """Forget the frames of rounds whose vision tokens ``meta`` (default: the cache's) no longer holds."""
        meta = self.cache.meta if meta is None else meta
        kept_rounds = set(meta.round[meta.kind == Kind.VISION].tolist())
        for q in list(self._pixels):
            if q not in kept_rounds:
                del self._pixels[q]
