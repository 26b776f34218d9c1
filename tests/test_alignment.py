"""A training sample = the inference cache, while the cache really evicts.

A stream is streamed from 0 s through the engine with its commentary teacher-forced and a small policy
(vision window = text rounds = V, previous text cut to S + W tokens), long enough that vision blocks are
evicted, assistant turns retire into the previous text and the previous text is cut. After every chunk ``k``
the cache must equal the training sample of the window ``[k - V + 1, k + 1)`` that the data pipeline builds
(``data/windows.py`` then ``SampleBuilder``): same token ids, kinds, rounds and positions; layer-0 keys and
values equal to a from-scratch stock forward of the sample (the deeper layers of a streaming cache legitimately
differ: they were computed while now-evicted tokens were visible); and ``recompute`` mode, which re-prefills the
kept tokens from scratch, equal to that forward in every layer and in its next-token logits. ``refresh_every``
re-prefills every N-th chunk: equal to that forward in every layer after those chunks, and only in layer 0 between.
"""

from __future__ import annotations

import pytest
import torch
from transformers.cache_utils import DynamicCache

from streaming_vlm.data.annotations import QA, StreamRecord, Word
from streaming_vlm.data.sample import SampleBuilder, SampleConfig
from streaming_vlm.data.windows import previous_text, windows_of
from streaming_vlm.engine import StreamConfig, StreamSession
from streaming_vlm.layout import NO_ROUND, Kind
from streaming_vlm.sampling import SamplingConfig
from streaming_vlm.synthetic import write_synthetic_video
from streaming_vlm.video import VideoReader
from tests.conftest import SMALL_SPEC

V = 4  # vision window = text rounds
S, W = 6, 6  # previous text: first S and last W tokens
SECONDS = 24
CFG = SampleConfig(text_sink=S, text_window=W, min_pixels=SMALL_SPEC.min_pixels, max_pixels=SMALL_SPEC.max_pixels)
PHRASES = ["red ball! score one", "", "blue bar", "whistle! score zero", "", "black ball! score one", "yellow",
           "kick"]
QUESTION_AT = SECONDS - 1.5  # in the second-to-last chunk: never retired (a retired answer is a known residual)

STREAMS = {
    "previous text": dict(title="Cup final", previous="The home side pressed early and won three corners."),
    # ^ longer than S + W tokens: cut from the first chunk on
    "title only": dict(title="Cup final", previous=""),
    "nothing": dict(title="", previous=""),
}


def stream_record(title: str, previous: str) -> StreamRecord:
    """A whole stream from 0 s: a phrase in most seconds (words ending inside it), one word straddling a chunk
    boundary, and one question."""
    words = []
    for k in range(SECONDS):
        parts = PHRASES[k % len(PHRASES)].split()
        words += [Word(k + 0.1 + 0.2 * i, k + 0.3 + 0.2 * i, w) for i, w in enumerate(parts)]
    words.append(Word(9.8, 10.4, "late"))  # starts in second 9, ends in second 10: chunk 10
    words.sort(key=lambda w: w.end)
    return StreamRecord("clip.mp4", 0.0, float(SECONDS), previous=previous, words=words, title=title,
                        qa=[QA(QUESTION_AT, "What colour was the ball?", "Black.")], source="stream.jsonl:1")


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_synthetic_video(tmp_path_factory.mktemp("v") / "clip.mp4", SECONDS, fps=10, width=84, height=56)


def scratch_forward(model, ids: torch.Tensor, positions: torch.Tensor, pixels: torch.Tensor, grids: torch.Tensor):
    """One stock forward from an empty cache with explicit positions: (last-token logits, DynamicCache)."""
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        out = model(input_ids=ids[None], position_ids=positions[:, None], pixel_values_videos=pixels,
                    video_grid_thw=grids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return out.logits[0, -1], cache


def session(tiny, mode: str, previous: str, query: str = CFG.query, refresh_every: int = 0) -> StreamSession:
    config = StreamConfig(mode=mode, previous_text=previous, query=query, vision_window=V, text_rounds=V,
                          text_sink=S, text_window=W, refresh_every=refresh_every,
                          sampling=SamplingConfig(temperature=0, max_new_tokens=1))
    return StreamSession(tiny.model, tiny.tokenizer, config, vision_spec=SMALL_SPEC, keep_logits=True)


@pytest.mark.parametrize("initial", STREAMS.values(), ids=STREAMS.keys())
def test_sample_equals_the_evicting_cache(tiny, video, initial):
    """After every chunk from V - 1 on, the cache = the sample of the window ending there (see the module doc)."""
    stream = stream_record(**initial)
    builder = SampleBuilder(tiny.tokenizer, SMALL_SPEC, CFG)
    plans = builder.plan(stream)
    # the data pipeline: V-second windows every second, each with the previous text before it
    windows = {w.video_start: w for w, *_ in windows_of(stream, window=V, stride=1)}
    assert sorted(windows) == [float(a) for a in range(SECONDS - V + 1)]
    first_previous = previous_text(stream, [])  # the stream's initial previous text: what inference starts with
    assert windows[0.0].previous == first_previous
    streaming = session(tiny, "streaming", first_previous)
    recompute = session(tiny, "recompute", first_previous)
    layout = streaming.layout
    pixels, grids = [], []
    evicted_blocks, retired_turns, retired_tokens = 0, 0, 0
    query_ids = layout.encode(CFG.query)

    with VideoReader(video, fps=CFG.fps, chunk_seconds=CFG.chunk_seconds, duration=SECONDS) as reader:
        chunks = list(reader.chunks())
    assert len(chunks) == len(plans) == SECONDS
    for k, (chunk, plan) in enumerate(zip(chunks, plans, strict=True)):
        assert (chunk.start, chunk.end) == (plan.start, plan.end) == (k, k + 1)
        pv, grid = streaming.preprocessor(chunk.frames)
        pixels.append(pv)
        grids.append(grid)
        visible_before = set(streaming.cache.meta.round[streaming.cache.meta.kind == Kind.VISION].tolist())
        streaming.step(chunk.frames, chunk.start, chunk.end, force_text=plan.assistant_text, question=plan.question)
        last = k == SECONDS - 1
        if last:  # sample the last chunk, to compare the logits it is sampled from
            logits = recompute.step(chunk.frames, chunk.start, chunk.end, question=plan.question).logits[0]
        else:
            recompute.step(chunk.frames, chunk.start, chunk.end, force_text=plan.assistant_text,
                           question=plan.question)
        cache = streaming.cache
        meta = cache.meta
        visible = set(meta.round[meta.kind == Kind.VISION].tolist())
        evicted_blocks += len(visible_before - visible)
        if k >= V and plans[k - V].text:  # round k - V was retired before this chunk: its words are previous text
            retired_turns += 1
            retired_tokens += len(layout.encode(plans[k - V].text))
        if k < V - 1:
            continue

        a = k - V + 1
        sample = builder.build(windows[float(a)], video)
        # token ids, kinds, rounds (relative to the window) and positions
        assert torch.equal(meta.ids, sample.input_ids), f"ids differ after chunk {k}"
        assert torch.equal(meta.kind, sample.meta.kind)
        assert torch.equal(torch.where(meta.round == NO_ROUND, NO_ROUND, meta.round - a), sample.meta.round)
        assert torch.equal(cache.positions, sample.position_ids)
        if not last:
            assert torch.equal(recompute.cache.meta.ids, sample.input_ids)
            assert torch.equal(recompute.cache.positions, sample.position_ids)
        if a == 0:  # nothing retired yet: the initial previous text, cut when it is longer than S + W
            n_prev = int((sample.meta.kind == Kind.PREV_TEXT).sum())
            assert n_prev == min(len(layout.encode(first_previous)), S + W)
        # the query is in the sample exactly when the window starts the stream, as in the cache
        user = sample.input_ids[sample.meta.kind == Kind.USER].tolist()
        has_query = any(user[i : i + len(query_ids)] == query_ids for i in range(len(user)))
        assert has_query == (a == 0), f"window at {a} s: query {'present' if has_query else 'missing'}"
        # the pixels the sample trains on are the engine's, chunk for chunk
        window_pixels, window_grids = torch.cat(pixels[a:]), torch.cat(grids[a:])
        assert torch.equal(sample.video_grid_thw, window_grids)
        assert torch.equal(sample.pixel_values_videos(SMALL_SPEC), window_pixels)

        # a from-scratch stock forward of the sample: layer-0 K/V of the streaming cache, every layer of recompute
        _, ref = scratch_forward(tiny.model, sample.input_ids, sample.position_ids, window_pixels, window_grids)
        torch.testing.assert_close(cache.layers[0].keys, ref.layers[0].keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cache.layers[0].values, ref.layers[0].values, atol=1e-5, rtol=1e-5)
        if not last:
            for mine, theirs in zip(recompute.cache.layers, ref.layers, strict=True):
                torch.testing.assert_close(mine.keys, theirs.keys, atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(mine.values, theirs.values, atol=1e-5, rtol=1e-5)
        else:
            # recompute's logits for the last chunk = the sample's forward up to that chunk's assistant head
            head = int(torch.nonzero(sample.meta.kind == Kind.ASSIST_HEAD).max()) + 1
            ref_logits, _ = scratch_forward(tiny.model, sample.input_ids[:head], sample.position_ids[:, :head],
                                            window_pixels, window_grids)
            ref_logits = ref_logits.index_fill(0, torch.tensor(layout.forbidden_ids), float("-inf"))
            torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=0)

    # the stream exercised what the test is named for
    prev = meta.ids[meta.kind == Kind.PREV_TEXT].tolist()
    total_previous = len(layout.encode(first_previous)) + retired_tokens
    assert evicted_blocks == SECONDS - V
    assert retired_turns >= 10 and retired_tokens > S + W  # retired commentary itself was cut again
    assert total_previous > S + W and len(prev) == S + W  # the previous text was cut
    last_retired = next(p.text for p in reversed(plans[: SECONDS - V]) if p.text)
    tail = layout.encode(last_retired)[-W:]
    assert prev[-len(tail) :] == tail  # the previous text ends with the last retired commentary
    assert any(p.question for p in plans[SECONDS - V :])


def test_stream_start_mid_video_is_the_documented_residual(tiny, video):
    """A stream started mid-video (``infer --start``) holds the query in its round 0; the training window starting
    there has none: the only difference from the sample, by the query rule the README states."""
    a = 7.0
    stream = stream_record(title="", previous="")
    window = next(w for w, *_ in windows_of(stream, window=V, stride=1) if w.video_start == a)
    builder = SampleBuilder(tiny.tokenizer, SMALL_SPEC, CFG)
    sample = builder.build(window, video)
    streamed = {}
    for query in (CFG.query, ""):
        s = session(tiny, "streaming", window.previous, query)
        with VideoReader(video, fps=CFG.fps, chunk_seconds=CFG.chunk_seconds, start=a, duration=V) as reader:
            for chunk, plan in zip(reader.chunks(), sample.chunks, strict=True):
                s.step(chunk.frames, chunk.start, chunk.end, force_text=plan.assistant_text, question=plan.question)
        streamed[query] = s.cache.meta.ids
    assert torch.equal(streamed[""], sample.input_ids)
    query_ids = builder.layout.encode(CFG.query)
    assert len(streamed[CFG.query]) == len(sample.input_ids) + len(query_ids)


def _layers_equal(cache, ref) -> bool:
    return all(torch.allclose(mine.keys, theirs.keys, atol=1e-5, rtol=1e-5)
               and torch.allclose(mine.values, theirs.values, atol=1e-5, rtol=1e-5)
               for mine, theirs in zip(cache.layers, ref.layers, strict=True))


def test_refresh_equals_the_sample_every_nth_chunk(tiny, video):
    """``refresh_every=3``: after chunks 3, 6, 9, ... every layer of the cache equals the from-scratch forward of the
    window's sample (as ``recompute`` does every chunk); after the others the deeper layers differ from it, as the
    plain streaming cache's do after every chunk once something was evicted; both always hold the sample's tokens
    and positions, and the refreshing session keeps no frames outside its vision window."""
    n = 3
    stream = stream_record(**STREAMS["previous text"])
    builder = SampleBuilder(tiny.tokenizer, SMALL_SPEC, CFG)
    plans = builder.plan(stream)
    windows = {w.video_start: w for w, *_ in windows_of(stream, window=V, stride=1)}
    first_previous = previous_text(stream, [])
    plain, refreshing = session(tiny, "streaming", first_previous), session(tiny, "streaming", first_previous,
                                                                             refresh_every=n)
    pixels, grids = [], []
    equal_after = {True: [], False: []}  # refresh chunk? -> chunks whose deeper layers equal the sample's forward
    with VideoReader(video, fps=CFG.fps, chunk_seconds=CFG.chunk_seconds, duration=SECONDS) as reader:
        for k, (chunk, plan) in enumerate(zip(reader.chunks(), plans, strict=True)):
            pv, grid = plain.preprocessor(chunk.frames)
            pixels.append(pv)
            grids.append(grid)
            for s in (plain, refreshing):
                s.step(chunk.frames, chunk.start, chunk.end, force_text=plan.assistant_text, question=plan.question)
            assert len(refreshing._pixels) <= V
            if k < V:  # nothing evicted yet
                continue
            a = k - V + 1
            sample = builder.build(windows[float(a)], video)
            _, ref = scratch_forward(tiny.model, sample.input_ids, sample.position_ids, torch.cat(pixels[a:]),
                                     torch.cat(grids[a:]))
            for s in (plain, refreshing):
                assert torch.equal(s.cache.meta.ids, sample.input_ids)
                assert torch.equal(s.cache.positions, sample.position_ids)
                torch.testing.assert_close(s.cache.layers[0].keys, ref.layers[0].keys, atol=1e-5, rtol=1e-5)
            assert not _layers_equal(plain.cache, ref), f"plain streaming equals the sample after chunk {k}"
            equal_after[k % n == 0].append(_layers_equal(refreshing.cache, ref))
    assert len(equal_after[True]) >= 6 and all(equal_after[True])
    assert len(equal_after[False]) >= 12 and not any(equal_after[False])
