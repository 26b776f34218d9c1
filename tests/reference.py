"""A deliberately simple reference for the streaming cache (the upstream implementation's semantics).

It keeps a plain Python list of tokens with their *un-rotated* keys, applies the StreamingVLM policy with
plain loops, recomputes every position from scratch with a plain loop over the kept tokens, and rotates the
whole cache at every forward. Slow and obviously correct; the engine's ``StreamingCache`` must match it.
It shares nothing with the engine's cache but the token layout (``TokenMeta`` kinds) and the model's
rotary function.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

from streaming_vlm.cache import model_rope
from streaming_vlm.layout import NO_ROUND, Kind, TokenMeta
from streaming_vlm.policy import CachePolicy


def _rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def reference_positions(tokens: list[dict], time_interval: float) -> list[tuple[int, int, int]]:
    """Positions of a token list, from scratch: text +1; a vision block at (start + t*interval, +h, +w)."""
    out, p, i = [], 0, 0
    while i < len(tokens):
        tok = tokens[i]
        if tok["grid"] is None:
            out.append((p, p, p))
            p += 1
            i += 1
            continue
        gt, gh, gw = tok["grid"]
        block_max = p
        for t in range(gt):
            for h in range(gh):
                for w in range(gw):
                    pos = (p + int(t * time_interval), p + h, p + w)
                    out.append(pos)
                    block_max = max(block_max, *pos)
                    i += 1
        p = block_max + 1
    return out


class _RefLayer(DynamicLayer):
    def __init__(self, owner, idx):
        super().__init__()
        self.owner, self.idx = owner, idx

    def update(self, key_states, value_states, *args, **kwargs):
        return self.owner._update(self, key_states, value_states)

    def get_seq_length(self) -> int:
        return len(self.owner.tokens)


class ReferenceCache(Cache):
    """Same protocol as ``StreamingCache`` (append / end_forward / apply_policy / meta), built naively."""

    def __init__(self, model, policy: CachePolicy, time_interval: float):
        n = model.config.text_config.num_hidden_layers
        super().__init__(layers=[_RefLayer(self, i) for i in range(n)])
        self.rope = model_rope(model)
        self.policy = policy
        self.time_interval = time_interval
        self.tokens: list[dict] = []
        self._new: list[dict] = []

    # protocol -------------------------------------------------------------------------------------------------
    @property
    def num_tokens(self):
        return len(self.tokens)

    @property
    def meta(self) -> TokenMeta:
        return TokenMeta(
            torch.tensor([t["id"] for t in self.tokens], dtype=torch.long),
            torch.tensor([t["kind"] for t in self.tokens], dtype=torch.long),
            torch.tensor([t["round"] for t in self.tokens], dtype=torch.long),
            torch.ones(len(self.tokens), dtype=torch.bool),
            torch.zeros(3, len(self.tokens), dtype=torch.long),
        )

    @property
    def positions(self) -> torch.Tensor:
        return torch.tensor(reference_positions(self.tokens, self.time_interval), dtype=torch.long).T

    def append(self, meta: TokenMeta) -> torch.Tensor:
        # grids: each run of consecutive pads of one round is one block; recover (t, h, w) from rel offsets
        new, i, n = [], 0, len(meta)
        while i < n:
            if meta.group_start[i] and i + 1 < n and not meta.group_start[i + 1]:
                j = i + 1
                while j < n and not meta.group_start[j]:
                    j += 1
                rel = meta.rel[:, i:j]
                gh, gw = int(rel[1].max()) + 1, int(rel[2].max()) + 1
                grid = ((j - i) // (gh * gw), gh, gw)
                new += [self._tok(meta, k, grid) for k in range(i, j)]
                i = j
            else:
                new.append(self._tok(meta, i, None))
                i += 1
        self._new = new
        pos = torch.tensor(reference_positions(self.tokens + new, self.time_interval), dtype=torch.long).T
        return pos[:, len(self.tokens) :].unsqueeze(1)

    @staticmethod
    def _tok(meta, i, grid):
        return {"id": int(meta.ids[i]), "kind": int(meta.kind[i]), "round": int(meta.round[i]), "grid": grid,
                "k": {}, "v": {}}

    def end_forward(self):
        self.tokens += self._new
        self._new = []

    def relabel_tail(self, kinds):
        for tok, kind in zip(self.tokens[len(self.tokens) - len(kinds) :], kinds.tolist(), strict=True):
            tok["kind"] = kind

    def reset(self):
        self.tokens, self._new = [], []
        for layer in self.layers:
            DynamicLayer.reset(layer)

    def _update(self, layer, key_states, value_states):
        everything = self.tokens + self._new
        pos = torch.tensor(reference_positions(everything, self.time_interval), dtype=torch.long).T.unsqueeze(1)
        cos, sin = self.rope(pos)
        c, s = cos.unsqueeze(1).float(), sin.unsqueeze(1).float()
        n_old = len(self.tokens)
        y = key_states.float()
        cn, sn = c[:, :, n_old:], s[:, :, n_old:]
        h = y.shape[-1] // 2
        # invert y = x*c + rot(x)*s per frequency pair
        det = cn[..., :h] ** 2 + sn[..., :h] ** 2
        x1 = (cn[..., :h] * y[..., :h] + sn[..., :h] * y[..., h:]) / det
        x2 = (cn[..., :h] * y[..., h:] - sn[..., :h] * y[..., :h]) / det
        raw = torch.cat([x1, x2], dim=-1)
        for j, tok in enumerate(self._new):
            tok["k"][layer.idx] = raw[0, :, j]
            tok["v"][layer.idx] = value_states[0, :, j]
        ks = torch.stack([t["k"][layer.idx] for t in everything], dim=1).unsqueeze(0)  # (1, H, L, D) raw
        vs = torch.stack([t["v"][layer.idx] for t in everything], dim=1).unsqueeze(0)
        keys = (ks * c + _rotate_half(ks) * s).to(key_states.dtype)  # the whole cache, rotated from scratch
        layer.keys, layer.values, layer.is_initialized = keys, vs, True
        return keys, vs

    def apply_policy(self, now: int) -> bool:
        V, T = self.policy.vision_window, self.policy.text_rounds
        S, W = self.policy.text_sink, self.policy.text_window
        before, retired, after, seen_prev_end = [], [], [], False
        for tok in self.tokens:
            r, kind = tok["round"], tok["kind"]
            text_old = r != NO_ROUND and T is not None and r <= now - T
            vis_old = r != NO_ROUND and V is not None and r <= now - V
            if kind == Kind.PREV_END:
                seen_prev_end = True
            if kind == Kind.ASSIST_TEXT and text_old:
                retired.append(dict(tok, kind=int(Kind.PREV_TEXT), round=NO_ROUND))
                continue
            if kind in (Kind.ASSIST_HEAD, Kind.ASSIST_END, Kind.TIME) and text_old:
                continue
            if kind == Kind.VISION and vis_old:
                continue
            if kind == Kind.USER and text_old and vis_old:
                continue
            (after if seen_prev_end else before).append(tok)
        tokens = before + retired + after
        prev = [t for t in tokens if t["kind"] == Kind.PREV_TEXT]
        if S is not None and W is not None and len(prev) > S + W:
            gone = {id(t) for t in prev[S : len(prev) - W]}
            tokens = [t for t in tokens if id(t) not in gone]
        changed = [id(t) for t in tokens] != [id(t) for t in self.tokens]
        self.tokens = tokens
        return changed
