"""Next-token selection on the logits' device: forbidden tokens, repetition penalty, temperature, top-k, top-p.

``TokenSampler`` holds one stream's selection state (its generator, the tokens the repetition penalty applies to)
and owns no model or cache state. Order as in transformers: repetition penalty -> temperature -> top-k -> top-p ->
sample; temperature 0 means greedy. Everything stays on the device and nothing waits for it: ``select`` returns
the token as a device tensor (1,), which the caller reads once (the decode loop's one host sync per token).

Equivalence with the plain host-side rule (``tests/test_sampling.py`` keeps it as the reference):

- the repetition penalty is a boolean mask over the vocabulary (no ``torch.unique``), updated in place with each
  selected token; the penalised logits are the same values;
- top-k keeps the logits ``>=`` the k-th largest (ties included), as before; top-p sorts only the top-k candidates
  when top-k is set (a full-vocabulary sort only for top-p alone), which keeps the same tokens unless logits tie at
  the top-k or top-p boundary;
- the draw is ``torch.multinomial``'s own algorithm for one sample, ``argmax(p / q)`` with ``q ~ Exp(1)`` drawn for
  the whole vocabulary from the same generator, without its validity check (an ``.item()``): the same generator
  state gives the same token.
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


class TokenSampler:
    """Selects tokens from logits rows (V,) on their device, for one stream.

    Args:
        cfg: the sampling settings.
        forbidden_ids: tokens never selected (their logits become -inf first).
        generator: the random generator of the stream (on the logits' device); unused when greedy.

    Per decode run: ``begin(penalised_ids, cfg)``, then for each token ``select(mask(logits))``.
    """

    def __init__(self, cfg: SamplingConfig, forbidden_ids: list[int], generator: torch.Generator | None = None):
        self.cfg = cfg
        self.generator = generator
        self._forbidden_ids = torch.tensor(sorted(set(forbidden_ids)), dtype=torch.long)
        self._forbidden: torch.Tensor | None = None  # bool (V,) on the device
        self._seen: torch.Tensor | None = None  # bool (V,): tokens the repetition penalty applies to
        self._pending_seen: torch.Tensor | None = None  # ids given to begin() before the vocabulary size was known

    def _state(self, logits: torch.Tensor) -> None:
        n, device = logits.shape[-1], logits.device
        if self._forbidden is None or self._forbidden.numel() != n or self._forbidden.device != device:
            self._forbidden = torch.zeros(n, dtype=torch.bool, device=device)
            self._forbidden[self._forbidden_ids[self._forbidden_ids < n].to(device)] = True
            self._seen = torch.zeros(n, dtype=torch.bool, device=device)
        if self._pending_seen is not None:
            self._seen.zero_()
            self._seen[self._pending_seen.to(device)] = True
            self._pending_seen = None

    def begin(self, penalised_ids: torch.Tensor, cfg: SamplingConfig | None = None) -> None:
        """Start a decode run: the repetition penalty applies to ``penalised_ids`` (long, any device: the commentary
        in context) and to every token selected from now on; ``cfg`` replaces the settings (from now on)."""
        self._pending_seen = penalised_ids.reshape(-1).to(torch.long)
        if cfg is not None:
            self.cfg = cfg

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` (V,) with the forbidden tokens at -inf: the row a token is selected from."""
        self._state(logits)
        return logits.masked_fill(self._forbidden, float("-inf"))

    def select(self, logits: torch.Tensor) -> torch.Tensor:
        """The next token, long (1,) on the logits' device, from a row (V,) returned by :meth:`mask`."""
        self._state(logits)
        cfg = self.cfg
        logits = logits.float()
        if cfg.repetition_penalty != 1.0:  # transformers' rule: divide a seen positive logit, multiply a negative one
            p = cfg.repetition_penalty
            logits = torch.where(self._seen, torch.where(logits > 0, logits / p, logits * p), logits)
        if cfg.temperature == 0:
            token = torch.argmax(logits).view(1)
        else:
            token = self._sample(logits / cfg.temperature)
        self._seen.index_fill_(0, token, True)
        return token

    def _sample(self, logits: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        n = logits.numel()
        top = None
        if cfg.top_k:
            top = torch.topk(logits, min(cfg.top_k, n))  # sorted, descending
            logits = logits.masked_fill(logits < top.values[-1:], float("-inf"))
        if cfg.top_p is not None and cfg.top_p < 1.0:
            # the candidates in descending order: the top-k ones, or the whole vocabulary
            values, order = (top.values, top.indices) if top is not None else torch.sort(logits, descending=True)
            probs = torch.softmax(values, dim=-1)
            # keep the smallest set reaching top_p; never the first (its mass before it is 0 < top_p)
            remove = probs.cumsum(-1) - probs >= cfg.top_p
            removed = torch.zeros(n, dtype=torch.bool, device=logits.device).scatter(0, order, remove)
            logits = logits.masked_fill(removed, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        q = torch.empty_like(probs).exponential_(1, generator=self.generator)
        return torch.argmax(probs / q).view(1)
