"""Choosing the demo checkpoint: validation windows, the teacher-forced and the streamed score accuracy, the choice,
the command."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import pytest

from streaming_vlm.data.annotations import StreamRecord, Word
from streaming_vlm.infer import DEMO_MODEL
from streaming_vlm.world import dataset, select
from streaming_vlm.world.script import DEFAULT_WORLD, events, parse_commentary

pytestmark = pytest.mark.usefixtures("one_thread")


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


def test_choose_streamed_by_pooled_accuracy_then_worst_stream_then_the_later():
    def st(pooled, worst):
        return select.Streamed(pooled, worst, slips=0, event_f1=1.0)

    assert select.choose([("a", st(0.99, 0.95)), ("b", st(0.98, 0.98))]) == "a"  # pooled first
    assert select.choose([("a", st(0.99, 0.90)), ("b", st(0.99, 0.95)), ("c", st(0.99, 0.92))]) == "b"
    assert select.choose([("a", st(1.0, 1.0)), ("b", st(1.0, 1.0))]) == "b"  # all equal: the later
    assert select.choose([("a", st(0.5, 0.5)), ("none", st(None, None))]) == "a"  # no matched call: never chosen
    with pytest.raises(ValueError, match="no checkpoint read a score word"):
        select.choose([("none", st(None, None))])


@pytest.fixture(scope="module")
def valid_dir(tmp_path_factory):
    """One quiet 2-minute validation stream (so it has quiet stretches), written as make_training_set writes it."""
    out = tmp_path_factory.mktemp("select")
    spec = dataset.StreamSpec(dataset.split_seed("valid", 900), 120, replace(DEFAULT_WORLD, density=0.12), "v")
    dataset.write_streams(out, [spec], select.ANNOTATION, progress=False)
    return out, spec


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


def test_streamed_accuracy_is_the_synth_evaluation_of_the_validation_streams(valid_dir, tmp_path, caplog):
    from streaming_vlm.world.demo import build_demo_init

    out, spec = valid_dir
    with caplog.at_level(logging.INFO, logger="streaming_vlm"):
        trained = select.streamed_accuracy(DEMO_MODEL, out, tmp_path / "trained", threads=1)
    assert [r for r in caplog.records if r.getMessage().startswith("loading")]
    report = json.loads((tmp_path / "trained" / "report.json").read_text())
    # the validation stream (select.jsonl), streamed whole in streaming mode only
    assert [(s["name"], s["duration_s"]) for s in report["streams"]] == [(f"{out.name}/v", 120.0)]  # videos/v.mp4
    assert list(report["modes"]) == ["streaming"] and report["modes"]["streaming"]["coverage"] == 1.0
    s = report["modes"]["streaming"]
    assert trained == select.Streamed(s["fact_accuracy"], s["fact_accuracy_worst"]["fact_accuracy"],
                                      s["score_slips"]["total"], s["event_f1"])
    assert trained.score_accuracy >= 0.9 and trained.event_f1 >= 0.9
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="streaming_vlm"):  # resumed: every stream is done, no model loaded
        assert select.streamed_accuracy(DEMO_MODEL, out, tmp_path / "trained", threads=1) == trained
    assert not [r for r in caplog.records if r.getMessage().startswith("loading")]
    untrained = select.streamed_accuracy(build_demo_init(tmp_path / "init"), out, tmp_path / "untrained", threads=1)
    assert untrained.key is None or untrained.key < trained.key
    assert select.choose([("trained", trained), ("untrained", untrained)]) == "trained"


def test_command_prints_each_checkpoint_and_the_best_last(valid_dir, tmp_path, capsys):
    out, _ = valid_dir
    for by, quantity in (("streamed", "score_accuracy"), ("teacher-forced", "score_accuracy")):
        report = tmp_path / f"selection_{by}.json"
        argv = [str(out), str(DEMO_MODEL), "--report", str(report), "--by", by, "--threads", "1"]
        assert select.main(argv + ["--out", str(tmp_path / by)]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert lines[-1] == str(DEMO_MODEL) and lines[0].startswith(f"{DEMO_MODEL}: {{")
        assert len(lines) == 2  # the evaluation's own table went to stderr
        saved = json.loads(report.read_text())
        assert saved["by"] == by and saved["best"] == str(DEMO_MODEL)
        assert saved["checkpoints"][str(DEMO_MODEL)][quantity] >= 0.9
    assert (tmp_path / "streamed" / f"00_{DEMO_MODEL.name}" / "report.json").is_file()
    assert not (tmp_path / "teacher-forced").exists()
    # teacher-forced in two processes: each checkpoint's accuracy as one process reads it, printed in order
    twice = [str(out), str(DEMO_MODEL), str(DEMO_MODEL)]
    reports = []
    for workers in ("1", "2"):
        assert select.main(twice + ["--workers", workers, "--report", str(tmp_path / f"w{workers}.json")]) == 0
        reports.append(capsys.readouterr().out)
    assert reports[0] == reports[1] and reports[0].count(f"{DEMO_MODEL}: {{") == 2
    assert (tmp_path / "w1.json").read_text() == (tmp_path / "w2.json").read_text()
    assert select.main([str(tmp_path / "none"), str(DEMO_MODEL)]) == 2
    assert select.main([str(tmp_path), str(DEMO_MODEL)]) == 2
    # outputs checked before any work: not an input, the right kind, in an existing folder
    assert select.main([str(out), str(DEMO_MODEL), "--out", str(DEMO_MODEL)]) == 2
    assert select.main([str(out), str(DEMO_MODEL), "--out", str(report)]) == 2
    assert select.main([str(out), str(DEMO_MODEL), "--report", str(tmp_path)]) == 2
    assert select.main([str(out), str(DEMO_MODEL), "--report", str(tmp_path / "no" / "r.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[:2] == [f"streaming-vlm: error: {tmp_path / 'none'}: not a directory",
                       f"streaming-vlm: error: {tmp_path / select.ANNOTATION}: not found"]
    assert err[2:] == [f"streaming-vlm: error: {flag} {path}: must be {kind} in an existing folder, not an input"
                       for flag, path, kind in (("--out", DEMO_MODEL, "a folder"), ("--out", report, "a folder"),
                                                ("--report", tmp_path, "a file"),
                                                ("--report", tmp_path / "no" / "r.json", "a file"))]
