"""Training samples: labels, word assignment, the query rule, pixel budgets (the alignment with the inference
cache, evicting, is tests/test_alignment.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from streaming_vlm.data.annotations import QA, AnnotationError, StreamRecord, Word
from streaming_vlm.data.sample import IGNORE_INDEX, SampleBuilder, SampleConfig
from streaming_vlm.layout import Kind
from streaming_vlm.settings import DEFAULTS, SETTING_NAMES, SettingsError, StreamSettings
from streaming_vlm.synthetic import write_synthetic_video
from tests.conftest import SMALL_SPEC

PREVIOUS = "The match opened with a long spell of passing in midfield before the first real chance came. " * 3
CFG = SampleConfig(text_sink=6, text_window=8, min_pixels=SMALL_SPEC.min_pixels, max_pixels=SMALL_SPEC.max_pixels)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_synthetic_video(tmp_path_factory.mktemp("v") / "clip.mp4", 40, fps=10, width=84, height=56)


def record(a: float, w: float) -> StreamRecord:
    words = [
        Word(a - 3.0, a - 2.5, "before"),  # ends before the window: previous text, not a chunk
        Word(a + 0.1, a + 0.4, "red"),
        Word(a + 0.5, a + 1.0, "ball"),  # ends exactly at the end of chunk 0: chunk 0
        Word(a + 2.2, a + 2.7, "enters"),
        Word(a + 2.8, a + 3.3, "left"),
        Word(a + 6.0, a + 6.9, "score"),
        Word(a + 7.1, a + 7.6, "two"),
        Word(a + w - 0.5, a + w + 0.2, "after"),  # ends after the window: dropped
    ]
    return StreamRecord("clip.mp4", a, a + w, previous=PREVIOUS, words=words,
                        qa=[QA(a + 4.5, "What colour was the ball?", "Red.")], source="toy.jsonl:1")


def test_labels_hand_checked(tiny, video):
    builder = SampleBuilder(tiny.tokenizer, SMALL_SPEC, CFG)
    sample = builder.build(record(7.0, 3.0), video)
    tok = tiny.tokenizer
    texts = [p.assistant_text for p in sample.chunks]
    assert texts == [" red ball", "", " enters"]
    supervised = sample.labels[sample.labels != IGNORE_INDEX]
    assert tok.decode(supervised) == " red ball ...<|im_end|> ...<|im_end|> enters ...<|im_end|>"
    # labels are the input ids where supervised, and the newline after <|im_end|> is not supervised
    sup = sample.labels != IGNORE_INDEX
    assert torch.equal(sample.labels[sup], sample.input_ids[sup])
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    ends = torch.nonzero(sample.input_ids == im_end).flatten()
    assert not bool(sup[ends[:2]].any())  # the system and previous-text turns end unsupervised
    assert bool(sup[ends[-1]]) and not bool(sup[ends[-1] + 1])
    # nothing outside assistant turns is supervised
    kinds = sample.meta.kind[sup]
    assert bool(((kinds == Kind.ASSIST_TEXT) | (kinds == Kind.ASSIST_END)).all())
    assert sample.num_supervised == len(supervised)
    assert sample.video_grid_thw.shape == (3, 3) and sample.position_ids.shape == (3, len(sample.input_ids))


def test_query_joins_only_a_sample_that_starts_its_stream(tiny, video):
    """The query is in chunk 0 of a sample starting at 0 s (where inference starts a stream and puts it) and
    nowhere in a sample starting later (the inference cache has evicted it with round 0 by then)."""
    builder = SampleBuilder(tiny.tokenizer, SMALL_SPEC, CFG)
    layout = builder.layout

    def user_ids(query):  # the USER-kind ids of a user turn (head, query, end), whatever its time and grid
        turn = layout.user_turn(0, 0.0, 1.0, (1, 1, 1), query)
        return turn.ids[turn.kind == Kind.USER].tolist()

    for a, query_in_chunk_0 in ((0.0, True), (7.0, False)):
        sample = builder.build(record(a, 3.0), video)
        meta = sample.meta
        users = [meta.ids[(meta.kind == Kind.USER) & (meta.round == r)].tolist() for r in range(3)]
        assert users[0] == user_ids(CFG.query if query_in_chunk_0 else None), a
        assert users[1] == users[2] == user_ids(None)
    assert user_ids(CFG.query) != user_ids(None)


def test_word_and_question_assignment(tiny):
    builder = SampleBuilder(tiny.tokenizer, SMALL_SPEC, CFG)
    plans = builder.plan(record(7.0, 10.0))
    assert [p.text for p in plans] == [" red ball", "", " enters", " left", "", "", " score", " two", "", ""]
    assert [p.question for p in plans][4] == "What colour was the ball?"
    assert plans[4].assistant_text == "Red.\n"
    assert (plans[0].start, plans[-1].end) == (7.0, 17.0)


def test_previous_text_cut_matches_the_cache_policy(tiny):
    builder = SampleBuilder(tiny.tokenizer, SMALL_SPEC, CFG)
    ids = builder.layout.encode(PREVIOUS)
    assert builder.previous_ids(PREVIOUS) == ids[:6] + ids[-8:]
    full = SampleBuilder(tiny.tokenizer, SMALL_SPEC, dataclasses.replace(CFG, text_sink=None, text_window=None))
    assert full.previous_ids(PREVIOUS) == ids


def test_pixel_budget_and_frame_cap(tiny):
    cfg = SampleConfig()
    assert cfg.frame_max_pixels(48) == 768 * 28 * 28  # a 24-s window: the inference cap
    assert cfg.frame_max_pixels(480) == int(24576 * 28 * 28 * 2 / 480)  # 4 minutes: fewer pixels per frame
    assert cfg.frame_max_pixels(10_000) == 100 * 28 * 28  # never below the minimum
    builder = SampleBuilder(tiny.tokenizer, SMALL_SPEC, cfg)
    long = StreamRecord("x.mp4", 0.0, 300.0, words=[Word(1.0, 1.5, "hi")])
    assert len(builder.plan(long)) == 240  # 480 frames at 2 fps


def test_sample_config_is_the_stream_settings_plus_a_token_cap(tiny):
    """Samples take their settings (defaults, normalised values, checks) from the one settings object; a sample adds
    only its token cap."""
    assert issubclass(SampleConfig, StreamSettings)
    assert {f.name for f in dataclasses.fields(SampleConfig)} - set(SETTING_NAMES) == {"max_sample_tokens"}
    assert SampleConfig().as_record() == DEFAULTS.as_record()
    cfg = SampleConfig(text_window="unlimited", fps=4)
    assert (cfg.text_window, cfg.fps, type(cfg.fps)) == (None, 4.0, float)
    bad = (({"min_pixels": 5000, "max_pixels": 3136}, r"--min-pixels \(5000\) is larger than --max-pixels \(3136\)"),
           ({"text_sink": -1}, r"text_sink must be >= 0 or None \(unlimited\), got -1"),
           ({"max_sample_tokens": 0}, "max_sample_tokens must be >= 1 or null, got 0"))  # fmt: skip
    for values, words in bad:
        with pytest.raises(SettingsError, match=words):
            SampleConfig(**values)
    with pytest.raises(SettingsError, match=r"even whole number of frames per chunk, got 3 \* 1 = 3"):
        SampleBuilder(tiny.tokenizer, SMALL_SPEC, SampleConfig(fps=3.0))  # Qwen2.5-VL encodes frames in pairs


def test_bad_records(tiny, video, tmp_path):
    builder = SampleBuilder(tiny.tokenizer, SMALL_SPEC, CFG)
    empty = StreamRecord("clip.mp4", 2.0, 6.0, words=[Word(30.0, 30.5, "late")], source="toy.jsonl:7")
    with pytest.raises(AnnotationError, match="toy.jsonl:7: empty transcript"):
        builder.build(empty, video)
    from streaming_vlm.video import VideoError

    with pytest.raises(VideoError):
        builder.build(record(1.0, 3.0), tmp_path / "missing.mp4")
