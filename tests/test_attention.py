"""The language model's attention without repeated K/V (``attention.py``) = plain attention over repeated heads."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention.bias import causal_lower_right
from transformers.cache_utils import DynamicCache

from streaming_vlm.attention import NAME, grouped_sdpa, use_streaming_attention
from streaming_vlm.models import load_model


def reference(query, key, value, mask, scale):
    """Attention in float64 with the K/V heads repeated (``repeat_kv``) and an explicit mask (True = attend)."""
    groups = query.shape[1] // key.shape[1]
    k = key.double().repeat_interleave(groups, dim=1)
    v = value.double().repeat_interleave(groups, dim=1)
    scores = query.double() @ k.transpose(-1, -2) * scale
    scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.double()
    return (torch.softmax(scores, dim=-1) @ v).float()


def lower_right(q, kv):
    return torch.ones(q, kv, dtype=torch.bool).tril(kv - q)


CASES = {  # (queries, keys, mask kind)
    "prefill from empty": (7, 7, None),
    "prefill after the cache": (7, 40, None),
    "one token, no mask": (1, 40, None),
    "decode step over a buffer": (1, 64, "slots"),
    "close over a buffer": (3, 64, "slots"),
    "additive mask": (5, 40, "additive"),
    "lower-right bias": (7, 40, "bias"),  # what a CUDA device gets for a prefill after the cache (a Tensor subclass)
}


@pytest.mark.parametrize("pack", [False, True], ids=["enable_gqa", "packed rows"])
@pytest.mark.parametrize("heads", [(4, 2), (28, 4), (4, 4)], ids=["2 groups", "7 groups", "no groups"])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_grouped_sdpa_equals_repeated_heads(case, heads, pack):
    q, kv, kind = case
    h, hkv = heads
    gen = torch.Generator().manual_seed(q * 100 + kv + h)
    query = torch.randn(1, q, h, 32, generator=gen).transpose(1, 2)  # as the model lays it out: a strided view
    key, value = (torch.randn(1, hkv, kv, 32, generator=gen) for _ in range(2))
    scale = 32**-0.5
    if kind is None:
        mask, expected_mask = None, lower_right(q, kv)
    elif kind == "slots":  # a static step: slots 0..40 hold the cache, the step's tokens go to 41.., the rest is free
        slots = torch.arange(41, 41 + q)
        mask = (torch.arange(kv).view(1, -1) <= slots.view(-1, 1)).view(1, 1, q, kv)
        expected_mask = mask[0, 0]
        key[:, :, 41 + q :] = 1e4  # free slots (finite: the cache zeroes its buffers) must not matter
        value[:, :, 41 + q :] = -1e4
    elif kind == "bias":
        mask, expected_mask = causal_lower_right(q, kv), lower_right(q, kv)
    else:
        mask = torch.zeros(1, 1, q, kv).masked_fill(~lower_right(q, kv), torch.finfo(torch.float32).min)
        expected_mask = mask[0, 0]
    out = grouped_sdpa(query, key, value, mask, scale, causal=True, pack=pack)
    expected = reference(query, key, value, expected_mask, scale)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_the_switched_model_equals_stock_sdpa(tiny_model_dir):
    """A prefill, then a continuation over the cache: the same logits under ``sdpa`` and ``streaming_sdpa``, whether
    transformers builds the continuation's mask or the engine passes none; the vision tower keeps ``sdpa``."""
    stock = load_model(str(tiny_model_dir), device="cpu", dtype="fp32").model
    ours = load_model(str(tiny_model_dir), device="cpu", dtype="fp32").model
    use_streaming_attention(ours)
    use_streaming_attention(ours)  # idempotent
    assert ours.config.text_config._attn_implementation == NAME
    assert ours.config.vision_config._attn_implementation == stock.config.vision_config._attn_implementation == "sdpa"
    ids = torch.randint(0, 300, (1, 30), generator=torch.Generator().manual_seed(0))
    results = []
    for model, mask in ((stock, None), (ours, None), (ours, {"full_attention": None})):
        cache = DynamicCache(config=model.config)
        with torch.inference_mode():
            first = model(input_ids=ids[:, :20], past_key_values=cache, use_cache=True).logits
            kwargs = {} if mask is None else {"attention_mask": mask}
            rest = model(input_ids=ids[:, 20:], past_key_values=cache, use_cache=True, **kwargs).logits
        results.append(torch.cat([first, rest], dim=1))
    torch.testing.assert_close(results[1], results[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(results[2], results[0], atol=1e-5, rtol=0)
