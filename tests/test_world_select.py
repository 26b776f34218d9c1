"""Choosing the demo checkpoint: validation windows, the teacher-forced score accuracy, the choice, the command."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from streaming_vlm.data.annotations import StreamRecord, Word
from streaming_vlm.infer import DEMO_MODEL
from streaming_vlm.world import dataset, select
from streaming_vlm.world.script import DEFAULT_WORLD, events, parse_commentary


def _record(calls: dict[int, str], seconds: int) -> StreamRecord:
    words = []
    for s, text in calls.items():
        parts = text.split()
        words += [Word(s + 0.1 + 0.2 * i, s + 0.3 + 0.2 * i, w) for i, w in enumerate(parts)]
    return StreamRecord("videos/v.mp4", 0.0, float(seconds), words=words, title="Synthetic match 1")


def test_tiles_and_quiet_stretch_windows():
    calls = {0: "whistle! score zero", 5: "black ball! score one", 30: "red bar! score one",
             40: "black ball! score two", 56: "blue ball! score two", 71: "red ball! score two"}  # fmt: skip
    out = select.windows(_record(calls, 96), window=24.0, rounds=16, text_sink=32, text_window=64)
    kinds = [(kind, w.video_start, w.video_end) for kind, w in out]
    # tiles every 24 s, the one without a call (72-96) left out; quiet stretches before 30 (25 s) and 56 (16 s),
    # not before 40 (10 s) nor 71 (15 s)
    assert kinds == [("tiles", 0, 24), ("tiles", 24, 48), ("tiles", 48, 72), ("quiet", 15, 31), ("quiet", 41, 57)]
    quiet = out[3][1]
    # the last score is only in the previous text, which has no title (inference starts with an empty one)
    assert quiet.previous == " whistle! score zero black ball! score one" and not quiet.title
    assert " ".join(w.text for w in quiet.words) == "red bar! score one"
    assert out[4][1].previous.endswith("black ball! score two")


def test_choose_the_most_accurate_then_the_surest_then_the_later():
    a = select.Accuracy(tiles=10, tiles_right=9, quiet=2, quiet_right=2, nll=1.0)
    b = select.Accuracy(tiles=10, tiles_right=10, quiet=2, quiet_right=1, nll=0.5)
    c = select.Accuracy(tiles=10, tiles_right=10, quiet=2, quiet_right=2, nll=3.0)
    d = select.Accuracy(tiles=10, tiles_right=10, quiet=2, quiet_right=2, nll=2.0)
    assert select.choose([("a", a), ("b", b)]) == "b"  # equal accuracy (11/12): the lower NLL
    assert select.choose([("c", c), ("d", d), ("a", a)]) == "d"
    assert select.choose([("d", d), ("d2", replace(d))]) == "d2"  # all equal: the later
    assert (c.value, c.as_dict()["quiet_accuracy"], c.as_dict()["mean_nll"]) == (1.0, 1.0, 0.25)
    with pytest.raises(ValueError, match="no checkpoint read a score word"):
        select.choose([("e", select.Accuracy())])


@pytest.fixture(scope="module")
def valid_dir(tmp_path_factory):
    """One quiet 2-minute validation stream (so it has quiet stretches), written as make_training_set writes it."""
    out = tmp_path_factory.mktemp("select")
    spec = dataset.StreamSpec(dataset.split_seed("valid", 900), 120, replace(DEFAULT_WORLD, density=0.12), "v")
    dataset.write_streams(out, [spec], select.ANNOTATION, progress=False)
    return out, spec


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_validation_accuracy_reads_every_score_word_once(valid_dir, tmp_path):
    from streaming_vlm.world.demo import build_demo_init

    out, spec = valid_dir
    evs = list(events(spec.seed, spec.seconds, spec.config))
    seconds = [e.second for e in evs]
    quiet = sum(b - a >= 16 for a, b in zip(seconds, seconds[1:], strict=False))
    assert quiet >= 2
    trained = select.validation_accuracy(DEMO_MODEL, out)
    assert (trained.tiles, trained.quiet) == (len(evs), quiet)
    assert trained.value >= 0.9 and trained.mean_nll < 0.5
    untrained = select.validation_accuracy(build_demo_init(tmp_path / "init"), out)
    assert (untrained.tiles, untrained.quiet) == (len(evs), quiet)
    assert untrained.value < 0.5 and untrained.mean_nll > 1.0
    assert all(len(parse_commentary(e.text).calls) == 1 for e in evs)


def test_command_prints_each_checkpoint_and_the_best_last(valid_dir, tmp_path, capsys):
    out, _ = valid_dir
    report = tmp_path / "selection.json"
    assert select.main([str(out), str(DEMO_MODEL), "--report", str(report)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == str(DEMO_MODEL) and lines[0].startswith(f"{DEMO_MODEL}: {{")
    saved = json.loads(report.read_text())
    assert saved["best"] == str(DEMO_MODEL) and saved["checkpoints"][str(DEMO_MODEL)]["score_accuracy"] >= 0.9
    assert select.main([str(tmp_path / "none"), str(DEMO_MODEL)]) == 2
    assert select.main([str(tmp_path), str(DEMO_MODEL)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"streaming-vlm: error: {tmp_path / 'none'}: not a directory",
                   f"streaming-vlm: error: {tmp_path / select.ANNOTATION}: not found"]
