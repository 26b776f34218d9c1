"""Batched decoding: one chunk of several streams, their commentary decoded in one model forward per token.

What it owns: :func:`step_many`, which runs one chunk of each of several ``StreamSession``s sharing one model, and
``BatchCache``, the view of their caches one forward needs. What it does not own: any rule of a step (policy,
prefill, sampling, stop and limit, closing a turn, the cache's slots, positions and masks): each session applies
its own, through the engine's and the cache's static-step pieces (``StreamSession.begin_chunk``,
``begin_static_decode``, ``take_token``, ``load_close``, ``commit_turn``; ``StreamingCache.static_step``).

Contract: ``step_many(sessions, chunks, ...)[i]`` is what ``sessions[i].step(*chunks[i], ...)`` alone returns, and
leaves the session in the same state: the same tokens, cache contents, positions, sampler and generator state;
logits equal up to the order of floating-point sums in batched matrix products (within 1e-4 in fp32).

How:

1. each session's prefill runs alone (``begin_chunk``): prefills differ in length, vision blocks and positions;
2. the sessions that decode in static steps open a run each; per token, the still-active ones forward together:
   input ids (B, 1) from each session's token buffer, position ids (3, B, 1) and masks (B, 1, 1, S) from each
   cache's own ``static_step``, and a ``BatchCache`` as ``past_key_values``, whose ``update`` writes row i into
   session i's buffers at its device-side slot (the cache's own static update) and returns the first S slots of the
   sessions' buffers stacked. S is the longest cache after the step (a host count), rounded up to ``SLOT_ALIGN``;
   a buffer shorter than S is zero-padded; every slot past a session's own length is masked.
   Each session selects from its logits row with its own sampler; one that stops (its stop token or its limit)
   leaves the batch;
3. when all have stopped, the turns are closed, one forward per closing length (2 tokens after a stop, 3 when the
   limit cut the turn), and committed.

A group of one session forwards through its own ``forward_static`` (a CUDA graph when graphs are on); batched steps
run eagerly (the set of sessions and S change from step to step). The stacking copies every active session's live
K/V once per layer and token (about the bytes attention reads anyway), while the weights are read once for all
sessions instead of once each. Sessions that do not decode in static steps (a cache of the protocol path) decode
alone after their prefill.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any, TypeVar

import torch
from transformers.cache_utils import Cache

from streaming_vlm.cache import SLOT_ALIGN, StreamingCache
from streaming_vlm.engine import ChunkResult, ChunkRun, StreamSession

T = TypeVar("T")


def _fit(x: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """``x`` cut or padded with zeros (False for a mask) to ``width`` along ``dim``."""
    short = width - x.shape[dim]
    if short <= 0:
        return x.narrow(dim, 0, width)
    shape = list(x.shape)
    shape[dim] = short
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


class BatchCache(Cache):
    """Several sessions' caches as one batch for a forward of static steps: row i of the batch is ``caches[i]``.

    Every cache must have a static step open (``StreamingCache.static_step``) for the forward. ``update`` writes each
    row's keys/values into its cache's buffers at that cache's slots and returns the first ``width`` slots of all
    buffers stacked (B, H, width, D), a shorter buffer zero-padded (the caller masks every slot past a cache's
    length; ``width`` must cover the longest). Holds no tokens of its own.
    """

    def __init__(self, caches: Sequence[StreamingCache], width: int):
        super().__init__(layers=[])
        self.caches, self.width = list(caches), width

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        keys, values = [], []
        for i, cache in enumerate(self.caches):
            k, v = cache.layers[layer_idx].update(key_states[i : i + 1], value_states[i : i + 1])
            keys.append(_fit(k, self.width, 2))
            values.append(_fit(v, self.width, 2))
        return torch.cat(keys), torch.cat(values)


def forward_together(sessions: Sequence[StreamSession], q: int, logits: bool) -> torch.Tensor | None:
    """One static step of ``q`` tokens (each session's ``token_ids[:, :q]``) for all ``sessions`` in one forward;
    returns the last token's logits, one row per session (B, V), if asked. Each cache must be in a static run."""
    if len(sessions) == 1:
        out = sessions[0].forward_static(q, logits)
        return None if out is None else out.unsqueeze(0)
    lead = sessions[0]
    # slots read: the longest cache after this step, aligned (not the largest buffer: the rest is masked anyway)
    width = -(-(max(s.cache.static_tokens for s in sessions) + q) // SLOT_ALIGN) * SLOT_ALIGN
    with ExitStack() as stack:
        steps = [stack.enter_context(s.cache.static_step(q)) for s in sessions]
        width = min(width, max(mask.shape[-1] for _, mask in steps))
        kwargs = dict(
            input_ids=torch.cat([s.token_ids[:, :q] for s in sessions]),  # (B, q)
            position_ids=torch.cat([pos for pos, _ in steps], dim=1),  # (3, B, q)
            past_key_values=BatchCache([s.cache for s in sessions], width),
            attention_mask=lead.layer_masks(torch.cat([_fit(mask, width, 3) for _, mask in steps])),  # (B, 1, q, S)
            use_cache=True,
        )
        if logits:
            out = lead.model(**kwargs, logits_to_keep=1).logits[:, -1]
        else:
            lead.model.model(**kwargs)
            out = None
    for s in sessions:
        s.cache.count_static(q)
    return out


def _decode_together(sessions: Sequence[StreamSession], runs: Sequence[ChunkRun],
                     on_token: Sequence[Callable[[int], None] | None]) -> None:
    """Decode the prefilled ``runs`` of ``sessions`` (all in static steps) together and close their turns."""
    opened: list[StreamSession] = []
    try:
        for s in sessions:
            s.begin_static_decode()
            opened.append(s)
        t0 = time.perf_counter()
        rows: list[torch.Tensor] = [run.logits for run in runs]
        active = list(range(len(sessions)))
        uncached: dict[int, int] = {}
        while active:
            still = []
            for row, i in zip(rows, active, strict=True):
                run = runs[i]
                end = sessions[i].take_token(row, run.content, run.all_logits, on_token[i], run.limit)
                if end is None:
                    still.append(i)
                else:
                    uncached[i] = end
                    run.decode_s = time.perf_counter() - t0
            active = still
            if active:
                rows = list(forward_together([sessions[i] for i in active], 1, logits=True))
        closing: dict[int, list[int]] = defaultdict(list)
        for i, end in uncached.items():
            closing[sessions[i].load_close(end)].append(i)
        for q, group in closing.items():
            forward_together([sessions[i] for i in group], q, logits=False)
        for s, run in zip(sessions, runs, strict=True):
            s.commit_turn(run.round, run.content)
    except BaseException:
        for s in opened:
            s.cache.abort_static()
        raise


def _per_session(name: str, values: Sequence[T] | None, n: int) -> list[T | None]:
    if values is None:
        return [None] * n
    if isinstance(values, (str, bytes)) or len(values) != n:
        raise ValueError(f"step_many: {name} must give one value per session ({n})")
    return list(values)


def step_many(sessions: Sequence[StreamSession], chunks: Sequence[tuple[Any, float, float]], *,
              questions: Sequence[str | None] | None = None,
              on_token: Sequence[Callable[[int], None] | None] | None = None,
              max_new_tokens: Sequence[int | None] | None = None) -> list[ChunkResult]:
    """Feed one chunk to each session, decoding their commentary together; returns each session's ``ChunkResult``.

    ``chunks[i]`` is ``(frames, start, end)`` for ``sessions[i]``; ``questions``, ``on_token`` and
    ``max_new_tokens``, when given, hold one value per session, as ``StreamSession.step`` takes them. The result
    and the sessions' states are those of ``sessions[i].step(...)`` run alone (see the module doc). ``on_token``
    callbacks are called from this thread as tokens are selected, the sessions' interleaved. ``latency_s`` of a
    result runs from its prefill to the end of the call; ``decode_s`` from the start of the shared decoding to its
    stop. Raises ``ValueError``, before any work, when the lengths differ, a session appears twice, the sessions do
    not share one model object, or a ``max_new_tokens`` is below 1. An exception during the work (e.g. raised by
    ``on_token``) propagates and leaves the sessions unusable, as ``step`` does.
    """
    n = len(sessions)
    if len(chunks) != n:
        raise ValueError(f"step_many: {len(chunks)} chunks for {n} sessions")
    questions = _per_session("questions", questions, n)
    on_token = _per_session("on_token", on_token, n)
    limits = _per_session("max_new_tokens", max_new_tokens, n)
    if len({id(s) for s in sessions}) != n:
        raise ValueError("step_many: a session appears more than once")
    if any(s.model is not sessions[0].model for s in sessions):
        raise ValueError("step_many: the sessions must share one model object")
    bad = [m for m in limits if m is not None and m < 1]
    if bad:
        raise ValueError(f"max_new_tokens must be >= 1, got {bad[0]}")
    if n <= 1:
        return [s.step(*chunk, question=qu, on_token=cb, max_new_tokens=m)
                for s, chunk, qu, cb, m in zip(sessions, chunks, questions, on_token, limits, strict=True)]
    with torch.inference_mode():
        runs = [s.begin_chunk(*chunk, question=qu, max_new_tokens=m)
                for s, chunk, qu, m in zip(sessions, chunks, questions, limits, strict=True)]
        together = [i for i, s in enumerate(sessions) if runs[i].logits is not None and s.static_decoding]
        for i, s in enumerate(sessions):
            if i not in together:
                s.decode_chunk(runs[i], on_token[i])
        if together:
            _decode_together([sessions[i] for i in together], [runs[i] for i in together],
                             [on_token[i] for i in together])
        return [s.end_chunk(run) for s, run in zip(sessions, runs, strict=True)]
