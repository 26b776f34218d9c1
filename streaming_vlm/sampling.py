"""Next-token selection: repetition penalty, temperature, top-k, top-p, greedy.

Operates on one logits row at a time; it owns no model or cache state. Order as in transformers:
repetition penalty -> temperature -> top-k -> top-p -> sample. Temperature 0 means greedy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from streaming_vlm.settings import DEFAULTS


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = DEFAULTS.temperature
    """0 = greedy."""
    top_p: float | None = DEFAULTS.top_p
    """Nucleus sampling mass (None or 1.0 = off)."""
    top_k: int | None = DEFAULTS.top_k
    """Keep the k most likely tokens (None or 0 = off)."""
    repetition_penalty: float = DEFAULTS.repetition_penalty
    """Applied to tokens of the commentary in context, never to vision or prompt tokens (1.0 = off)."""
    max_new_tokens: int = DEFAULTS.max_new_tokens

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


def apply_repetition_penalty(logits: torch.Tensor, token_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """transformers' rule: a seen token's logit is divided by ``penalty`` if positive, multiplied if negative."""
    if penalty == 1.0 or token_ids.numel() == 0:
        return logits
    ids = torch.unique(token_ids.to(logits.device))
    seen = logits[ids]
    logits = logits.clone()
    logits[ids] = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits


def select_token(
    logits: torch.Tensor,
    penalised_ids: torch.Tensor,
    cfg: SamplingConfig,
    generator: torch.Generator | None = None,
) -> int:
    """Pick the next token from ``logits`` (V,) given the ids the repetition penalty applies to."""
    logits = apply_repetition_penalty(logits.float(), penalised_ids, cfg.repetition_penalty)
    if cfg.temperature == 0:
        return int(torch.argmax(logits))
    logits = logits / cfg.temperature
    if cfg.top_k:
        k = min(cfg.top_k, logits.numel())
        kth = torch.topk(logits, k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p is not None and cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        remove = cum - torch.softmax(sorted_logits, dim=-1) >= cfg.top_p  # keep the smallest set reaching top_p
        remove[0] = False
        logits = logits.masked_fill(torch.zeros_like(remove).scatter(0, order, remove), float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
