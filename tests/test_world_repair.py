"""The repair stage's hard calls: every call read in the window the cache holds then, batched reading equal to one
window at a time, the hard windows' file, the command."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from streaming_vlm.data.annotations import StreamRecord, Word, iter_records
from streaming_vlm.data.sample import video_pixel_values
from streaming_vlm.data.validate import validate_file
from streaming_vlm.data.windows import windows_of
from streaming_vlm.infer import DEMO_MODEL
from streaming_vlm.world import dataset, repair
from streaming_vlm.world.script import DEFAULT_WORLD, events

pytestmark = pytest.mark.usefixtures("one_thread")



@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory):
    """One 90-s default-world pool stream, written as make_training_set writes the pool."""
    out = tmp_path_factory.mktemp("pool")
    spec = dataset.StreamSpec(dataset.split_seed("train", 900), 90, DEFAULT_WORLD, "p")
    dataset.write_streams(out, [spec], repair.POOL, progress=False, titled=False)
    return out, spec


def test_one_window_per_call_holding_what_the_cache_holds_then():
    calls = {0: "whistle! score zero", 5: "black ball! score one", 20: "red bar! score one", 21: "blue ball! score one",
             40: "whistle! score zero"}  # fmt: skip
    words = [Word(s + 0.1 + 0.2 * i, s + 0.3 + 0.2 * i, w) for s, text in calls.items()
             for i, w in enumerate(text.split())]
    rec = StreamRecord("videos/v.mp4", 0.0, 60.0, words=words, title="Synthetic match 1")
    out = repair.call_windows(rec, rounds=16, text_sink=32, text_window=64)
    # the calls at 0 and 5 s come before a whole window: left out, as the cache holds less there
    assert [(t, w.video_start, w.video_end) for t, w in out] == [(20, 5, 21), (21, 6, 22), (40, 25, 41)]
    by_t = dict(out)
    # the call at 5 s ends in (5, 21]: a turn of the window; its previous text is the kick-off's call, no title
    assert by_t[20].previous == " whistle! score zero" and not by_t[20].title
    assert " ".join(w.text for w in by_t[20].words) == "black ball! score one red bar! score one"
    # 19 quiet seconds before the whistle: every earlier call is in the previous text, the window has the whistle only
    assert by_t[40].previous.endswith("red bar! score one blue ball! score one")
    assert " ".join(w.text for w in by_t[40].words) == "whistle! score zero"


def test_each_call_read_batched_as_one_window_alone(pool_dir):
    """The batched reading (padding, the last score word's row) equals a stock forward of each window alone."""
    from streaming_vlm.world.select import TeacherForced

    out, spec = pool_dir
    readings = repair.read_calls(DEMO_MODEL, out, batch_size=8, progress=False)
    evs = [e for e in events(spec.seed, spec.seconds, spec.config) if e.second >= 15]
    assert [(r.t, r.truth) for r in readings] == [(e.second, e.text.split()[-1]) for e in evs]
    reader = TeacherForced(DEMO_MODEL)
    (rec,) = [r for _, r in iter_records(out / repair.POOL)]
    windows = dict(repair.call_windows(rec, 16, reader.settings.text_sink, reader.settings.text_window))
    for r in readings[:: max(1, len(readings) // 4)]:
        sample = reader.builder.build(windows[r.t], out / rec.video)
        batch = reader.collate([sample])
        batch["pixel_values_videos"] = video_pixel_values(batch.pop("video_frames"), batch["video_grid_thw"],
                                                          reader.spec)
        batch.pop("labels")
        with torch.inference_mode():
            logits = reader.model(**batch).logits[0].float()
        ids = sample.input_ids.tolist()
        last = max(i for i in range(1, len(ids)) if ids[i - 1] == reader.score_id)  # the call's score word
        probs = logits[last - 1].softmax(-1)
        assert reader.tokenizer.decode(ids[last]).strip() == r.truth
        assert reader.tokenizer.decode(int(probs.argmax())).strip() == r.said
        assert r.p_truth == pytest.approx(float(probs[ids[last]]), abs=2e-3)
    # the shipped model reads (nearly) every call right
    assert sum(r.hard() for r in readings) <= 1 and len(readings) >= 15


def test_an_untrained_model_finds_most_calls_hard(pool_dir, tmp_path):
    from streaming_vlm.world.demo import build_demo_init

    out, _ = pool_dir
    readings = repair.read_calls(build_demo_init(tmp_path / "init"), out, progress=False)
    assert sum(r.hard() for r in readings) >= len(readings) - 2


def test_hard_windows_end_with_each_hard_call(pool_dir, tmp_path):
    out, spec = pool_dir
    evs = [e for e in events(spec.seed, spec.seconds, spec.config) if e.second >= 15]
    word = {e.second: e.text.split()[-1] for e in evs}
    # made-up readings: one said wrong, one right but unsure, the others right and sure
    readings = [repair.CallReading("videos/p.mp4", t, w, w, 0.99) for t, w in word.items()]
    wrong, unsure = readings[1].t, readings[3].t
    readings[1] = replace(readings[1], said="nine", p_truth=0.01)
    readings[3] = replace(readings[3], p_truth=0.3)
    path = tmp_path / "hard_windows.jsonl"
    assert repair.write_hard_windows(out, readings, path, rounds=16) == 2
    assert repair.write_hard_windows(out, readings, tmp_path / "strict.jsonl", rounds=16, threshold=0.2) == 1
    report = validate_file(path, dataset_path=out)
    assert report.ok and report.records == 2, report.lines()
    recs = [r for _, r in iter_records(path)]
    assert [(r.video, r.video_start, r.video_end) for r in recs] == [("videos/p.mp4", t - 15.0, t + 1.0)
                                                                    for t in (wrong, unsure)]
    for rec, t in zip(recs, (wrong, unsure), strict=True):
        win, _, _ = next(windows_of(rec, window=16, stride=16))
        assert " ".join(w.text for w in win.words).endswith(next(e.text for e in evs if e.second == t))
        assert not win.title
    assert path.with_name("hard_windows_seeks.jsonl").is_file()
    # none hard: an empty window file, which training reads as no samples
    assert repair.write_hard_windows(out, readings[:1], tmp_path / "none.jsonl", rounds=16) == 0
    assert (tmp_path / "none.jsonl").read_text() == "" and (tmp_path / "none_seeks.jsonl").is_file()


def test_repair_command_checks_its_paths_before_reading(pool_dir, tmp_path, capsys):
    out, _ = pool_dir
    cases = [([str(tmp_path), str(DEMO_MODEL), "--out", str(tmp_path / "o.jsonl")], "pool.jsonl: not found"),
             ([str(out), str(tmp_path / "none"), "--out", str(tmp_path / "o.jsonl")], "not a directory"),
             ([str(out), str(DEMO_MODEL), "--out", str(tmp_path / "no" / "o.jsonl")], "must be a file in an existing"),
             ([str(out), str(DEMO_MODEL), "--out", str(out / repair.POOL)], "not an input"),
             ([str(out), str(DEMO_MODEL), "--out", str(tmp_path / "o.jsonl"), "--threshold", "2"], "must be in [0, 1]")]
    for argv, message in cases:
        assert repair.main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    # a folder that is not a checkpoint: one line, nothing written
    assert repair.main([str(out), str(tmp_path), "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("streaming-vlm: error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "o.jsonl").exists()
    before = (out / repair.POOL).read_bytes()
    assert repair.main([str(out), str(DEMO_MODEL), "--out", str(tmp_path / "o.jsonl")]) == 0
    printed = capsys.readouterr().out.splitlines()
    n = sum(1 for _ in iter_records(tmp_path / "o.jsonl"))
    assert printed[0].startswith(f"{n} hard call(s) of ") and len(printed) == 1 + n
    assert (out / repair.POOL).read_bytes() == before
    assert json.loads((tmp_path / "o_build.json").read_text())["window"] == 16


def test_repair_command_reads_another_streams_file(pool_dir, tmp_path, capsys):
    """--streams NAME: another annotation file of the folder (a held-out set's heldout.jsonl), every call of it read;
    each hard call printed after the count, as a model that knows nothing gets nearly all of them wrong."""
    from streaming_vlm.world.demo import build_demo_init

    out, _ = pool_dir
    other = tmp_path / "data"
    other.mkdir()
    (other / "videos").symlink_to(out / "videos")
    (other / "heldout.jsonl").write_bytes((out / repair.POOL).read_bytes())
    argv = [str(other), str(DEMO_MODEL), "--out", str(tmp_path / "o.jsonl")]
    assert repair.main(argv) == 2  # no pool.jsonl in that folder
    assert "pool.jsonl: not found" in capsys.readouterr().err
    assert repair.main([*argv, "--streams", "none.jsonl"]) == 2
    assert "none.jsonl: not found" in capsys.readouterr().err
    init = build_demo_init(tmp_path / "init")
    assert repair.main([str(other), str(init), "--out", str(tmp_path / "o.jsonl"), "--streams", "heldout.jsonl"]) == 0
    printed = capsys.readouterr().out.splitlines()
    readings = repair.read_calls(init, other, "heldout.jsonl", progress=False)
    hard = [r for r in readings if r.hard()]
    assert printed[0].startswith(f"{len(hard)} hard call(s) of {len(readings)} ") and len(hard) >= len(readings) - 2
    assert printed[1:] == [f"  {r.video} second {r.t}: {r.truth}, read as {r.said} ({r.p_truth:.3f} for {r.truth})"
                           for r in hard]
    assert sum(1 for _ in iter_records(tmp_path / "o.jsonl")) == len(hard)
