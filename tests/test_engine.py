"""The engine against references: stock transformers when nothing is evicted, a naive cache when evicting."""

from __future__ import annotations

import pytest
import torch

from streaming_vlm.engine import StreamConfig, StreamSession
from streaming_vlm.layout import Kind, TokenMeta
from streaming_vlm.positions import assign_positions
from streaming_vlm.sampling import SamplingConfig
from tests.conftest import SMALL_SPEC, logits_diff, random_frames
from tests.reference import ReferenceCache, reference_positions

GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=4, repetition_penalty=1.05)
PREVIOUS = "Earlier: the home side scored twice and the crowd is loud."


def _session(tiny, keep_logits=False, cache=None, **cfg):
    config = StreamConfig(sampling=cfg.pop("sampling", GREEDY), previous_text=cfg.pop("previous_text", PREVIOUS), **cfg)
    return StreamSession(tiny.model, tiny.tokenizer, config, vision_spec=SMALL_SPEC, keep_logits=keep_logits,
                         cache=cache)


def _forced(k: int) -> str | None:
    """A mix of sampled chunks and teacher-forced ones (including empty commentary)."""
    return {0: None, 1: "goal for the home side", 2: ""}[k % 3] if k % 4 else None


def test_full_mode_equals_stock_forward(tiny):
    """Nothing evicted: per-chunk logits equal one stock forward over the whole sequence with stock positions."""
    session = _session(tiny, keep_logits=True, mode="full")
    pixels, grids, logits = [], [], []
    for k in range(8):
        frames = random_frames(k)
        pv, grid = session.preprocessor(frames)
        pixels.append(pv)
        grids.append(grid)
        logits.append(session.step(frames, k, k + 1).logits)
    meta = session.cache.meta
    ids = meta.ids.unsqueeze(0)
    model = tiny.model
    video_pad = model.config.video_token_id
    mm_types = (ids == video_pad).long() * 2
    stock_pos, _ = model.model.get_rope_index(ids, mm_types, video_grid_thw=torch.cat(grids))
    assert torch.equal(stock_pos[:, 0], session.cache.positions), "our positions differ from stock get_rope_index"
    with torch.inference_mode():
        stock = model(input_ids=ids, pixel_values_videos=torch.cat(pixels), video_grid_thw=torch.cat(grids),
                      mm_token_type_ids=mm_types).logits[0]
    heads = torch.nonzero(meta.kind == Kind.ASSIST_HEAD).flatten()
    stock = stock.index_fill(1, torch.tensor(session.layout.forbidden_ids), float("-inf"))  # never sampled
    compared = 0
    for k in range(8):
        last_head = int(heads[meta.round[heads] == k].max())
        for i, row in enumerate(logits[k]):
            torch.testing.assert_close(row, stock[last_head + i], atol=1e-4, rtol=0)
            compared += 1
    assert compared >= 8 * 2


POLICIES = {
    "vision_window>text_rounds": dict(vision_window=3, text_rounds=2, text_sink=5, text_window=7),
    "vision_window<text_rounds": dict(vision_window=2, text_rounds=4, text_sink=3, text_window=9),
}


@pytest.mark.parametrize("policy", POLICIES.values(), ids=POLICIES.keys())
def test_streaming_equals_naive_reference(tiny, policy):
    """With every eviction kind happening, the engine matches a cache that re-rotates everything per forward."""
    engine = _session(tiny, keep_logits=True, **policy)
    time_interval = engine.layout.time_interval
    ref_cache = ReferenceCache(tiny.model, engine.config.policy(), time_interval)
    ref = _session(tiny, keep_logits=True, cache=ref_cache, **policy)
    worst = 0.0
    for k in range(64):
        frames = random_frames(100 + k)
        a = engine.step(frames, k, k + 1, force_text=_forced(k))
        b = ref.step(frames, k, k + 1, force_text=_forced(k))
        assert a.token_ids == b.token_ids, f"chunk {k}: generated tokens differ"
        for x, y in zip(a.logits, b.logits, strict=True):
            worst = max(worst, logits_diff(x, y))
        assert torch.equal(engine.cache.meta.ids, ref_cache.meta.ids), f"chunk {k}: kept tokens differ"
        assert torch.equal(engine.cache.positions, ref_cache.positions), f"chunk {k}: positions differ"
    assert worst < 1e-4, worst
    # every eviction kind happened: retired commentary in previous text, cut previous text, dropped vision
    meta = engine.cache.meta
    prev = int((meta.kind == Kind.PREV_TEXT).sum())
    assert prev == policy["text_sink"] + policy["text_window"]
    assert int((meta.ids == tiny.model.config.vision_start_token_id).sum()) == policy["vision_window"]
    assert meta.round[meta.kind == Kind.ASSIST_HEAD].unique().numel() == policy["text_rounds"]


def test_positions_contiguous_after_every_eviction(tiny):
    session = _session(tiny, vision_window=2, text_rounds=3, text_sink=2, text_window=4)
    for k in range(30):
        session.step(random_frames(k), k, k + 1, force_text="a pass" if k % 2 else "")
        cache = session.cache
        meta = cache.meta
        fresh, nxt = assign_positions(meta.group_start, meta.rel, 0)
        assert torch.equal(cache.positions, fresh)
        assert nxt == cache.next_position
        # gap-free: every group starts right after the previous group's maximum position
        starts = torch.nonzero(meta.group_start).flatten()
        ends = torch.cat([starts[1:], torch.tensor([len(meta)])])
        prev_max = -1
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            assert int(cache.positions[:, s].min()) == prev_max + 1
            prev_max = int(cache.positions[:, s:e].max())


def test_recompute_keeps_the_streaming_tokens(tiny):
    """The recompute baseline holds the same tokens and positions as streaming, rebuilt without KV reuse."""
    policy = POLICIES["vision_window>text_rounds"]
    stream = _session(tiny, **policy)
    recompute = _session(tiny, mode="recompute", **policy)
    for k in range(12):
        frames = random_frames(k)
        a = stream.step(frames, k, k + 1, force_text="shot on target" if k % 2 else "")
        b = recompute.step(frames, k, k + 1, force_text="shot on target" if k % 2 else "")
        assert torch.equal(stream.cache.meta.ids, recompute.cache.meta.ids)
        assert torch.equal(stream.cache.positions, recompute.cache.positions)
        assert b.prefill_tokens > a.prefill_tokens or k == 0  # the whole kept window is prefilled again


def test_sliding_mode_restarts_the_context(tiny):
    session = _session(tiny, mode="sliding", reset_every=5)
    sizes = [session.step(random_frames(k), k, k + 1, force_text="pass").cache_tokens for k in range(12)]
    # the context restarts at 5 s and 10 s (the later Time= texts are a few tokens longer)
    assert sizes[5] < sizes[4] and sizes[10] < sizes[9]
    assert abs(sizes[5] - sizes[0]) <= 4 and abs(sizes[10] - sizes[0]) <= 4
    assert sizes[4] > 2 * sizes[0]


def test_full_mode_grows_and_streaming_is_bounded(tiny):
    full = _session(tiny, mode="full")
    stream = _session(tiny, vision_window=4, text_rounds=4, text_sink=8, text_window=8)
    full_sizes, stream_sizes = [], []
    for k in range(40):
        frames = random_frames(k)
        full_sizes.append(full.step(frames, k, k + 1, force_text="the keeper saves").cache_tokens)
        stream_sizes.append(stream.step(frames, k, k + 1, force_text="the keeper saves").cache_tokens)
    assert full_sizes[-1] > 3 * full_sizes[9]
    assert len(set(stream_sizes[-20:])) == 1


def test_long_stream_stays_bounded(tiny):
    """1,000+ chunks: the cache never exceeds the policy's worst case; positions stay contiguous and bounded;
    at most one re-rotation pass per chunk, and none per decoded token."""
    V, T, S, W, max_new = 4, 3, 6, 10, 3
    session = _session(tiny, vision_window=V, text_rounds=T, text_sink=S, text_window=W,
                       sampling=SamplingConfig(temperature=0.0, max_new_tokens=max_new))
    frames = random_frames(0)
    grid = (1, 2, 3)
    layout = session.layout
    longest_turn = max(len(layout.user_turn(k, k, k + 1, grid)) for k in (999, 1049))
    fixed = len(layout.system()) + len(layout.previous_text([])) + S + W
    round_max = longest_turn + len(layout.assistant_head(0)) + max_new + len(layout.marker) + 2
    bound = fixed + max(V, T) * round_max + len(layout.encode(session.config.query))
    # count the cache's rotation work: passes (cache.rerotations) and calls of its rotary function, read
    # after each chunk and at the start of every forward inside a chunk (prefill, each decoded token, close)
    cache = session.cache
    rope, rope_calls = cache.rope, [0]

    def counting_rope(positions):
        rope_calls[0] += 1
        return rope(positions)

    cache.rope = counting_rope
    seen: list[tuple[int, int]] = []
    hook = tiny.model.model.language_model.register_forward_pre_hook(
        lambda module, args: seen.append((cache.rerotations, rope_calls[0]))
    )
    sizes, spans = [], []
    before, decoded = (0, 0), 0
    try:
        for k in range(1050):
            seen.clear()
            sizes.append(session.step(frames, k, k + 1, force_text=("corner" if k % 3 else None)).cache_tokens)
            spans.append(session.cache.next_position)
            after = (cache.rerotations, rope_calls[0])
            # at most one re-rotation pass per chunk, all of it before the chunk's prefill: none while
            # prefilling, decoding (zero per decoded token) or closing the turn
            assert after[0] - before[0] <= 1 and after[1] - before[1] <= 1, (k, before, after)
            assert seen and all(s == after for s in seen), (k, seen, after)
            decoded += len(seen) - 2  # forwards between the prefill and the closing forward
            before = after
    finally:
        hook.remove()
    assert max(sizes) <= bound, (max(sizes), bound)
    assert max(sizes[100:]) - min(sizes[100:]) <= T * (max_new + len(layout.marker)) + 4  # flat, no trend
    assert max(spans) <= bound
    assert decoded >= 350, decoded  # decoding really happened, and did no rotation work
    assert cache.rerotations == rope_calls[0] >= 1000, (cache.rerotations, rope_calls[0])  # the bound is tight


def test_reference_positions_agree_with_rule(tiny):
    """Sanity check of the naive position loop itself against the vectorised rule on a real layout."""
    session = _session(tiny)
    session.step(random_frames(0), 0, 1, force_text="kick-off")
    meta = session.cache.meta
    ref = ReferenceCache(tiny.model, session.config.policy(), session.layout.time_interval)
    ref.append(meta)
    ref.end_forward()
    assert torch.equal(ref.positions, session.cache.positions)
    assert reference_positions(ref.tokens, 2.0)[-1] == tuple(session.cache.positions[:, -1].tolist())


def test_failed_forward_surfaces_its_error_and_leaves_the_cache_as_before(tiny, monkeypatch):
    session = _session(tiny)
    session.step(random_frames(0), 0, 1, force_text="kick-off")
    cache = session.cache
    ids, pos, nxt = cache.meta.ids.clone(), cache.positions.clone(), cache.next_position
    lengths = [layer.get_seq_length() for layer in cache.layers]

    def boom(*args, **kwargs):
        raise RuntimeError("boom in layer 1")

    # layer 0 stores the new tokens, layer 1 fails: the cache must drop the half-stored forward
    monkeypatch.setattr(tiny.model.model.language_model.layers[1], "forward", boom)
    with pytest.raises(RuntimeError, match="boom in layer 1"):
        session.step(random_frames(1), 1, 2)
    monkeypatch.undo()
    assert torch.equal(cache.meta.ids, ids) and torch.equal(cache.positions, pos)
    assert cache.next_position == nxt and [layer.get_seq_length() for layer in cache.layers] == lengths
    session.step(random_frames(1), 1, 2, force_text="the stream goes on")  # and the session is still usable
    assert session.round == 2


def test_choose_scores_whole_options_like_a_stock_forward(tiny):
    """Options are scored as sequences (so "1" and "10" differ), scoring leaves no trace, the answer closes the turn."""
    session = _session(tiny, mode="full")
    twin = _session(tiny, mode="full")
    pixels, grids = [], []
    for k in range(3):
        frames = random_frames(k)
        pv, grid = session.preprocessor(frames)
        pixels.append(pv)
        grids.append(grid)
        session.step(frames, k, k + 1, force_text="a pass")
        twin.step(frames, k, k + 1, force_text="a pass")
    frames = random_frames(3)
    pv, grid = session.preprocessor(frames)
    pixels.append(pv)
    grids.append(grid)
    options = ["1", "10", "red ball"]
    result = session.choose(frames, 3, 4, "How many goals?", options)
    twin.step(frames, 3, 4, force_text=options[result.index] + "\n", question="How many goals?")
    assert torch.equal(session.cache.meta.ids, twin.cache.meta.ids)  # scoring forwards were rolled back
    assert torch.equal(session.cache.positions, twin.cache.positions)

    meta = session.cache.meta
    head_end = int(torch.nonzero((meta.kind == Kind.ASSIST_HEAD) & (meta.round == 3)).max())
    context = meta.ids[: head_end + 1]
    model = tiny.model
    for option, score in zip(options, result.logprobs, strict=True):
        ids = torch.tensor(session.layout.encode(option + "\n"))
        seq = torch.cat([context, ids]).unsqueeze(0)
        mm = (seq == model.config.video_token_id).long() * 2
        with torch.inference_mode():
            logits = model(input_ids=seq, pixel_values_videos=torch.cat(pixels), video_grid_thw=torch.cat(grids),
                           mm_token_type_ids=mm).logits[0].float()
        lp = torch.log_softmax(logits[len(context) - 1 : -1], dim=-1).gather(1, ids[:, None]).sum()
        assert abs(float(lp) - score) < 1e-4, (option, float(lp), score)
    assert result.index == max(range(3), key=result.logprobs.__getitem__)
    assert len(set(result.logprobs)) == 3  # "1" and "10" are told apart


def test_score_keeps_the_prefix_and_rolls_back_each_continuation(tiny):
    """``score``: a continuation's score is the sum of its tokens' log-probabilities (the first from the prefix's last
    logits), scoring one leaves no trace for the next, and the cache ends holding the stream plus the prefix."""
    def fresh():
        session = _session(tiny, mode="full")
        session.step(random_frames(0), 0, 1, force_text="a pass")
        return session

    session = fresh()
    before = session.cache.meta.ids.clone()
    prefix = TokenMeta.text(session.layout.encode("Who scored? "), Kind.USER, 1)
    a, b = session.layout.encode(" the home side")[:2]
    both, first = session.score(prefix, [[a, b], [a]])
    assert torch.equal(session.cache.meta.ids, torch.cat([before, prefix.ids]))  # continuations rolled back
    (alone,) = fresh().score(prefix, [[a]])
    (then_b,) = fresh().score(TokenMeta.cat([prefix, TokenMeta.text([a], Kind.ASSIST_TEXT, 1)]), [[b]])
    assert first == pytest.approx(alone, abs=1e-5) and both == pytest.approx(alone + then_b, abs=1e-4)
    for bad in ((prefix, []), (prefix, [[a], []]), (TokenMeta.empty(), [[a]])):
        with pytest.raises(ValueError, match="score"):
            fresh().score(*bad)
