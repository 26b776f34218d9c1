"""The StreamingVLM eviction policy: which tokens a stream keeps, and in what order.

Pure functions over per-token bookkeeping (``layout.TokenMeta``); no tensors of the model are touched here.
The cache (``cache.py``) applies the resulting plan to its K/V, and training uses ``keep_previous`` to cut
previous text exactly as the cache keeps it.

Before chunk ``now`` is fed, with V = ``vision_window``, T = ``text_rounds``, S = ``text_sink``,
W = ``text_window`` (``None`` = unlimited):

- the system prompt always stays;
- vision blocks of rounds ``<= now - V`` are dropped (chunks ``now-V+1 .. now`` stay visible);
- assistant turns of rounds ``<= now - T`` are retired: their commentary tokens (without the `` ...`` marker)
  move, K/V and all, to the end of the previous text; their markup and ``Time=`` text are dropped;
- a user turn's remaining markup (and the query) goes once both its vision and its text are gone;
- previous text keeps its first S and last W content tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from streaming_vlm.layout import NO_ROUND, Kind, TokenMeta
from streaming_vlm.settings import DEFAULTS


@dataclass(frozen=True)
class CachePolicy:
    """What the streaming cache keeps. ``None`` means unlimited."""

    vision_window: int | None = DEFAULTS.vision_window
    """Chunks whose vision tokens stay (including the current one)."""
    text_rounds: int | None = DEFAULTS.text_rounds
    """Assistant turns kept verbatim (including the current one); older ones retire into previous text."""
    text_sink: int | None = DEFAULTS.text_sink
    """First previous-text tokens kept (the text attention sink)."""
    text_window: int | None = DEFAULTS.text_window
    """Last previous-text tokens kept."""

    def __post_init__(self):
        for name in ("vision_window", "text_rounds"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1 or None (unlimited), got {v}")
        for name in ("text_sink", "text_window"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ValueError(f"{name} must be >= 0 or None (unlimited), got {v}")

    @classmethod
    def unlimited(cls) -> CachePolicy:
        return cls(None, None, None, None)

    @property
    def is_unlimited(self) -> bool:
        return all(v is None for v in (self.vision_window, self.text_rounds, self.text_sink, self.text_window))

    def keep_previous(self, n: int) -> torch.Tensor:
        """Indices of the previous-text content tokens kept out of ``n``: the first S and the last W."""
        if self.text_sink is None or self.text_window is None or n <= self.text_sink + self.text_window:
            return torch.arange(n)
        return torch.cat([torch.arange(self.text_sink), torch.arange(n - self.text_window, n)])

    def cut_previous(self, ids: list[int]) -> list[int]:
        """Previous-text content ids as the cache keeps them (inference prefills and training samples use this)."""
        return torch.tensor(ids, dtype=torch.long)[self.keep_previous(len(ids))].tolist()

    def plan(self, meta: TokenMeta, now: int) -> tuple[torch.Tensor, TokenMeta] | None:
        """The kept tokens before chunk ``now``: (order, new meta), or None when nothing changes.

        ``order`` indexes the current tokens; ``new meta = meta.select(order)`` with retired commentary
        relabelled as previous text.
        """
        n = len(meta)
        kind, rnd = meta.kind, meta.round
        in_round = rnd != NO_ROUND
        never = torch.zeros(n, dtype=torch.bool)
        text_old = never if self.text_rounds is None else in_round & (rnd <= now - self.text_rounds)
        vis_old = never if self.vision_window is None else in_round & (rnd <= now - self.vision_window)

        retire = text_old & (kind == Kind.ASSIST_TEXT)
        drop = (
            (text_old & ((kind == Kind.ASSIST_HEAD) | (kind == Kind.ASSIST_END) | (kind == Kind.TIME)))
            | (vis_old & (kind == Kind.VISION))
            | (text_old & vis_old & (kind == Kind.USER))
        )
        prev_end = torch.nonzero(kind == Kind.PREV_END)
        if prev_end.numel() == 0:
            raise ValueError("the stream has no previous-text turn: every stream must start with one")
        pe = int(prev_end[0])
        idx = torch.arange(n)
        stay = ~(drop | retire)
        order = torch.cat([idx[:pe][stay[:pe]], idx[retire], idx[pe:][stay[pe:]]])
        new = meta.select(order)
        moved = retire[order]
        new.kind[moved] = int(Kind.PREV_TEXT)
        new.round[moved] = NO_ROUND

        is_prev = new.kind == Kind.PREV_TEXT
        prev_idx = torch.nonzero(is_prev).flatten()
        kept_prev = prev_idx[self.keep_previous(prev_idx.numel())]
        if kept_prev.numel() < prev_idx.numel():
            keep = ~is_prev
            keep[kept_prev] = True
            order, new = order[keep], new.select(keep)
        if order.numel() == n and bool((order == idx).all()):
            return None
        return order, new
