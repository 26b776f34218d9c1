"""Batched decoding (``batch.step_many``) against each session stepped alone.

Every session has a twin fed the same chunks through ``StreamSession.step``; after each chunk the batched session
must hold what its twin holds: the same tokens, kept ids, kinds, rounds and positions, the same generator state, and
logits within 1e-4 (fp32). The sessions are at different stream lengths and have different windows (so caches of
different capacities), and a forward hook shows that their decode steps really ran in one forward.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager

import pytest
import torch

from streaming_vlm.batch import step_many
from streaming_vlm.engine import StreamConfig, StreamSession
from streaming_vlm.layout import Kind
from streaming_vlm.models import load_model
from streaming_vlm.sampling import SamplingConfig
from tests.conftest import SMALL_SPEC, random_frames

PREVIOUS = "Earlier: the home side scored twice and the crowd is loud."
WINDOWS = dict(vision_window=3, text_rounds=2, text_sink=4, text_window=6)
OTHER_WINDOWS = dict(vision_window=8, text_rounds=8, text_sink=5, text_window=8)  # a larger cache, more held


def _session(tiny, sampling=None, seed=0, windows=WINDOWS, stop=(), model=None, refresh_every=0):
    config = StreamConfig(sampling=sampling or SamplingConfig(temperature=0.0, max_new_tokens=3),
                          previous_text=PREVIOUS, seed=seed, refresh_every=refresh_every, **windows)
    session = StreamSession(model or tiny.model, tiny.tokenizer, config, vision_spec=SMALL_SPEC, keep_logits=True,
                            cuda_graphs=False)
    session.layout.stop_ids.update(stop)
    return session


@contextmanager
def _forwards(tiny):
    """Records (batch size, tokens) of every language-model forward."""
    shapes: list[tuple[int, int]] = []

    def hook(module, args, kwargs):
        shapes.append(tuple(kwargs["inputs_embeds"].shape[:2]))

    handle = tiny.model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield shapes
    finally:
        handle.remove()


def _assert_same(batched: StreamSession, alone: StreamSession, a, b, what: str) -> None:
    assert a.token_ids == b.token_ids, f"{what}: tokens differ"
    assert (a.index, a.text, a.new_tokens, a.cache_tokens, a.prefill_tokens) == \
        (b.index, b.text, b.new_tokens, b.cache_tokens, b.prefill_tokens), what
    assert len(a.logits) == len(b.logits), what
    for x, y in zip(a.logits, b.logits, strict=True):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=0, msg=lambda m: f"{what}: logits differ: {m}")
    ma, mb = batched.cache.meta, alone.cache.meta
    for field in ("ids", "kind", "round", "group_start", "rel"):
        assert torch.equal(getattr(ma, field), getattr(mb, field)), f"{what}: kept {field} differ"
    assert torch.equal(batched.cache.positions, alone.cache.positions), f"{what}: positions differ"
    assert batched.cache.next_position == alone.cache.next_position, what
    assert batched.cache.capacity == alone.cache.capacity, what
    assert torch.equal(batched.generator.get_state(), alone.generator.get_state()), f"{what}: generator state"
    assert batched.round == alone.round, what


def _frequent_token(tiny) -> int:
    """A token the tiny model often generates greedily second (made a stop token: turns then end both ways)."""
    session = _session(tiny)
    return Counter(session.step(random_frames(100 + k), k, k + 1).token_ids[1] for k in range(6)).most_common(1)[0][0]


def test_greedy_batch_equals_each_session_alone(tiny):
    """Three sessions at different stream lengths (0, 4 and 9 chunks in; one with larger windows, holding more tokens
    than the others' buffers have slots: they are padded), then 12 chunks through ``step_many``: every chunk
    identical to the twin stepped alone, through every kind of eviction, turns ending by a stop token and by the
    limit, one session's cache grown mid-batch by a long answer; the decode steps ran three, two and one sessions at
    a time."""
    stop = _frequent_token(tiny)
    specs = [dict(), dict(windows=OTHER_WINDOWS), dict(sampling=SamplingConfig(temperature=0.0, max_new_tokens=4))]
    batched = [_session(tiny, stop=[stop], **spec) for spec in specs]
    alone = [_session(tiny, stop=[stop], **spec) for spec in specs]
    for i, advance in enumerate((0, 4, 9)):
        for k in range(advance):
            for s in (batched[i], alone[i]):
                s.step(random_frames(1000 * i + k), k, k + 1)
    ends, evicted_vision, retired, cut, capacities = Counter(), 0, 0, 0, set()
    with _forwards(tiny) as shapes:
        for k in range(12):
            chunks = [(random_frames(1000 * i + 50 + k), 20 + k, 21 + k) for i in range(3)]
            limits = [None, 150 if k == 7 else None, 1 if k % 4 == 1 else None]  # a long answer; a one-token limit
            before = [s.cache.meta for s in batched]
            streamed: list[list[int]] = [[], [], []]
            results = step_many(batched, chunks, max_new_tokens=limits,
                                on_token=[lst.append for lst in streamed])
            for i in range(3):
                b = alone[i].step(*chunks[i], max_new_tokens=limits[i])
                _assert_same(batched[i], alone[i], results[i], b, f"chunk {k}, session {i}")
                assert streamed[i] == results[i].token_ids
                limit = limits[i] or batched[i].config.sampling.max_new_tokens
                ends["limit" if len(b.token_ids) == limit else "stop"] += 1
                meta = batched[i].cache.meta
                vision = set(before[i].round[before[i].kind == Kind.VISION].tolist())
                evicted_vision += len(vision - set(meta.round[meta.kind == Kind.VISION].tolist()))
                retired += int(bool((before[i].kind == Kind.ASSIST_TEXT).any())
                               and not set(before[i].round[before[i].kind == Kind.ASSIST_TEXT].tolist())
                               <= set(meta.round[meta.kind == Kind.ASSIST_TEXT].tolist()))
                policy = batched[i].cache.policy
                cut += int((meta.kind == Kind.PREV_TEXT).sum()) == policy.text_sink + policy.text_window
            capacities.add(tuple(s.cache.capacity for s in batched))
    assert ends["stop"] >= 5 and ends["limit"] >= 5, ends
    assert evicted_vision >= 25 and retired >= 25 and cut >= 25, (evicted_vision, retired, cut)
    assert all(len(set(c)) > 1 for c in capacities), capacities  # ragged caches: padding and masks exercised
    assert len(capacities) > 1  # session 1 grew for its long answer
    steps = Counter(b for b, t in shapes if t == 1)
    assert steps[3] >= 5 and steps[2] >= 3, steps


def test_refreshing_sessions_batch_as_they_step_alone(tiny):
    """A session that re-prefills its kept context every 2nd or 3rd chunk (``refresh_every``) decodes in a batch with
    one that never does, chunk for chunk as its twin stepped alone; its prefills are the whole kept context on those
    chunks only."""
    specs = [dict(refresh_every=2), dict(refresh_every=3, windows=OTHER_WINDOWS), dict()]
    batched = [_session(tiny, **spec) for spec in specs]
    alone = [_session(tiny, **spec) for spec in specs]
    prefills = [[], [], []]
    for k in range(10):
        chunks = [(random_frames(700 * i + k), k, k + 1) for i in range(3)]
        results = step_many(batched, chunks)
        for i in range(3):
            _assert_same(batched[i], alone[i], results[i], alone[i].step(*chunks[i]), f"chunk {k}, session {i}")
            prefills[i].append(results[i].prefill_tokens)
    plain = max(prefills[2][1:])  # after the first chunk (system prompt and previous text)
    for i, n in ((0, 2), (1, 3)):  # refresh chunks re-prefill more than any plain chunk
        assert all((p > plain) == (k % n == 0) for k, p in enumerate(prefills[i]) if k), prefills[i]


def test_sampled_batch_equals_each_session_alone(tiny):
    """Temperature 0.9, top-k and top-p, each session seeded differently: the same tokens, logits and generator
    state as the session alone, chunk after chunk, turns ending by stop tokens about half the time."""
    sampling = SamplingConfig(temperature=0.9, top_k=40, top_p=0.9, max_new_tokens=5)
    stops = range(1, 300, 7)
    batched = [_session(tiny, sampling, seed=s, stop=stops) for s in (1, 2, 3, 4)]
    alone = [_session(tiny, sampling, seed=s, stop=stops) for s in (1, 2, 3, 4)]
    for k in range(2):  # the last two sessions are older
        for s in batched[2:] + alone[2:]:
            s.step(random_frames(500 + k), k, k + 1)
    tokens = 0
    with _forwards(tiny) as shapes:
        for k in range(8):
            chunks = [(random_frames(10 * i + k), 5 + k, 6 + k) for i in range(4)]
            results = step_many(batched, chunks)
            for i, a in enumerate(results):
                _assert_same(batched[i], alone[i], a, alone[i].step(*chunks[i]), f"chunk {k}, session {i}")
                tokens += len(a.token_ids)
    assert tokens > 40
    assert max(b for b, _ in shapes) == 4


def test_sessions_stopping_differently_each_close_their_turn(tiny):
    """One session stops at once (its first token is a stop token: an empty turn, closed by 2 tokens), one is cut by
    a two-token limit and one by a five-token limit (each last token forwarded with the close: 3 tokens): each cache
    ends as its twin's, the turns closed by one forward per closing length, and the next chunk still matches."""
    probe = _session(tiny)
    first = probe.step(random_frames(7), 0, 1).token_ids[0]
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=5)
    make = [lambda: _session(tiny, sampling, stop=[first]), lambda: _session(tiny, sampling),
            lambda: _session(tiny, sampling)]
    batched, alone = [f() for f in make], [f() for f in make]
    frames = [random_frames(7), random_frames(8), random_frames(9)]
    limits = [None, 2, None]
    with _forwards(tiny) as shapes:
        results = step_many(batched, [(f, 0, 1) for f in frames], max_new_tokens=limits)
    expected = [alone[i].step(frames[i], 0, 1, max_new_tokens=limits[i]) for i in range(3)]
    assert [len(r.token_ids) for r in results] == [0, 2, 5]
    for i in range(3):
        _assert_same(batched[i], alone[i], results[i], expected[i], f"session {i}")
        meta = batched[i].cache.meta
        close = batched[i].layout.assistant_close(0)
        assert torch.equal(meta.ids[-len(close) :], close.ids)
        assert bool((meta.kind[-len(close) :] == Kind.ASSIST_END).all())
    prefills = [shape for shape in shapes if shape[1] > 3]
    assert len(prefills) == 3 and all(b == 1 for b, _ in prefills)
    # sessions 1 and 2 decode together, then 2 alone; 0 closes alone with 2 tokens, 1 and 2 together with 3
    assert shapes[3:] == [(2, 1), (1, 1), (1, 1), (1, 1), (1, 2), (2, 3)], shapes
    chunks = [(random_frames(20 + i), 1, 2) for i in range(3)]
    for i, a in enumerate(step_many(batched, chunks)):
        _assert_same(batched[i], alone[i], a, alone[i].step(*chunks[i]), f"next chunk, session {i}")


def test_bad_input_is_refused_before_any_work(tiny, tiny_model_dir):
    other = load_model(str(tiny_model_dir), device="cpu", dtype="fp32")
    a, b = _session(tiny), _session(tiny)
    foreign = _session(tiny, model=other.model)
    chunk = (random_frames(0), 0, 1)
    with pytest.raises(ValueError, match="share one model"):
        step_many([a, foreign], [chunk, chunk])
    with pytest.raises(ValueError, match="1 chunks for 2 sessions"):
        step_many([a, b], [chunk])
    with pytest.raises(ValueError, match="questions must give one value per session"):
        step_many([a, b], [chunk, chunk], questions=["why?"])
    with pytest.raises(ValueError, match="more than once"):
        step_many([a, a], [chunk, chunk])
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        step_many([a, b], [chunk, chunk], max_new_tokens=[3, 0])
    assert a.round == b.round == foreign.round == 0 and a.cache.num_tokens == 0  # nothing ran
    assert step_many([], []) == []
