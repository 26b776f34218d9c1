"""The streaming KV cache: a transformers ``Cache`` that evicts and moves tokens with contiguous M-RoPE.

What it owns: K/V storage per layer (fixed, zero-initialised buffers of ``capacity`` token slots), per-token
bookkeeping (``TokenMeta``, current and original positions), the application of a ``CachePolicy`` plan, and the
device-side state of static steps (below). What it does not own: which tokens to keep (``policy.py``), how tokens
are laid out (``layout.py``), the position rule (``positions.py``), how large the buffers should be (the engine
reserves the policy's worst case: :meth:`StreamingCache.reserve`).

Storage: per layer three buffers (1, H, capacity, D): ``k`` keys at the tokens' current positions (what attention
reads), ``o`` the keys exactly as the model produced them at the position they were inserted at (never modified),
``v`` values. The first ``num_tokens`` slots hold the cached tokens in the logical sequence order; the rest are
free. Buffers are reallocated only by ``reserve`` (or when a forward of the protocol path would overflow them); an
eviction compacts them in place, once per chunk, so their shapes and addresses stay fixed while decoding.

Two ways to forward tokens into the cache:

- **the protocol path** (prefill, teacher forcing, scoring; any tokens): ``position_ids = cache.append(meta)``
  records the tokens and returns their positions (3, 1, n); the model runs with ``past_key_values=cache``; then
  ``end_forward()`` (or ``abort_forward()`` to roll it back). Each layer's ``update`` writes at the host length and
  returns views of the valid slots, so transformers builds its own causal mask.
- **static steps** (decoding and closing a sampled turn; text tokens only): ``begin_static()``, then per forward
  ``with cache.static_step(q) as (position_ids, mask):`` run the model with ``attention_mask`` = ``mask`` for
  every layer type, then ``count_static(q)``; finally ``commit_static(meta)`` (or ``abort_static()``). Slots,
  positions and the mask (1, 1, q, capacity) are computed on the device from two device scalars (the length and
  the next position), each layer writes its keys/values with ``index_copy_`` at those slots and attention reads the
  whole buffers, so no shape and no host value in a step depends on the cache's length: a step can be captured in a
  CUDA graph once and replayed for every token. The host bookkeeping of a run of static steps is done once, by
  ``commit_static``.

Keys: transformers rotates keys before ``update``, so the cache receives post-RoPE keys. After an eviction, every
kept key whose position changed is recomputed from its original by a rotation of (current - original position), in
fp32 with a single rounding. A key is therefore always one rotation away from what the model computed, so no error
accumulates however many evictions it survives; decoding does no rotation work at all (at most one re-rotation
pass per chunk). Memory is 1.5x a plain KV cache for this guarantee.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from transformers.cache_utils import Cache, DynamicLayer

from streaming_vlm.layout import TokenMeta
from streaming_vlm.policy import CachePolicy
from streaming_vlm.positions import assign_positions

RopeFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""positions long (3, 1, n) -> (cos, sin), each (1, n, head_dim), float32, on the model's device, unscaled."""

SLOT_ALIGN = 64
"""Capacities are rounded up to a multiple of this (aligned masks and buffers for attention kernels)."""


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE as Qwen2.5-VL applies it. x: (B, H, n, D); cos, sin: (1, n, D)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


def model_rope(model) -> RopeFn:
    """The rotary function of a Qwen2.5-VL model (``model.model.language_model.rotary_emb``), in fp32.

    Rotation is linear in the position, so rotating a key by a position *delta* composes exactly with the
    rotation the model applied; the attention scaling of scaled RoPE variants is divided out (it is already
    in the stored keys).
    """
    rotary = model.model.language_model.rotary_emb
    device = next(model.parameters()).device
    probe = torch.empty(0, dtype=torch.float32, device=device)
    scaling = float(getattr(rotary, "attention_scaling", 1.0))

    def rope(positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = rotary(probe, positions.to(device))
        return (cos, sin) if scaling == 1.0 else (cos / scaling, sin / scaling)

    return rope


class StreamingLayer(DynamicLayer):
    """One decoder layer's K/V in fixed buffers (1, H, capacity, D): keys at current positions, original keys, values.

    ``keys``/``values``/``orig_keys`` are views (B, H, L, D) of the first L (host length) slots, so everything
    transformers reads from a ``DynamicLayer`` (sequence length, mask sizes) works unchanged on the protocol path.
    """

    def __init__(self, owner: StreamingCache):
        super().__init__()
        self._owner = owner
        self._bufs: dict[str, torch.Tensor] = {}
        self._len = 0
        self.orig_keys: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self._shapes = (key_states.shape[:2], key_states.shape[-1], value_states.shape[:2], value_states.shape[-1])
        self._alloc(self._owner.capacity)
        self.is_initialized = True

    def _alloc(self, capacity: int) -> None:
        """(Re)allocate the buffers with ``capacity`` zeroed slots (free slots are read, masked, by static steps:
        zeros keep them finite), keeping the first ``_len`` slots."""
        (b, h), d, (bv, hv), dv = self._shapes
        old = self._bufs
        self._bufs = {
            "k": torch.zeros(b, h, capacity, d, dtype=self.dtype, device=self.device),
            "o": torch.zeros(b, h, capacity, d, dtype=self.dtype, device=self.device),
            "v": torch.zeros(bv, hv, capacity, dv, dtype=self.dtype, device=self.device),
        }
        for name, buf in old.items():
            self._bufs[name][:, :, : self._len] = buf[:, :, : self._len]
        self._refresh_views()

    @property
    def capacity(self) -> int:
        return self._bufs["k"].shape[2] if self._bufs else 0

    def _refresh_views(self) -> None:
        n = self._len
        self.keys, self.orig_keys, self.values = (self._bufs[x][:, :, :n] for x in ("k", "o", "v"))

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        slots = self._owner._static_slots
        if slots is not None:  # a static step: device-side slots, the whole buffers
            if key_states.shape[-2] != slots.numel():
                raise RuntimeError("a static step must forward exactly the tokens it was opened for")
            self._bufs["k"].index_copy_(2, slots, key_states)
            self._bufs["o"].index_copy_(2, slots, key_states)
            self._bufs["v"].index_copy_(2, slots, value_states)
            return self._bufs["k"], self._bufs["v"]
        self._owner.check_pending(key_states.shape[-2])
        n, q = self._len, key_states.shape[-2]
        if n + q > self.capacity:
            self._owner.reserve(max(2 * self.capacity, n + q))
        self._bufs["k"][:, :, n : n + q] = key_states
        self._bufs["o"][:, :, n : n + q] = key_states
        self._bufs["v"][:, :, n : n + q] = value_states
        self._len = n + q
        self._refresh_views()
        return self.keys, self.values

    def compact(self, order: torch.Tensor, rotate_from: int, cos: torch.Tensor, sin: torch.Tensor) -> None:
        """Keep tokens ``order`` (in that order), then set slots ``rotate_from:`` to their original keys rotated
        by cos/sin (of the position deltas, fp32)."""
        m = order.numel()
        for buf in self._bufs.values():
            buf[:, :, :m] = buf.index_select(2, order)
        self._len = m
        if rotate_from < m:
            orig = self._bufs["o"][:, :, rotate_from:m]
            self._bufs["k"][:, :, rotate_from:m] = rotate(orig.float(), cos, sin).to(orig.dtype)
        self._refresh_views()

    def reset(self) -> None:
        """Forget the tokens; the buffers stay allocated (a new stream reuses them)."""
        self._len = 0
        if self.is_initialized:
            self._refresh_views()


class StreamingCache(Cache):
    """KV cache of one stream with StreamingVLM eviction and contiguous M-RoPE.

    Args:
        num_layers: decoder layers of the language model.
        rope: the model's rotary function (``model_rope(model)``).
        policy: what to keep; ``CachePolicy.unlimited()`` keeps everything (full attention).
        initial_capacity: token slots allocated per layer on first use, unless :meth:`reserve` asked for more.

    Per-stream state, all explicit: ``num_tokens`` and ``next_position`` (host), ``meta`` and ``positions`` (the
    kept tokens, host), ``capacity`` and ``buffer_version`` (bumped whenever buffers are reallocated: a captured
    static step must then be captured again), and during a run of static steps ``device_length`` and
    ``device_position`` (long (1,) on the model's device, ahead of the host state until ``commit_static``).
    """

    def __init__(self, num_layers: int, rope: RopeFn, policy: CachePolicy | None = None, initial_capacity: int = 1024):
        super().__init__(layers=[StreamingLayer(self) for _ in range(num_layers)])
        self.rope = rope
        self.policy = policy or CachePolicy()
        self.capacity = initial_capacity
        self.buffer_version = 0
        self._parts: list[tuple[TokenMeta, torch.Tensor]] = []
        self._meta = TokenMeta.empty()
        self._pos = torch.zeros(3, 0, dtype=torch.long)
        self._orig_pos = torch.zeros(3, 0, dtype=torch.long)  # positions the keys were computed at
        self._next_pos = 0
        self._pending: int | None = None  # tokens of the protocol forward in flight
        self.rerotations = 0  # re-rotation passes done (at most one per apply_policy)
        # static steps: device state (created by begin_static), host count of the run's tokens
        self.device_length: torch.Tensor | None = None
        self.device_position: torch.Tensor | None = None
        self._slot_index: torch.Tensor | None = None  # arange(capacity) on the device
        self._static_run: int | None = None
        self._static_slots: torch.Tensor | None = None  # slots of the static step in flight

    @classmethod
    def for_model(cls, model, policy: CachePolicy | None = None, **kwargs) -> StreamingCache:
        return cls(model.config.text_config.num_hidden_layers, model_rope(model), policy, **kwargs)

    # ---- bookkeeping ----------------------------------------------------------------------------------------

    def _consolidate(self) -> None:
        if self._parts:
            metas, poss = zip(*self._parts, strict=True)
            self._meta = TokenMeta.cat([self._meta, *metas])
            self._pos = torch.cat([self._pos, *poss], dim=1)
            self._orig_pos = torch.cat([self._orig_pos, *poss], dim=1)
            self._parts = []

    @property
    def meta(self) -> TokenMeta:
        """Bookkeeping of the cached tokens, in cache order (the logical sequence order)."""
        self._consolidate()
        return self._meta

    @property
    def positions(self) -> torch.Tensor:
        """Current positions (3, L) of the cached tokens."""
        self._consolidate()
        return self._pos

    @property
    def next_position(self) -> int:
        return self._next_pos

    @property
    def num_tokens(self) -> int:
        return len(self._meta) + sum(len(m) for m, _ in self._parts)

    def reserve(self, n: int) -> bool:
        """Make every layer hold at least ``n`` tokens (rounded up to ``SLOT_ALIGN``); returns whether the buffers
        grew. Growing reallocates them (kept tokens copied) and bumps ``buffer_version``; never during a static run."""
        if n <= self.capacity:
            return False
        if self._static_run is not None:
            raise RuntimeError("reserve() during a run of static steps")
        self.capacity = -(-n // SLOT_ALIGN) * SLOT_ALIGN
        for layer in self.layers:
            if layer.is_initialized:
                layer._alloc(self.capacity)
        self.buffer_version += 1
        return True

    def append(self, meta: TokenMeta) -> torch.Tensor:
        """Record the tokens about to be forwarded; returns their position ids (3, 1, n) for the model."""
        if self._pending is not None:
            raise RuntimeError("append() called twice without a forward in between")
        if self._static_run is not None:
            raise RuntimeError("append() during a run of static steps")
        pos, self._next_pos = assign_positions(meta.group_start, meta.rel, self._next_pos)
        self._parts.append((meta, pos))
        self._pending = len(meta)
        return pos.unsqueeze(1)

    def check_pending(self, n: int) -> None:
        """Called by each layer's ``update``: the forward must carry exactly the appended tokens."""
        if self._pending != n:
            raise RuntimeError("StreamingCache.append(meta) must describe exactly the tokens of each forward")

    def end_forward(self) -> None:
        """Mark the forward of the last appended tokens as done (every layer has stored them)."""
        if self._pending is not None and any(layer._len != self.num_tokens for layer in self.layers):
            raise RuntimeError("a forward did not store the appended tokens in every layer")
        self._pending = None

    def abort_forward(self) -> None:
        """Undo the last ``append`` after a failed forward: layers that stored its tokens drop them."""
        if self._pending is None:
            return
        meta, pos = self._parts.pop()
        self._next_pos = int(pos[0, 0]) if len(meta) else self._next_pos
        kept = self.num_tokens
        for layer in self.layers:
            if layer.is_initialized and layer._len > kept:
                layer._len = kept
                layer._refresh_views()
        self._pending = None

    def relabel_tail(self, kinds: torch.Tensor) -> None:
        """Set the kinds of the last ``len(kinds)`` cached tokens (e.g. a generated `` ...`` marker)."""
        self._consolidate()
        n = kinds.numel()
        if n > len(self._meta):
            raise ValueError(f"cannot relabel {n} tokens of a cache holding {len(self._meta)}")
        self._meta.kind[len(self._meta) - n :] = kinds

    # ---- static steps ---------------------------------------------------------------------------------------

    @property
    def static_ready(self) -> bool:
        """Whether static steps can run: every layer allocated, all on one device."""
        return all(layer.is_initialized for layer in self.layers) and len({layer.device for layer in self.layers}) == 1

    def begin_static(self) -> None:
        """Start a run of static steps at the end of the cache: the device length and position take the host's."""
        if self._pending is not None or self._static_run is not None:
            raise RuntimeError("begin_static() during a forward or another static run")
        if not self.static_ready:
            raise RuntimeError("static steps need every layer allocated on one device (run a prefill first)")
        device = self.layers[0].device
        if self._slot_index is None or self._slot_index.numel() != self.capacity or self._slot_index.device != device:
            self._slot_index = torch.arange(self.capacity, device=device)
        if self.device_length is None or self.device_length.device != device:
            self.device_length = torch.zeros(1, dtype=torch.long, device=device)
            self.device_position = torch.zeros(1, dtype=torch.long, device=device)
        self.device_length.fill_(self.num_tokens)
        self.device_position.fill_(self._next_pos)
        self._static_run = 0

    @contextmanager
    def static_step(self, q: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Open a forward of ``q`` text tokens at the end of the cache; yields (position_ids long (3, 1, q),
        mask bool (1, 1, q, capacity)), both computed on the device from the device length and position.

        Inside, each layer's ``update`` writes its keys/values at slots ``length .. length + q - 1`` and returns
        the whole buffers; the mask lets token i see slots ``<= length + i``. On success the device length and
        position advance by ``q``. Host work here does not depend on the cache's contents, so a CUDA graph of a
        step replays correctly; the caller reports each step, run or replayed, with :meth:`count_static`.
        """
        if self._static_run is None:
            raise RuntimeError("static_step() outside a run: call begin_static() first")
        if self.device_length is None or self._slot_index is None:
            raise RuntimeError("static_step() before begin_static()")
        offsets = self._slot_index[:q]
        slots = self.device_length + offsets  # (q,)
        position_ids = (self.device_position + offsets).view(1, 1, q).expand(3, 1, q)
        mask = (self._slot_index.view(1, -1) <= slots.view(-1, 1)).view(1, 1, q, -1)
        self._static_slots = slots
        try:
            yield position_ids, mask
        finally:
            self._static_slots = None
        self.device_length.add_(q)
        self.device_position.add_(q)

    @property
    def static_tokens(self) -> int:
        """Host count of the tokens the buffers hold now: ``num_tokens`` plus those of the static run so far (an
        eager caller's bound on the slots a step reads; batched steps read no further)."""
        return self.num_tokens + (self._static_run or 0)

    def count_static(self, q: int) -> None:
        """Host count of a static step of ``q`` tokens that ran (eagerly or as a replayed graph)."""
        if self._static_run is None:
            raise RuntimeError("count_static() outside a run")
        self._static_run += q

    def commit_static(self, meta: TokenMeta) -> None:
        """End a run of static steps: ``meta`` describes, in order, every token its steps forwarded (text only)."""
        if self._static_run is None:
            raise RuntimeError("commit_static() outside a run")
        if len(meta) != self._static_run or not bool(meta.group_start.all()):
            raise RuntimeError(f"commit_static: {len(meta)} tokens described, {self._static_run} forwarded "
                               "(static steps take text tokens only)")
        pos, self._next_pos = assign_positions(meta.group_start, meta.rel, self._next_pos)
        self._parts.append((meta, pos))
        for layer in self.layers:
            layer._len += len(meta)
            layer._refresh_views()
        self._static_run = None

    def abort_static(self) -> None:
        """Drop a run of static steps: the cache holds what it held at ``begin_static`` (the slots the run wrote are
        free again)."""
        self._static_run = None
        self._static_slots = None

    def static_snapshot(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of the device length and position (to undo warm-up and capture runs of a step)."""
        return self.device_length.clone(), self.device_position.clone()

    def static_restore(self, snapshot: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.device_length.copy_(snapshot[0])
        self.device_position.copy_(snapshot[1])

    # ---- eviction -------------------------------------------------------------------------------------------

    def apply_policy(self, now: int) -> bool:
        """Apply the policy before chunk ``now``; returns whether anything changed."""
        if self._pending is not None or self._static_run is not None:
            raise RuntimeError("apply_policy() during a forward")
        self._consolidate()
        if self.policy.is_unlimited or len(self._meta) == 0:
            return False
        plan = self.policy.plan(self._meta, now)
        if plan is None:
            return False
        order, meta = plan
        pos, next_pos = assign_positions(meta.group_start, meta.rel, 0)
        orig_pos = self._orig_pos[:, order]
        changed = (pos != self._pos[:, order]).any(dim=0)
        first = int(torch.nonzero(changed)[0]) if bool(changed.any()) else len(meta)
        cos = sin = None
        if first < len(meta):
            cos, sin = self.rope((pos[:, first:] - orig_pos[:, first:]).unsqueeze(1))
            self.rerotations += 1
        for layer in self.layers:
            if layer.is_initialized:
                layer.compact(order.to(layer.device), first, cos, sin)
        self._meta, self._pos, self._orig_pos, self._next_pos = meta, pos, orig_pos, next_pos
        return True

    def reset(self) -> None:
        """Forget every token (a new stream); the buffers stay allocated."""
        if self._static_run is not None:
            raise RuntimeError("reset() during a run of static steps")
        for layer in self.layers:
            layer.reset()
        self._parts, self._meta = [], TokenMeta.empty()
        self._pos = torch.zeros(3, 0, dtype=torch.long)
        self._orig_pos = torch.zeros(3, 0, dtype=torch.long)
        self._next_pos, self._pending = 0, None
