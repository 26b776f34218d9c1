"""M-RoPE position rule for Qwen2.5-VL, the one Qwen2.5-VL was trained with (transformers 4.x).

This module owns how token positions are computed; inference (the cache) and training use it and nothing
else. It knows nothing about tokens, segments or caches: it maps *groups* to positions.

The rule, over a sequence of tokens:

- every text token is its own group of span 1: position ``p`` on all three axes (t, h, w), next ``p + 1``;
- the pad tokens of one vision block form one group starting at ``st``: the pad at grid cell (tau, r, c) gets
  ``(st + floor(tau * time_interval), st + r, st + c)``; the group spans ``max(offsets) + 1`` positions, so the
  text after a vision block resumes at the block's maximum position + 1.

Each token is described by ``group_start`` (True for the first token of a group) and ``rel``, its (3,) offset
inside its group (zero for text). Positions then follow from a cumulative sum over group spans, which is
what makes them *contiguous*: drop any whole groups and recomputing gives gap-free positions.

transformers 5.x's ``get_rope_index`` advances text after a video block by ``max(h, w)`` only, ignoring the
temporal extent; it agrees with this rule for single-temporal-patch blocks (2-frame chunks) only.
"""

from __future__ import annotations

import torch


def vision_offsets(grid_t: int, grid_h: int, grid_w: int, time_interval: float) -> torch.Tensor:
    """Offsets (3, t*h*w) of a vision block's pads from the block start, in raster (t, h, w) order.

    ``grid_*`` are LLM-token grid sizes (after spatial merging). ``time_interval`` is
    ``tokens_per_second * temporal_patch_size / fps``: how many positions one temporal patch advances.
    """
    t_idx = (torch.arange(grid_t, dtype=torch.float64) * time_interval).long()
    t, h, w = torch.meshgrid(t_idx, torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    return torch.stack([t.reshape(-1), h.reshape(-1), w.reshape(-1)])


def assign_positions(
    group_start: torch.Tensor, rel: torch.Tensor, start: int = 0
) -> tuple[torch.Tensor, int]:
    """Contiguous positions for a token sequence.

    Args:
        group_start: bool (L,), True where a new group begins (every text token, the first pad of a block).
        rel: long (3, L), offset of each token inside its group.
        start: position of the first token.

    Returns:
        positions, long (3, L), and the next free position (``start`` + the total span).
    """
    n = group_start.numel()
    if n == 0:
        return torch.zeros(3, 0, dtype=torch.long), start
    if not bool(group_start[0]):
        raise ValueError("a token sequence must begin with the start of a group")
    gid = torch.cumsum(group_start.long(), 0) - 1  # (L,) group of each token
    n_groups = int(gid[-1]) + 1
    span = torch.zeros(n_groups, dtype=torch.long).scatter_reduce(
        0, gid, rel.max(dim=0).values, reduce="amax", include_self=True
    ) + 1  # (G,)
    group_pos = start + torch.cumsum(span, 0) - span  # (G,) first position of each group
    return group_pos[gid].unsqueeze(0) + rel, start + int(span.sum())
