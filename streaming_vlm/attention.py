"""The language model's attention for streaming: PyTorch SDPA on the cache's K/V without repeating grouped heads.

transformers' SDPA integration copies the whole K/V once per layer (``repeat_kv``) whenever it gets a mask, i.e.
for every chunk prefill after the first and every static step with more than one token: grouped-query models
(Qwen2.5-VL-7B: 28 query heads on 4 KV heads) then read 7x the cache. This module computes the same attention on
the K/V as stored:

- **no mask** (what the engine passes for its prefills: the new tokens see the whole cache and each other causally,
  aligned to the end of the cache, "lower right"): one query or as many queries as keys need no mask; otherwise a
  CUDA device gets ``torch.nn.attention.bias.causal_lower_right`` (FlashAttention, no mask materialised) and other
  devices a materialised lower-right mask; grouped heads through SDPA's ``enable_gqa``;
- **a mask** (static steps: the valid slots of the cache's buffers; any forward transformers builds a mask for): on a
  CUDA device the queries of each KV head are folded into that head's query rows (``pack``), so the
  memory-efficient kernel, which takes a mask but not grouped heads, reads the K/V as stored (the mask is repeated
  along the folded rows instead: queries x keys x groups booleans, not the K/V); elsewhere ``enable_gqa`` (CPU kernels
  take a mask with grouped heads).

:func:`use_streaming_attention` registers it as ``streaming_sdpa`` (with transformers' SDPA mask builder, so a
forward that lets transformers build its masks gets the same masks as under ``sdpa``) and switches one model's
language model to it; the vision tower keeps its own attention. Semantics differ from ``sdpa`` only where ``sdpa``
does not apply: a mask of None with fewer queries than keys (``sdpa`` would attend to the first keys).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import CausalBias, causal_lower_right
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.utils.import_utils import is_torch_greater_or_equal

NAME = "streaming_sdpa"


def grouped_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                 scale: float | None, causal: bool, pack: bool) -> torch.Tensor:
    """Attention of ``query`` (B, H, q, D) over ``key``/``value`` (B, Hkv, kv, D), H a multiple of Hkv (query head
    h reads KV head h // (H / Hkv), as ``repeat_kv`` lays them out); returns (B, H, q, D).

    ``mask``: bool (True = attend) or additive, broadcastable to (B, 1, q, kv); None = lower-right causal when
    ``causal`` and q > 1, else everything. ``pack`` folds grouped queries into their KV head's rows (for kernels
    without grouped heads); otherwise grouped heads go to SDPA as they are.
    """
    b, h, q, d = query.shape
    hkv, kv = key.shape[1], key.shape[2]
    groups = h // hkv
    is_causal = False
    if mask is None and causal and q > 1:
        if q == kv:
            is_causal = True
        elif query.device.type == "cuda":
            mask = causal_lower_right(q, kv)
        else:
            mask = torch.ones(q, kv, dtype=torch.bool, device=query.device).tril(kv - q)
    if groups > 1 and not is_torch_greater_or_equal("2.5"):  # no enable_gqa before torch 2.5: repeat the heads
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
        groups = 1
    # a CausalBias is a torch.Tensor subclass that SDPA dispatches on: it must reach SDPA as it is, never folded
    tensor_mask = isinstance(mask, torch.Tensor) and not isinstance(mask, CausalBias)
    if groups == 1 or not pack or not tensor_mask or (mask.dim() == 4 and mask.shape[1] != 1):
        kwargs = {"enable_gqa": True} if groups > 1 else {}
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, is_causal=is_causal, scale=scale,
                                              **kwargs)
    rows = query.reshape(b, hkv, groups * q, d)  # row g * q + i: query i of head kv * groups + g
    if q > 1:
        mask = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape)).repeat(1, 1, groups, 1)
    out = F.scaled_dot_product_attention(rows, key, value, attn_mask=mask, scale=scale)
    return out.reshape(b, h, q, d)


def streaming_sdpa(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                   is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature around :func:`grouped_sdpa` (inference only: no dropout)."""
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    out = grouped_sdpa(query, key, value, attention_mask, scaling, causal, pack=query.device.type == "cuda")
    return out.transpose(1, 2).contiguous(), None


def use_streaming_attention(model) -> None:
    """Run ``model``'s language model (a Qwen2.5-VL) through :func:`streaming_sdpa`; idempotent.

    Registers the function (and transformers' SDPA masks) under ``streaming_sdpa``, then sets the text
    config's attention implementation with transformers' ``set_attn_implementation``; the vision tower keeps its own.
    """
    AttentionInterface.register(NAME, streaming_sdpa)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    if model.config.text_config._attn_implementation != NAME:
        model.set_attn_implementation({"text_config": NAME})
