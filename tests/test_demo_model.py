"""The shipped demo model: it loads like any checkpoint and comments correctly on held-out streams.

The floors sit well below the issue's targets (event F1 >= 0.9, score accuracy >= 0.9) and below what the
current demo measures (F1 and score 1.0 on the held-out minute and on the clip); a random or broken checkpoint,
layout, cache or pipeline scores 0 and fails them. The held-out minute is test stream 7, whose first score the
demo got wrong before streams opened with the kick-off whistle.
"""

from __future__ import annotations

import json

import pytest

from streaming_vlm.cli import main as cli_main
from streaming_vlm.data.annotations import StreamRecord, Word
from streaming_vlm.eval import synth
from streaming_vlm.infer import DEMO_MODEL, DEMO_VIDEO
from streaming_vlm.world import dataset
from streaming_vlm.world.script import events, words

F1_FLOOR = 0.8
SCORE_FLOOR = 0.7
EMPTY_CEILING = 0.1  # share of event seconds left without any call
DEMO_SEED = 2001010  # the bundled clip: `streaming-vlm synth DIR --seed 2001010 --minutes 1`


def test_demo_checkpoint_is_small_and_loads_with_from_pretrained():
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    files = {p.name: p.stat().st_size for p in DEMO_MODEL.iterdir()}
    assert "model.safetensors" in files and "streaming_vlm.json" in files
    assert sum(files.values()) <= 20 * 2**20
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(DEMO_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(DEMO_MODEL)
    assert model.config.vision_config.spatial_merge_size == 2 and "<|video_pad|>" in tokenizer.get_vocab()
    assert json.loads((DEMO_MODEL / "streaming_vlm.json").read_text())["min_pixels"] == 56 * 56


@pytest.fixture(scope="module")
def held_out_minute(tmp_path_factory):
    """The streaming-mode report of the demo on one held-out minute (test stream 7)."""
    tmp = tmp_path_factory.mktemp("held_out")
    data = tmp / "data"
    dataset.write_streams(data, dataset.split_specs("test", 1, 1.0, first=7), "test.jsonl", progress=False)
    report_path = tmp / "report.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("builtins.print", lambda *a, **k: None)
        rc = synth.main(["--data", str(data), "--model", "demo", "--modes", "streaming", "--device", "cpu",
                         "--quiet", "--report", str(report_path), "--figure", str(tmp / "f.png"),
                         "--out", str(tmp / "records")])  # fmt: skip
    assert rc == 0
    return json.loads(report_path.read_text())["modes"]["streaming"]


def test_one_minute_held_out_evaluation(held_out_minute):
    streaming = held_out_minute
    assert streaming["gt_calls"] >= 10
    assert streaming["event_f1"] >= F1_FLOOR, streaming
    assert streaming["fact_accuracy"] is not None
    assert streaming["empty_share"] <= EMPTY_CEILING and streaming["garbled_share"] <= 0.1, streaming


def test_one_minute_held_out_score(held_out_minute):
    assert held_out_minute["fact_accuracy"] >= SCORE_FLOOR, held_out_minute


def test_infer_with_defaults_comments_on_the_demo_clip(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    jsonl = tmp_path / "demo.jsonl"
    assert cli_main(["infer", "demo", "--quiet", "--jsonl", str(jsonl), "--device", "cpu"]) == 0
    assert (tmp_path / "demo.vtt").read_text().startswith("WEBVTT")
    chunks = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(chunks) == 60
    truth = StreamRecord(str(DEMO_VIDEO), 0.0, 60.0, words=[w for e in events(DEMO_SEED, 60) for w in words(e)])
    assert all(isinstance(w, Word) for w in truth.words)
    score = synth.score_stream(synth.chunk_texts(truth), [{"t": c["start"], "text": c["text"]} for c in chunks])
    tally = score.tally()
    assert tally.f1 >= F1_FLOOR, [c["text"] for c in chunks]
    assert tally.fact_accuracy is not None and tally.fact_accuracy >= SCORE_FLOOR, [c["text"] for c in chunks]
    assert tally.empty_share <= EMPTY_CEILING, [c["text"] for c in chunks]


@pytest.mark.parametrize("seed", [DEMO_SEED])
def test_bundled_clip_is_the_world_stream(seed, tmp_path):
    spec = dataset.StreamSpec(seed, 60, name="clip")
    dataset.write_stream(tmp_path, spec)
    from streaming_vlm.video import VideoReader

    with VideoReader(DEMO_VIDEO) as a, VideoReader(tmp_path / spec.video) as b:
        for x, y in zip(a.chunks(), b.chunks(), strict=True):
            assert (x.frames == y.frames).all()
