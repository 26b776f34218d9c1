"""Static steps: the cache's device-side decoding path, against the protocol path it replaces and on hand-made tensors.

- on hand-made tensors: a static step writes where the protocol path would, with the positions and mask it states;
  commit, abort, reserve and their errors;
- the engine decoding in static steps = the engine decoding through the protocol path (today's per-token
  ``append`` and forward, transformers' masks, growing views, the turn closed by its own forward): identical greedy
  tokens, kept ids and positions, logits within 1e-4 (fp32) over 240 chunks with every kind of eviction;
- the cache is sized once to the policy's worst case and grows, with one log line, only for a chunk beyond it;
- a decode step is replay-safe: recorded once and replayed (``TapeGraphs``, a CPU stand-in for a CUDA graph that
  re-executes the recorded operations with every host value as it was at capture) it gives bit-identical tokens
  and logits, including after the cache was reallocated; the CUDA-graph switch is off on CPU with one log line;
- one host sync per decoded token (the sampled id) and no data-dependent operation in the decode loop.
"""

from __future__ import annotations

import logging
from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from streaming_vlm.cache import SLOT_ALIGN, StreamingCache, model_rope
from streaming_vlm.engine import StreamConfig, StreamSession
from streaming_vlm.graphs import graph_backend
from streaming_vlm.layout import Kind, StreamLayout, TokenMeta
from streaming_vlm.policy import CachePolicy
from streaming_vlm.sampling import SamplingConfig
from tests.conftest import SMALL_SPEC, logits_diff, random_frames

HEADS, DIM = 2, 32
PREVIOUS = "Earlier: the home side scored twice and the crowd is loud."
WINDOWS = dict(vision_window=3, text_rounds=2, text_sink=4, text_window=6)
aten = torch.ops.aten

# ---- a CPU stand-in for CUDA graphs --------------------------------------------------------------------------

SYNCS = {aten.item.default, aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
         aten._unique2.default, aten.unique_dim.default, aten.unique_consecutive.default}


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in SYNCS:
            raise RuntimeError(f"{func} needs the host: not capturable")
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops.append((func, args, kwargs, out))
        return out


class TapeGraphs:
    """Records a step's aten operations once and replays them: tensors that existed before the capture (weights,
    the cache's buffers, the device length and position, the token buffer) are the same objects at every replay;
    tensors the step made are made again; every Python value (shape, index, scalar) is the one seen at capture.
    A step that bakes in a host value that changes between tokens replays wrongly, and one that syncs fails to
    capture, as under a CUDA graph."""

    def __init__(self):
        self.captures = 0

    def capture(self, fn, reset):
        recorder = _Recorder()
        with recorder:
            out = fn()
        reset()
        ops = recorder.ops
        self.captures += 1

        def replay():
            env: dict[int, torch.Tensor] = {}

            def fresh(x):
                return env.get(id(x), x) if isinstance(x, torch.Tensor) else x

            for func, args, kwargs, old in ops:
                new = func(*tree_map(fresh, args), **tree_map(fresh, kwargs))
                for o, n in zip(tree_flatten(old)[0], tree_flatten(new)[0], strict=True):
                    if isinstance(o, torch.Tensor):
                        env[id(o)] = n
            return tree_map(fresh, out)

        return replay


class ProtocolOnlyCache(StreamingCache):
    """The same cache driven as before static steps: the engine's protocol path (see the module doc)."""

    @property
    def static_ready(self) -> bool:
        return False


def _session(tiny, cache=None, sampling=None, **cfg):
    config = StreamConfig(sampling=sampling or SamplingConfig(temperature=0.0, max_new_tokens=3),
                          previous_text=PREVIOUS, **cfg)
    return StreamSession(tiny.model, tiny.tokenizer, config, vision_spec=SMALL_SPEC, keep_logits=True, cache=cache,
                         cuda_graphs=False)


def _frequent_token(tiny) -> int:
    """A token the tiny model often generates greedily third (made a stop token: turns of at most 3 tokens then end
    by the limit or by a stop)."""
    session = _session(tiny, **WINDOWS)
    return Counter(session.step(random_frames(100 + k), k, k + 1).token_ids[2] for k in range(6)).most_common(1)[0][0]


# ---- hand-made tensors ------------------------------------------------------------------------------------------


def _feed(cache: StreamingCache, meta: TokenMeta, keys: torch.Tensor, values: torch.Tensor, static: bool) -> None:
    """Forward ``meta``'s tokens with the given per-layer keys/values (layers, 1, H, n, D), like a model would."""
    n = len(meta)
    if static:
        with cache.static_step(n) as (position_ids, mask):
            expect_pos = torch.arange(cache.next_position + cache._static_run,
                                      cache.next_position + cache._static_run + n)
            assert torch.equal(position_ids.cpu(), expect_pos.view(1, 1, n).expand(3, 1, n))
            start = cache.num_tokens + cache._static_run
            assert mask.shape == (1, 1, n, cache.capacity) and mask.dtype == torch.bool
            for i in range(n):  # token i sees every slot up to its own
                assert mask[0, 0, i].tolist() == [j <= start + i for j in range(cache.capacity)]
            for layer in range(keys.shape[0]):
                k, v = cache.update(keys[layer], values[layer], layer)
                assert k.shape[2] == v.shape[2] == cache.capacity  # the whole buffers
        cache.count_static(n)
    else:
        cache.append(meta)
        for layer in range(keys.shape[0]):
            cache.update(keys[layer], values[layer], layer)
        cache.end_forward()


def test_static_steps_store_what_the_protocol_path_stores(tiny):
    """Text tokens forwarded in static steps (1, then 3 tokens) and committed leave the cache exactly as forwarding
    them through ``append`` does: ids, kinds, positions and every buffer slot, bit for bit."""
    layout = StreamLayout(tiny.tokenizer)
    gen = torch.Generator().manual_seed(0)
    prefix = TokenMeta.cat([layout.system(), layout.previous_text(list(range(5))),
                            layout.user_turn(0, 0, 1, (1, 2, 3)), layout.assistant_head(0)])
    text = TokenMeta.cat([TokenMeta.text([7, 8], Kind.ASSIST_TEXT, 0), layout.assistant_close(0)])
    kv = {name: torch.randn(2, 1, HEADS, len(prefix) + len(text), DIM, generator=gen) for name in "kv"}
    caches = [StreamingCache(2, model_rope(tiny.model), CachePolicy(), initial_capacity=0) for _ in range(2)]
    for cache in caches:
        cache.reserve(len(prefix) + 5)
        assert cache.capacity % SLOT_ALIGN == 0 and 0 <= cache.capacity - len(prefix) - 5 < SLOT_ALIGN
        _feed(cache, prefix, kv["k"][..., : len(prefix), :], kv["v"][..., : len(prefix), :], static=False)
    static, protocol = caches
    n = len(prefix)
    static.begin_static()
    for lo, hi in ((0, 1), (1, len(text))):  # one token, then the rest (a decode step, then a close)
        _feed(static, text.select(torch.arange(lo, hi)), kv["k"][..., n + lo : n + hi, :],
              kv["v"][..., n + lo : n + hi, :], static=True)
    assert static.num_tokens == n  # host state: only at commit
    static.commit_static(text)
    _feed(protocol, text, kv["k"][..., n:, :], kv["v"][..., n:, :], static=False)
    assert torch.equal(static.meta.ids, protocol.meta.ids) and torch.equal(static.meta.kind, protocol.meta.kind)
    assert torch.equal(static.positions, protocol.positions) and static.next_position == protocol.next_position
    assert int(static.device_length) == static.num_tokens and int(static.device_position) == static.next_position
    for a, b in zip(static.layers, protocol.layers, strict=True):
        for name in ("k", "o", "v"):
            assert torch.equal(a._bufs[name], b._bufs[name])  # every slot, the free ones included


def test_abort_reserve_and_errors(tiny):
    layout = StreamLayout(tiny.tokenizer)
    cache = StreamingCache(2, model_rope(tiny.model), CachePolicy(), initial_capacity=0)
    prefix = TokenMeta.cat([layout.system(), layout.previous_text([1, 2])])
    n = len(prefix)
    kv = torch.randn(2, 1, HEADS, n + 2, DIM)
    _feed(cache, prefix, kv[..., :n, :], kv[..., :n, :], static=False)
    assert cache.capacity == SLOT_ALIGN  # grown from nothing by the forward itself, rounded
    with pytest.raises(RuntimeError, match="begin_static"):
        with cache.static_step(1):
            pass
    cache.begin_static()
    one = TokenMeta.text([9], Kind.ASSIST_TEXT, 0)
    _feed(cache, one, kv[..., n : n + 1, :] + 1, kv[..., n : n + 1, :] + 1, static=True)
    for call in (lambda: cache.append(one), lambda: cache.apply_policy(3), lambda: cache.reserve(1000),
                 lambda: cache.begin_static(), lambda: cache.reset()):
        with pytest.raises(RuntimeError):
            call()
    with pytest.raises(RuntimeError, match="2 tokens described, 1 forwarded"):
        cache.commit_static(TokenMeta.text([9, 9], Kind.ASSIST_TEXT, 0))
    cache.abort_static()  # the static token is gone: the next run starts at the same slot
    assert cache.num_tokens == n and cache.layers[0].keys.shape[2] == n
    cache.begin_static()
    _feed(cache, one, kv[..., n : n + 1, :], kv[..., n : n + 1, :], static=True)
    cache.commit_static(one)
    assert torch.equal(cache.layers[1].values, kv[1][..., : n + 1, :])
    # growing keeps the tokens, zeroes the new slots and invalidates captured steps
    version, before = cache.buffer_version, cache.layers[0]._bufs["v"].clone()
    assert cache.reserve(SLOT_ALIGN + 1) and cache.capacity == 2 * SLOT_ALIGN and cache.buffer_version == version + 1
    grown = cache.layers[0]._bufs["v"]
    assert torch.equal(grown[:, :, :SLOT_ALIGN], before) and not grown[:, :, SLOT_ALIGN:].any()
    assert not cache.reserve(10) and cache.buffer_version == version + 1


# ---- the engine -------------------------------------------------------------------------------------------------


def test_static_decoding_equals_the_protocol_path_over_240_chunks(tiny, caplog):
    """Identical greedy tokens, kept ids and positions and logits within 1e-4 over 240 chunks (sampled ones ending
    by the limit or by a stop token, teacher-forced ones), with vision evicted, turns retired and previous text cut
    throughout; the cache is sized once, on the first chunk, and never grows."""
    stop = _frequent_token(tiny)
    static = _session(tiny, **WINDOWS)
    protocol = _session(tiny, cache=ProtocolOnlyCache.for_model(tiny.model, static.config.policy(),
                                                                initial_capacity=0), **WINDOWS)
    for s in (static, protocol):
        s.layout.stop_ids.add(stop)
    worst, ends = 0.0, Counter()
    evicted_vision = retired = cut = 0
    layout = static.layout
    with caplog.at_level(logging.INFO, logger="streaming_vlm"):
        for k in range(240):
            forced = "goal for the home side" if k % 5 == 4 else None
            before = static.cache.meta
            a = static.step(random_frames(k), k, k + 1, force_text=forced)
            b = protocol.step(random_frames(k), k, k + 1, force_text=forced)
            assert a.token_ids == b.token_ids, f"chunk {k}: tokens differ"
            for x, y in zip(a.logits, b.logits, strict=True):
                worst = max(worst, logits_diff(x, y))
            meta = static.cache.meta
            assert torch.equal(meta.ids, protocol.cache.meta.ids), f"chunk {k}: kept tokens differ"
            assert torch.equal(meta.kind, protocol.cache.meta.kind), f"chunk {k}: kinds differ"
            assert torch.equal(static.cache.positions, protocol.cache.positions), f"chunk {k}: positions differ"
            if k == 0:
                capacity = static.cache.capacity
            assert static.cache.capacity == capacity and static.cache.num_tokens <= capacity
            if forced is None:
                ends["stop" if len(a.token_ids) < 3 else "limit"] += 1
            # what the policy did before this chunk
            vision_rounds = set(before.round[before.kind == Kind.VISION].tolist())
            evicted_vision += len(vision_rounds - set(meta.round[meta.kind == Kind.VISION].tolist()))
            retired += int(k >= WINDOWS["text_rounds"] and bool((before.kind == Kind.ASSIST_TEXT).any()))
            cut += int((meta.kind == Kind.PREV_TEXT).sum()) == WINDOWS["text_sink"] + WINDOWS["text_window"]
    assert worst < 1e-4, worst
    assert ends["stop"] >= 10 and ends["limit"] >= 10, ends  # both ways to close a sampled turn
    assert evicted_vision == 240 - WINDOWS["vision_window"] and retired >= 200 and cut >= 200
    assert len(layout.encode(PREVIOUS)) > WINDOWS["text_sink"] + WINDOWS["text_window"]
    assert not [r for r in caplog.records if "grown" in r.getMessage()]


def test_a_chunk_beyond_the_worst_case_grows_the_cache_once(tiny, caplog):
    """A longer answer than the policy's worst case allows grows the buffers once, with one log line; the stream goes
    on identical to the protocol path, and the cache keeps the larger size."""
    static = _session(tiny, **WINDOWS)
    protocol = _session(tiny, cache=ProtocolOnlyCache.for_model(tiny.model, static.config.policy(),
                                                                initial_capacity=0), **WINDOWS)
    with caplog.at_level(logging.INFO, logger="streaming_vlm.engine"):
        for k in range(8):
            limit = 150 if k == 5 else None  # an answer's budget, far beyond the windows' worst case
            a = static.step(random_frames(k), k, k + 1, max_new_tokens=limit)
            b = protocol.step(random_frames(k), k, k + 1, max_new_tokens=limit)
            assert a.token_ids == b.token_ids and torch.equal(static.cache.meta.ids, protocol.cache.meta.ids)
            if k == 4:
                capacity = static.cache.capacity
    grown = [r.getMessage() for r in caplog.records if "grown" in r.getMessage()]
    assert len(grown) == 2 and all("chunk 5" in line for line in grown), grown  # one line per session
    assert static.cache.capacity > capacity


def test_decode_steps_replay_like_graphs(tiny, caplog):
    """Sampled decoding with every step recorded once per shape and replayed gives bit-identical tokens and logits;
    a reallocated cache (an answer beyond the worst case) is captured again."""
    sampling = SamplingConfig(temperature=0.9, top_k=40, top_p=0.9, max_new_tokens=4)
    eager = _session(tiny, sampling=sampling, **WINDOWS)
    graphed = _session(tiny, sampling=sampling, **WINDOWS)
    for s in (eager, graphed):
        s.layout.stop_ids.update(range(1, 300, 7))  # turns end by a stop token about half the time
    tape = graphed.graphs.backend = TapeGraphs()
    tokens = 0
    for k in range(40):
        limit = 150 if k == 30 else None
        a = eager.step(random_frames(k), k, k + 1, max_new_tokens=limit)
        b = graphed.step(random_frames(k), k, k + 1, max_new_tokens=limit)
        assert a.token_ids == b.token_ids, f"chunk {k}"
        assert all(torch.equal(x, y) for x, y in zip(a.logits, b.logits, strict=True)), f"chunk {k}"
        assert torch.equal(eager.cache.meta.ids, graphed.cache.meta.ids)
        for x, y in zip(eager.cache.layers, graphed.cache.layers, strict=True):
            assert torch.equal(x.keys, y.keys) and torch.equal(x.values, y.values)
        tokens += len(b.token_ids)
        if k == 29:
            assert tape.captures == 3  # a decode step and both closes, once each
    assert graphed.graphs.backend is tape and tape.captures == 6  # captured again after the cache grew
    assert tokens > 100


def test_cuda_graph_switch_is_off_on_cpu_with_one_line(tiny, caplog):
    with caplog.at_level(logging.INFO, logger="streaming_vlm.graphs"):
        assert graph_backend(torch.device("cpu"), None) is None and graph_backend(torch.device("cpu"), False) is None
        assert not caplog.records
        assert graph_backend(torch.device("cpu"), True) is None
        session = StreamSession(tiny.model, tiny.tokenizer, StreamConfig(), vision_spec=SMALL_SPEC, cuda_graphs=True)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all("CUDA graphs need a CUDA device" in line for line in lines)
    assert session.graphs.backend is None
    assert session.step(random_frames(0), 0, 1).new_tokens > 0  # and it decodes, eagerly


class _OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("sampling", [SamplingConfig(temperature=0.0, max_new_tokens=20),
                                      SamplingConfig(temperature=0.9, top_k=20, top_p=0.9, max_new_tokens=20)],
                         ids=["greedy", "top-k top-p"])
def test_one_host_sync_per_decoded_token(tiny, sampling):
    """Two identical chunks but for how many tokens they decode (2 and 14): the difference, i.e. the work of 12 more
    tokens, holds exactly 12 host syncs (reading each sampled id) and no data-dependent operation (``unique``,
    ``nonzero``, a full sort, ``multinomial``'s check), and creates no tensor from host data."""
    counts = []
    for n in (2, 14):
        session = _session(tiny, sampling=sampling)
        with _OpCounter() as counter:
            result = session.step(random_frames(0), 0, 1, max_new_tokens=n)
        assert result.new_tokens == n
        counts.append(counter.counts)
    extra = counts[1] - counts[0]
    assert extra[aten.item.default] + extra[aten._local_scalar_dense.default] == 12, extra
    data_dependent = {aten.nonzero.default, aten._unique2.default, aten.sort.default, aten.sort.stable,
                      aten.multinomial.default, aten.masked_select.default, aten.lift_fresh.default}
    assert not [op for op in extra if op in data_dependent], [op for op in extra if op in data_dependent]
