"""The streaming KV cache: a transformers ``Cache`` that evicts and moves tokens with contiguous M-RoPE.

What it owns: K/V storage per layer (preallocated buffers that grow geometrically and are reused across
chunks), per-token bookkeeping (``TokenMeta`` and current positions), and the application of a
``CachePolicy`` plan. What it does not own: which tokens to keep (``policy.py``), how tokens are laid out
(``layout.py``), the position rule (``positions.py``).

Protocol, per forward: ``position_ids = cache.append(meta)`` records the new tokens and returns their
positions (3, 1, n), which the caller passes to the model together with ``past_key_values=cache``. Between
chunks, ``cache.apply_policy(now)`` evicts and moves tokens, then gives every kept token the position it
would have if the kept sequence were the whole input.

Keys: transformers rotates keys before ``update``, so the cache receives post-RoPE keys. Each layer keeps
them twice: ``keys``, at the tokens' current positions (what attention reads), and ``orig_keys``, exactly as
the model produced them at the position they were inserted at (never modified). After an eviction, every
kept key whose position changed is recomputed from its original by a rotation of (current - original
position), in fp32 with a single rounding. A key is therefore always one rotation away from what the model
computed, so no error accumulates however many evictions it survives; decoding does no rotation work at all
(at most one re-rotation pass per chunk). Memory is 1.5x a plain KV cache for this guarantee.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers.cache_utils import Cache, DynamicLayer

from streaming_vlm.layout import TokenMeta
from streaming_vlm.policy import CachePolicy
from streaming_vlm.positions import assign_positions

RopeFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""positions long (3, 1, n) -> (cos, sin), each (1, n, head_dim), float32, on the model's device, unscaled."""


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
    """One decoder layer's K/V: keys at current positions, original keys and values in growable buffers.

    ``keys``/``values``/``orig_keys`` are views (B, H, L, D) of the first L slots, so everything
    transformers reads from a ``DynamicLayer`` (sequence length, mask sizes) works unchanged.
    """

    def __init__(self, owner: StreamingCache):
        super().__init__()
        self._owner = owner
        self._bufs: dict[str, torch.Tensor] = {}
        self._len = 0
        self.orig_keys: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self._alloc(self._owner.initial_capacity, key_states, value_states)
        self.is_initialized = True

    def _alloc(self, capacity: int, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, d = key_states.shape
        bv, hv, _, dv = value_states.shape
        old = self._bufs
        self._bufs = {
            "k": key_states.new_empty(b, h, capacity, d),
            "o": key_states.new_empty(b, h, capacity, d),
            "v": value_states.new_empty(bv, hv, capacity, dv),
        }
        for name, buf in old.items():
            self._bufs[name][:, :, : self._len] = buf[:, :, : self._len]

    @property
    def capacity(self) -> int:
        return self._bufs["k"].shape[2] if self._bufs else 0

    def _refresh_views(self) -> None:
        n = self._len
        self.keys, self.orig_keys, self.values = (self._bufs[x][:, :, :n] for x in ("k", "o", "v"))

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self._owner.check_pending(key_states.shape[-2])
        n, q = self._len, key_states.shape[-2]
        if n + q > self.capacity:
            self._alloc(max(2 * self.capacity, n + q), key_states, value_states)
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
        # self-contained: what DynamicLayer.reset does differs between transformers releases
        self._bufs, self._len = {}, 0
        self.keys = self.values = self.orig_keys = None
        self.is_initialized = False


class StreamingCache(Cache):
    """KV cache of one stream with StreamingVLM eviction and contiguous M-RoPE.

    Args:
        num_layers: decoder layers of the language model.
        rope: the model's rotary function (``model_rope(model)``).
        policy: what to keep; ``CachePolicy.unlimited()`` keeps everything (full attention).
        initial_capacity: token slots preallocated per layer on first use (buffers double when full).
    """

    def __init__(self, num_layers: int, rope: RopeFn, policy: CachePolicy | None = None, initial_capacity: int = 1024):
        self.initial_capacity = initial_capacity
        super().__init__(layers=[StreamingLayer(self) for _ in range(num_layers)])
        self.rope = rope
        self.policy = policy or CachePolicy()
        self._parts: list[tuple[TokenMeta, torch.Tensor]] = []
        self._meta = TokenMeta.empty()
        self._pos = torch.zeros(3, 0, dtype=torch.long)
        self._orig_pos = torch.zeros(3, 0, dtype=torch.long)  # positions the keys were computed at
        self._next_pos = 0
        self._pending: int | None = None  # tokens of the forward in flight
        self.rerotations = 0  # re-rotation passes done (at most one per apply_policy)

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

    def append(self, meta: TokenMeta) -> torch.Tensor:
        """Record the tokens about to be forwarded; returns their position ids (3, 1, n) for the model."""
        if self._pending is not None:
            raise RuntimeError("append() called twice without a forward in between")
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

    # ---- eviction -------------------------------------------------------------------------------------------

    def apply_policy(self, now: int) -> bool:
        """Apply the policy before chunk ``now``; returns whether anything changed."""
        if self._pending is not None:
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
        """Forget everything (a new stream)."""
        for layer in self.layers:
            layer.reset()
        self._parts, self._meta = [], TokenMeta.empty()
        self._pos = torch.zeros(3, 0, dtype=torch.long)
        self._orig_pos = torch.zeros(3, 0, dtype=torch.long)
        self._next_pos, self._pending = 0, None
