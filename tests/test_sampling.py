"""The on-device sampler against the plain host-side rule it replaced: the same tokens from the same generator state."""

from __future__ import annotations

import pytest
import torch

from streaming_vlm.sampling import SamplingConfig, TokenSampler


def reference_select(logits: torch.Tensor, penalised_ids: torch.Tensor, cfg: SamplingConfig,
                     generator: torch.Generator) -> int:
    """The engine's sampler before the device path (transformers' order), kept verbatim as the reference:
    ``torch.unique`` for the penalty, a full-vocabulary sort for top-p, ``torch.multinomial`` for the draw."""
    logits = logits.float()
    if cfg.repetition_penalty != 1.0 and penalised_ids.numel():
        ids = torch.unique(penalised_ids)
        seen = logits[ids]
        logits = logits.clone()
        logits[ids] = torch.where(seen > 0, seen / cfg.repetition_penalty, seen * cfg.repetition_penalty)
    if cfg.temperature == 0:
        return int(torch.argmax(logits))
    logits = logits / cfg.temperature
    if cfg.top_k:
        kth = torch.topk(logits, min(cfg.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p is not None and cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        remove = cum - torch.softmax(sorted_logits, dim=-1) >= cfg.top_p
        remove[0] = False
        logits = logits.masked_fill(torch.zeros_like(remove).scatter(0, order, remove), float("-inf"))
    return int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator))


CONFIGS = {
    "greedy": SamplingConfig(temperature=0.0),
    "greedy, no penalty": SamplingConfig(temperature=0.0, repetition_penalty=1.0),
    "temperature": SamplingConfig(temperature=0.9),
    "top-k": SamplingConfig(temperature=0.7, top_k=20),
    "top-p": SamplingConfig(temperature=1.0, top_p=0.8),
    "top-k and top-p": SamplingConfig(temperature=0.9, top_k=50, top_p=0.9, repetition_penalty=1.3),
    "top-k beyond the vocabulary": SamplingConfig(temperature=1.2, top_k=100_000, top_p=0.95),
    "tiny top-p": SamplingConfig(temperature=0.1, top_k=1000, top_p=0.001),
}


@pytest.mark.parametrize("vocab,steps", [(400, 200), (151_936, 12)], ids=["tiny vocabulary", "Qwen2.5 vocabulary"])
@pytest.mark.parametrize("cfg", CONFIGS.values(), ids=CONFIGS.keys())
def test_same_tokens_as_the_reference_sampler(cfg, vocab, steps):
    """A decode run: the same tokens as the reference, which is given the commentary in context and
    every token selected so far; forbidden tokens are never selected. Logits spread like a model's (a few dominant
    tokens over a heavy tail), with ties only at -inf."""
    gen = torch.Generator().manual_seed(vocab)
    forbidden = [3, 7, vocab - 1]
    commentary = torch.randint(0, vocab, (30,), generator=gen)  # with repeats, as commentary has
    sampler = TokenSampler(cfg, forbidden, torch.Generator().manual_seed(11))
    ref_gen = torch.Generator().manual_seed(11)
    sampler.begin(commentary)
    chosen: list[int] = []
    for _ in range(steps):
        logits = torch.randn(vocab, generator=gen) * 2
        logits[torch.randint(0, vocab, (5,), generator=gen)] += 6  # a few likely tokens
        logits[commentary[:3]] += 6  # some of them penalised
        row = sampler.mask(logits)
        assert bool(torch.isinf(row[forbidden]).all())
        token = sampler.select(row)
        assert token.shape == (1,) and token.dtype == torch.long
        expected = reference_select(row, torch.cat([commentary, torch.tensor(chosen, dtype=torch.long)]), cfg,
                                    ref_gen)
        assert int(token) == expected
        chosen.append(expected)
    assert not set(chosen) & set(forbidden)
    if cfg.temperature and cfg.top_p != 0.001:
        assert len(set(chosen)) > 3  # really sampled
    # the generators are in the same state: the draws consumed the same random numbers
    assert torch.equal(sampler.generator.get_state(), ref_gen.get_state())


def test_penalty_applies_to_the_run_only():
    """``begin`` replaces the penalised set: tokens of an earlier run are not penalised in the next."""
    cfg = SamplingConfig(temperature=0.0, repetition_penalty=10.0)
    sampler = TokenSampler(cfg, [])
    logits = torch.tensor([1.0, 0.9, 0.8, -5.0])
    sampler.begin(torch.tensor([], dtype=torch.long))
    assert int(sampler.select(sampler.mask(logits))) == 0
    assert int(sampler.select(sampler.mask(logits))) == 1  # token 0 now penalised: 0.1 < 0.9
    sampler.begin(torch.tensor([1]))
    assert int(sampler.select(sampler.mask(logits))) == 0  # a new run: only token 1 penalised
    assert int(sampler.select(sampler.mask(logits))) == 2  # then 0 and 1
