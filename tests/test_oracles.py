"""Oracles that share no code with the engine: positions and kept keys recomputed from first principles.

``tests/reference.py`` checks the engine against a naive cache, but that cache borrows the engine's rotary
function, token layout and policy, so a wrong ``inv_freq`` or rope scaling would cancel out. (A wrong M-RoPE
split cannot matter in a re-rotation: a kept token always moves by the same delta on all three axes.)
The oracles here use none of the engine's position, layout, policy or cache code (its ``Kind`` labels serve
only to assert that evictions happened):

- **positions**: a plain loop over the kept token ids implementing the rule Qwen2.5-VL was trained with
  (``get_rope_index_25`` of Qwen's qwen-vl-finetune; transformers 4.x ``get_rope_index`` is the same except
  that 4.52-4.57 cast a fractional ``second_per_grid_t`` to an integer first, 0.5 s to 0, which transformers
  PR #48669 fixed): text advances by 1 on all three axes; a video block of (t, h, w) merged tokens starting at
  ``st`` puts pad (tau, r, c) at ``(st + int(tau * second_per_grid_t * tokens_per_second), st + r, st + c)``
  with the processor's
  ``second_per_grid_t = temporal_patch_size / fps`` (a float: 0.5 s at 4 fps); text after a block resumes at
  the block's maximum + 1. The grid comes from the frame size and frame count, never from the engine;
- **keys**: layer 0's keys recomputed from the model's own modules: token embeddings, the vision tower
  (``get_video_features`` on the kept chunks' pixels), ``input_layernorm``, ``k_proj``, the rotary embedding
  module at the oracle positions and transformers' ``apply_rotary_pos_emb``. Deeper layers: the cache's
  original keys are un-rotated at their insertion positions and re-rotated at the oracle positions with
  transformers' rotation.
"""

from __future__ import annotations

import pytest
import torch
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb

from streaming_vlm.engine import StreamConfig, StreamSession
from streaming_vlm.layout import Kind
from streaming_vlm.models import load_model
from streaming_vlm.sampling import SamplingConfig
from tests.conftest import FRAME_H, FRAME_W, SMALL_SPEC, random_frames

GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=4)
PREVIOUS = "Earlier: the home side scored twice and the crowd is loud, the away side has not had a shot."
# small windows, so that in a short stream vision blocks are evicted, turns retired and previous text cut
WINDOWS = dict(vision_window=3, text_rounds=2, text_sink=4, text_window=6)


# ---- the oracles ---------------------------------------------------------------------------------------------


def video_grid(model, n_frames: int, height: int, width: int) -> tuple[int, int, int]:
    """Merged (t, h, w) grid of one chunk, from the frame geometry alone (sides already multiples of 28)."""
    v = model.config.vision_config
    side = v.patch_size * v.spatial_merge_size
    assert height % side == 0 and width % side == 0 and n_frames % v.temporal_patch_size == 0
    return n_frames // v.temporal_patch_size, height // side, width // side


def trained_positions(ids: list[int], video_pad: int, grid: tuple[int, int, int], second_per_grid_t: float,
                      tokens_per_second: float) -> torch.Tensor:
    """Positions (3, L) of a token sequence by Qwen2.5-VL's trained M-RoPE rule; every video block has ``grid``."""
    gt, gh, gw = grid
    out: list[tuple[int, int, int]] = []
    p, i = 0, 0
    while i < len(ids):
        if ids[i] != video_pad:  # text (including <|vision_start|> and <|vision_end|>)
            out.append((p, p, p))
            p += 1
            i += 1
            continue
        j = i
        while j < len(ids) and ids[j] == video_pad:
            j += 1
        assert j - i == gt * gh * gw, f"a video block of {j - i} pads, expected {gt}x{gh}x{gw}"
        top = p
        for tau in range(gt):
            for r in range(gh):
                for c in range(gw):
                    pos = (p + int(tau * second_per_grid_t * tokens_per_second), p + r, p + c)
                    out.append(pos)
                    top = max(top, *pos)
        p = top + 1
        i = j
    return torch.tensor(out, dtype=torch.long).T


def expected_positions(session: StreamSession, grid: tuple[int, int, int]) -> torch.Tensor:
    """Oracle positions of the tokens the session's cache holds now."""
    model = session.model
    return trained_positions(
        session.cache.meta.ids.tolist(),
        model.config.video_token_id,
        grid,
        model.config.vision_config.temporal_patch_size / session.config.fps,
        model.config.vision_config.tokens_per_second,
    )


def rope(model, x: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype, inverse: bool = False) -> torch.Tensor:
    """Rotate x (B, H, L, D) to ``positions`` (3, L) with the model's rotary module and transformers' rotation."""
    rotary = model.model.language_model.rotary_emb
    cos, sin = rotary(torch.empty(0, dtype=dtype), positions.unsqueeze(1))
    rotated, _ = apply_rotary_pos_emb(x, x, cos, -sin if inverse else sin)
    return rotated


def layer0_raw_keys(model, ids: torch.Tensor, chunk_pixels: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Un-rotated layer-0 keys (1, H, L, D) of a token sequence, from the model's own modules.

    ``chunk_pixels``: (pixel_values_videos, video_grid_thw) of each video block in ``ids``, in order.
    """
    inner = model.model
    embeds = inner.get_input_embeddings()(ids.unsqueeze(0)).clone()
    pads = ids == model.config.video_token_id
    if chunk_pixels:
        feats = torch.cat([torch.cat(inner.get_video_features(pv, g).pooler_output) for pv, g in chunk_pixels])
        assert feats.shape[0] == int(pads.sum())
        embeds[0, pads] = feats.to(embeds.dtype)
    layer = inner.language_model.layers[0]
    attn = layer.self_attn
    k = attn.k_proj(layer.input_layernorm(embeds))
    return k.view(1, ids.numel(), -1, attn.head_dim).transpose(1, 2)


# ---- streaming helpers --------------------------------------------------------------------------------------


def _session(model, tokenizer, **cfg) -> StreamSession:
    config = StreamConfig(sampling=GREEDY, previous_text=PREVIOUS, **cfg)
    return StreamSession(model, tokenizer, config, vision_spec=SMALL_SPEC)


def _forced(k: int) -> str | None:
    """Sampled chunks, teacher-forced ones and empty commentary, mixed."""
    return [None, "goal for the home side", "", "a long pass to the left wing"][k % 4]


def _assert_evictions_happened(session: StreamSession, rounds: int) -> None:
    meta = session.cache.meta
    cfg = session.config
    vision_start = session.model.config.vision_start_token_id
    assert rounds > cfg.vision_window + cfg.text_rounds
    assert int((meta.ids == vision_start).sum()) == cfg.vision_window  # older vision blocks were evicted
    assert meta.round[meta.kind == Kind.ASSIST_HEAD].unique().numel() == cfg.text_rounds  # older turns retired
    assert int((meta.kind == Kind.PREV_TEXT).sum()) == cfg.text_sink + cfg.text_window  # previous text was cut
    assert session.cache.rerotations >= rounds - cfg.vision_window  # kept keys were moved, many times


def _check_keys(session: StreamSession, pixels: dict[int, tuple[torch.Tensor, torch.Tensor]],
                positions: torch.Tensor) -> dict[str, float]:
    """Compare every kept key with the oracle; returns the worst errors (see the tests for the tolerances)."""
    model, cache = session.model, session.cache
    dtype = next(model.parameters()).dtype
    ids = cache.meta.ids
    kept = sorted(pixels)[-session.config.vision_window :]  # the vision window: the last chunks streamed
    raw = layer0_raw_keys(model, ids, [pixels[r] for r in kept])
    keys0 = cache.layers[0].keys

    # layer 0: the model's own computation for these tokens at the oracle positions (in the model's dtype) ...
    fresh = rope(model, raw, positions, dtype)
    # ... and the exact rotation (fp32) of the same raw keys, which both only approximate in bf16
    exact = rope(model, raw.float(), positions, torch.float32)
    worst = {
        "cache_vs_fresh": float((keys0.float() - fresh.float()).abs().max()),
        "cache_vs_exact": float((keys0.float() - exact).abs().max()),
        "fresh_vs_exact": float((fresh.float() - exact).abs().max()),
    }
    # every layer: original key un-rotated at its insertion position, re-rotated at the oracle position
    orig_pos = cache._orig_pos
    assert int((orig_pos != positions).any(dim=0).sum()) > len(ids) // 4, "too few kept keys were moved"
    unrot0 = rope(model, cache.layers[0].orig_keys.float(), orig_pos, torch.float32, inverse=True)
    worst["orig0_unrotated_vs_raw"] = float((unrot0 - raw.float()).abs().max())
    worst["layers_vs_rerotated_orig"] = max(
        float((layer.keys.float() - rope(model, rope(model, layer.orig_keys.float(), orig_pos, torch.float32,
                                                      inverse=True), positions, torch.float32)).abs().max())
        for layer in cache.layers
    )
    return worst


def _stream(session: StreamSession, rounds: int, grid: tuple[int, int, int], n_frames: int = 2,
            height: int = FRAME_H, width: int = FRAME_W, seconds: float = 1.0):
    """Stream ``rounds`` chunks; after each, the cached positions must equal the oracle's. Returns each chunk's
    (pixel_values_videos, video_grid_thw)."""
    pixels = {}
    for k in range(rounds):
        frames = random_frames(1000 + k, n=n_frames, h=height, w=width)
        pixels[k] = session.preprocessor(frames)
        session.step(frames, k * seconds, (k + 1) * seconds, force_text=_forced(k))
        _assert_positions(session.cache.positions, expected_positions(session, grid), f"after chunk {k}")
    return pixels


def _assert_positions(got: torch.Tensor, want: torch.Tensor, where: str) -> None:
    assert got.shape == want.shape, f"{where}: {got.shape[1]} positions, expected {want.shape[1]}"
    bad = torch.nonzero((got != want).any(dim=0)).flatten()
    assert bad.numel() == 0, (f"{where}: {bad.numel()} tokens misplaced, the first at {int(bad[0])}: "
                              f"{got[:, bad[0]].tolist()} instead of {want[:, bad[0]].tolist()}")


# ---- tests --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_bf16(tiny_model_dir):
    return load_model(str(tiny_model_dir), device="cpu", dtype="bf16")


def test_trained_positions_by_hand():
    """The oracle loop itself, on a hand-worked sequence: 2 text, a (2, 1, 2) block at 0.5 s per patch, 1 text."""
    pad = 9
    got = trained_positions([1, 2, pad, pad, pad, pad, 3], pad, (2, 1, 2), 1.0, 2)
    # block starts at 2; t offsets 0, 2 (1 s per temporal patch x 2 positions per second), w offsets 0, 1
    assert got.T.tolist() == [[0, 0, 0], [1, 1, 1], [2, 2, 2], [2, 2, 3], [4, 2, 2], [4, 2, 3], [5, 5, 5]]
    got = trained_positions([pad, pad, 3], pad, (2, 1, 1), 0.5, 2)  # fps 4: 0.5 s per patch -> t offsets 0, 1
    assert got.T.tolist() == [[0, 0, 0], [1, 0, 0], [2, 2, 2]]


def test_kept_keys_equal_model_keys_at_trained_positions_fp32(tiny):
    """fp32, 24 chunks with every kind of eviction: kept keys = the model's keys at the trained positions."""
    session = _session(tiny.model, tiny.tokenizer, **WINDOWS)
    grid = video_grid(tiny.model, 2, FRAME_H, FRAME_W)
    with torch.inference_mode():
        pixels = _stream(session, 24, grid)
        _assert_evictions_happened(session, 24)
        positions = expected_positions(session, grid)
        worst = _check_keys(session, pixels, positions)
    # fp32: the only differences are float rounding of k_proj at other batch shapes and of one re-rotation
    assert worst["cache_vs_fresh"] < 1e-5, worst
    assert worst["orig0_unrotated_vs_raw"] < 1e-5, worst
    assert worst["layers_vs_rerotated_orig"] < 1e-5, worst


def test_kept_keys_equal_model_keys_at_trained_positions_bf16(tiny_bf16):
    """bf16: kept keys are as close to the exact rotation as the model's own bf16 keys at those positions.

    In bf16 the model rotates a fresh key with bf16 cos/sin and rounds the product, so it is off the exact
    (fp32) rotation of the same raw key by up to E, about one bf16 ulp of the largest key (2^-8 at |k| < 1).
    A kept key went through two such roundings (the model's rotation at insertion, then our fp32
    re-rotation rounded once to bf16), so it may be off by up to 2E, never more; a wrong frequency or
    scaling puts it off by a large fraction of |k| (a RoPE base off by 10 %: 0.1 at |k| < 0.9).
    """
    model = tiny_bf16.model
    session = _session(model, tiny_bf16.tokenizer, **WINDOWS)
    grid = video_grid(model, 2, FRAME_H, FRAME_W)
    with torch.inference_mode():
        pixels = _stream(session, 24, grid)
        _assert_evictions_happened(session, 24)
        positions = expected_positions(session, grid)
        worst = _check_keys(session, pixels, positions)
    e = worst["fresh_vs_exact"]
    assert 0 < e <= 2**-7, worst  # bf16 rounding is there, and small
    assert worst["cache_vs_exact"] <= 2 * e, worst
    assert worst["orig0_unrotated_vs_raw"] <= 2 * e, worst
    # un-rotating and re-rotating in fp32 differs from one rotation by the delta by fp32 rounding, which can
    # flip the final bf16 rounding by one ulp
    assert worst["layers_vs_rerotated_orig"] <= 2**-7, worst


CHUNKS_OF_TWO_PATCHES = {
    # 4 frames per chunk = 2 temporal patches; 56x84 frames = 2x3 merged tokens: t offsets 0, 1
    "fps4_chunk1s": dict(fps=4.0, chunk_seconds=1.0, height=56, width=84),
    # 28x56 frames = 1x2 tokens: t offsets 0, 2 span 3 positions, more than max(h, w) = 2, so text after a
    # block is placed differently by transformers 5.x's rule, which advances by max(h, w) only
    "fps2_chunk2s": dict(fps=2.0, chunk_seconds=2.0, height=28, width=56),
}


@pytest.mark.parametrize("case", CHUNKS_OF_TWO_PATCHES.values(), ids=CHUNKS_OF_TWO_PATCHES.keys())
def test_positions_of_two_patch_chunks_follow_the_trained_rule(tiny, case):
    """Chunks of 2 temporal patches: after every chunk, evictions included, positions = the trained rule, and
    layer-0 keys (vision tokens included) = the model's keys there."""
    fps, seconds = case["fps"], case["chunk_seconds"]
    session = _session(tiny.model, tiny.tokenizer, fps=fps, chunk_seconds=seconds, **WINDOWS)
    n_frames = round(fps * seconds)
    grid = video_grid(tiny.model, n_frames, case["height"], case["width"])
    assert grid[0] == 2
    with torch.inference_mode():
        pixels = _stream(session, 12, grid, n_frames, case["height"], case["width"], seconds)
        _assert_evictions_happened(session, 12)
        positions = expected_positions(session, grid)
        # the temporal axis really is used: the second patch of each kept block sits past the first
        pads = session.cache.meta.ids == tiny.model.config.video_token_id
        per_block = positions[0, pads].view(-1, 2, grid[1] * grid[2])
        vcfg = tiny.model.config.vision_config
        step = int(vcfg.temporal_patch_size / fps * vcfg.tokens_per_second)
        assert torch.equal(per_block[:, 1] - per_block[:, 0], torch.full_like(per_block[:, 0], step))
        worst = _check_keys(session, pixels, positions)
    assert worst["cache_vs_fresh"] < 1e-5, worst
    assert worst["layers_vs_rerotated_orig"] < 1e-5, worst
