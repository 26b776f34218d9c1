"""The cache alone, on hand-made tensors: what is kept, in which order, bounds, drift, errors."""

from __future__ import annotations

import pytest
import torch
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLRotaryEmbedding

from streaming_vlm.cache import StreamingCache, model_rope, rotate
from streaming_vlm.layout import NO_ROUND, Kind, StreamLayout, TokenMeta
from streaming_vlm.policy import CachePolicy

HEADS, DIM = 2, 32


@pytest.fixture(scope="module")
def layout(tiny):
    return StreamLayout(tiny.tokenizer)


def make_rope(tiny, dtype):
    """cos/sin as the model computes them for its attention, in its compute dtype."""
    rotary = Qwen2_5_VLRotaryEmbedding(tiny.model.config.text_config)
    probe = torch.empty(0, dtype=dtype)
    return lambda pos: rotary(probe, pos)


def new_cache(tiny, policy, **kwargs):
    return StreamingCache(2, model_rope(tiny.model), policy, **kwargs)


class Feeder:
    """Feeds a cache like a model would: random raw keys, rotated with the model's formula, per layer."""

    def __init__(self, cache: StreamingCache, rope, dtype, layers=2, seed=0):
        self.cache, self.rope, self.dtype, self.layers = cache, rope, dtype, layers
        self.gen = torch.Generator().manual_seed(seed)
        self.raw: dict[int, torch.Tensor] = {}  # uid -> raw keys (layers, H, D)
        self.fed: dict[int, torch.Tensor] = {}  # uid -> keys as the "model" rotated them at insertion
        self.values: dict[int, torch.Tensor] = {}
        self.uid = 0
        self.history: list[tuple[int, int, int]] = []  # (uid, kind, round) of everything fed

    def feed(self, meta: TokenMeta):
        n = len(meta)
        self.history += [(self.uid + j, int(meta.kind[j]), int(meta.round[j])) for j in range(n)]
        meta = TokenMeta(torch.arange(self.uid, self.uid + n), meta.kind, meta.round, meta.group_start, meta.rel)
        pos = self.cache.append(meta)
        cos, sin = self.rope(pos)
        raw = torch.randn(self.layers, 1, HEADS, n, DIM, generator=self.gen).to(self.dtype)
        val = torch.randn(self.layers, 1, HEADS, n, DIM, generator=self.gen).to(self.dtype)
        rotated = torch.stack([rotate(raw[i], cos, sin) for i in range(self.layers)])  # the model's formula
        for i in range(self.layers):
            self.cache.update(rotated[i], val[i], i)
        self.cache.end_forward()
        for j in range(n):
            self.raw[self.uid + j] = raw[:, 0, :, j]
            self.fed[self.uid + j] = rotated[:, 0, :, j]
            self.values[self.uid + j] = val[:, 0, :, j]
        self.uid += n


def feed_chunk(feeder: Feeder, layout: StreamLayout, r: int, words: int, grid=(1, 2, 3)):
    if r == 0:
        feeder.feed(TokenMeta.cat([layout.system(), layout.previous_text(list(range(40)))]))
    feeder.cache.apply_policy(r)
    feeder.feed(TokenMeta.cat([layout.user_turn(r, r, r + 1, grid), layout.assistant_head(r)]))
    content = TokenMeta.cat([TokenMeta.text([5] * words, Kind.ASSIST_TEXT, r), TokenMeta.text(layout.marker,
                             Kind.ASSIST_END, r), layout.assistant_close(r)])
    feeder.feed(content)


def test_hand_checked_eviction_order(tiny, layout):
    """V=2, T=1, S=2, W=3: after chunk 3 the layout is exactly what the policy describes."""
    policy = CachePolicy(vision_window=2, text_rounds=1, text_sink=2, text_window=3)
    cache = new_cache(tiny, policy)
    feeder = Feeder(cache, make_rope(tiny, torch.float32), torch.float32)
    for r in range(4):
        feed_chunk(feeder, layout, r, words=r + 1)  # round r says r+1 words
    cache.apply_policy(4)
    meta = cache.meta
    # previous text was fed uncut (40 tokens); rounds 0..3 retired 1+2+3+4 words into it. Kept: the first two
    # original tokens (the sink) and the last three retired words, which are round 3's
    prev_uids = meta.ids[meta.kind == Kind.PREV_TEXT]
    first_prev = int(torch.nonzero(meta.kind == Kind.PREV_TEXT)[0])
    assert prev_uids[:2].tolist() == [first_prev, first_prev + 1]  # the sink: the first two content tokens
    round3_words = [u for u, k, rd in feeder.history if k == Kind.ASSIST_TEXT and rd == 3]
    assert prev_uids[2:].tolist() == round3_words[-3:]
    # vision of rounds 3 only (now=4, V=2 keeps rounds 3, 4): one block; no assistant turn left; user markup of 3
    assert set(meta.round[meta.kind == Kind.VISION].tolist()) == {3}
    assert not bool((meta.kind == Kind.ASSIST_HEAD).any()) and not bool((meta.kind == Kind.TIME).any())
    assert set(meta.round[meta.kind == Kind.USER].tolist()) == {3}
    # order: system, prev head, prev text, prev end, then round 3's user turn
    kinds = meta.kind.tolist()
    assert kinds[: kinds.index(Kind.PREV_END) + 1] == sorted(kinds[: kinds.index(Kind.PREV_END) + 1])


def test_kept_values_bit_exact_and_keys_follow_positions(tiny, layout):
    policy = CachePolicy(vision_window=3, text_rounds=2, text_sink=4, text_window=5)
    rope = make_rope(tiny, torch.float32)
    cache = new_cache(tiny, policy, initial_capacity=8)  # forces buffer growth too
    feeder = Feeder(cache, rope, torch.float32)
    for r in range(25):
        feed_chunk(feeder, layout, r, words=r % 4)
    uids = cache.meta.ids
    cos, sin = rope(cache.positions.unsqueeze(1))
    for i, layer in enumerate(cache.layers):
        values = torch.stack([feeder.values[int(u)][i] for u in uids], dim=1).unsqueeze(0)
        assert torch.equal(layer.values, values)  # values are never modified, only moved
        fed = torch.stack([feeder.fed[int(u)][i] for u in uids], dim=1).unsqueeze(0)
        assert torch.equal(layer.orig_keys, fed)  # the model's keys are kept as computed
        raw = torch.stack([feeder.raw[int(u)][i] for u in uids], dim=1).unsqueeze(0)
        torch.testing.assert_close(layer.keys, rotate(raw, cos, sin), atol=2e-5, rtol=0)


def test_no_drift_after_2000_evictions_bf16(tiny, layout):
    """Every kept key stays one rotation away from its raw key, however many evictions it survived.

    A key rotated once, from scratch, in bf16 is off the exact rotation by some error; ours is the model's own
    rotation plus one fp32 rotation by the position delta and one final rounding, so its error is of the same
    size (mean within 1.5x, max within 2x) and must not grow with the number of evictions. Commentary is
    sparse, so text-window tokens survive 100+ moves; a naive cache that re-rotates its stored bf16 keys by
    each delta runs alongside to show the test catches drift.
    """
    policy = CachePolicy(vision_window=4, text_rounds=3, text_sink=6, text_window=12)
    rope = make_rope(tiny, torch.bfloat16)
    cache = new_cache(tiny, policy)
    feeder = Feeder(cache, rope, torch.bfloat16)
    naive: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # uid -> (layer-0 key as a naive cache holds it, pos)

    def step_naive():
        uids, pos = cache.meta.ids, cache.positions
        known = [j for j, u in enumerate(uids.tolist()) if u in naive]
        new = [j for j, u in enumerate(uids.tolist()) if u not in naive]
        if new:  # first seen: the key as the model rotated it
            idx = torch.tensor(new)
            for j in new:
                naive[int(uids[j])] = (cache.layers[0].keys[0, :, j].clone(), pos[:, j].clone())
        moved = [j for j in known if not torch.equal(naive[int(uids[j])][1], pos[:, j])]
        if moved:
            idx = torch.tensor(moved)
            old_k = torch.stack([naive[int(uids[j])][0] for j in moved], dim=1).unsqueeze(0)
            old_p = torch.stack([naive[int(uids[j])][1] for j in moved], dim=1)
            c, s = rope((pos[:, idx] - old_p).unsqueeze(1))
            k = rotate(old_k, c, s)  # re-rotate the stored bf16 key by the position delta, in bf16
            for n, j in enumerate(moved):
                naive[int(uids[j])] = (k[0, :, n], pos[:, j].clone())

    def errors():
        uids = cache.meta.ids
        cos, sin = rope(cache.positions.unsqueeze(1))
        raw = torch.stack([feeder.raw[int(u)][0] for u in uids], dim=1).unsqueeze(0)
        exact = rotate(raw.double(), cos.double(), sin.double())
        once = rotate(raw, cos, sin)  # rotated once, from scratch, at the current positions, in bf16
        naive_keys = torch.stack([naive[int(u)][0] for u in uids], dim=1).unsqueeze(0)
        errs = [(k.double() - exact).abs() for k in (cache.layers[0].keys, once, naive_keys)]
        return [float(e.max()) for e in errs], [float(e.mean()) for e in errs]

    history = []
    for r in range(2100):
        feed_chunk(feeder, layout, r, words=int(r % 10 == 0))
        step_naive()
        if r in (100, 2099):
            history.append(errors())
    ((ours_e, once_e, _), (ours_em, once_em, _)), ((ours, once, naive), (ours_m, once_m, _)) = history
    assert cache.rerotations >= 2000
    assert ours <= 2 * once and ours_m <= 1.5 * once_m, (ours, once, ours_m, once_m)
    assert ours_e <= 2 * once_e and ours <= 2 * once_e  # the same bound at chunk 100 and at chunk 2100
    assert ours_m <= 1.1 * ours_em  # no growth of the mean error either
    assert naive > 2 * ours, (naive, ours)  # incremental re-rotation drifts; ours does not


def test_rotation_by_delta_composes_exactly(tiny):
    """Rotating a key at p by (q - p) equals rotating it at q: the identity re-rotation relies on."""
    rope32 = model_rope(tiny.model)
    p = torch.randint(0, 5000, (3, 1, 17))
    q = torch.randint(0, 5000, (3, 1, 17))
    x = torch.randn(1, HEADS, 17, DIM, dtype=torch.float64)
    (cp, sp), (cq, sq), (cd, sd) = (tuple(t.double() for t in rope32(v)) for v in (p, q, q - p))
    # fp32 angles (position * inv_freq, as the model computes them) limit the agreement at positions ~5000
    torch.testing.assert_close(rotate(rotate(x, cp, sp), cd, sd), rotate(x, cq, sq), atol=1e-3, rtol=0)


def test_policy_unlimited_never_changes(tiny, layout):
    rope = make_rope(tiny, torch.float32)
    cache = new_cache(tiny, CachePolicy.unlimited())
    feeder = Feeder(cache, rope, torch.float32)
    sizes = []
    for r in range(10):
        feed_chunk(feeder, layout, r, words=2)
        sizes.append(cache.num_tokens)
    assert sizes == sorted(sizes) and len(set(sizes)) == 10
    assert torch.equal(cache.meta.ids, torch.arange(feeder.uid))
    assert cache.rerotations == 0


def test_reset_and_protocol_errors(tiny, layout):
    rope = make_rope(tiny, torch.float32)
    cache = new_cache(tiny, CachePolicy())
    feeder = Feeder(cache, rope, torch.float32)
    feed_chunk(feeder, layout, 0, words=3)
    assert cache.num_tokens > 0
    cache.reset()
    assert cache.num_tokens == 0 and cache.get_seq_length() == 0 and cache.next_position == 0
    with pytest.raises(RuntimeError, match="append"):
        cache.update(torch.zeros(1, HEADS, 3, DIM), torch.zeros(1, HEADS, 3, DIM), 0)
    cache.append(TokenMeta.text([1, 2], Kind.USER, 0))
    with pytest.raises(RuntimeError, match="twice"):
        cache.append(TokenMeta.text([1], Kind.USER, 0))
    with pytest.raises(RuntimeError, match="exactly"):
        cache.update(torch.zeros(1, HEADS, 3, DIM), torch.zeros(1, HEADS, 3, DIM), 0)
    with pytest.raises(ValueError, match="previous-text"):
        CachePolicy().plan(TokenMeta.text([1, 2, 3], Kind.USER, 0), now=20)
    with pytest.raises(ValueError):
        CachePolicy(vision_window=0)
    assert NO_ROUND == -1


def test_keep_previous_exact_counts():
    p = CachePolicy(text_sink=3, text_window=4)
    assert p.keep_previous(5).tolist() == [0, 1, 2, 3, 4]
    assert p.keep_previous(7).tolist() == list(range(7))
    assert p.keep_previous(10).tolist() == [0, 1, 2, 6, 7, 8, 9]
    assert CachePolicy(text_sink=None, text_window=None).keep_previous(10000).numel() == 10000
