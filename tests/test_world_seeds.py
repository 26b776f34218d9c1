"""The per-seed table of the demo recipe's robustness check (``world/seeds.py``) on reports built by ``eval synth``'s
own ``build_report`` from hand-made predictions: a perfect run and a run with one slip, the numbers counted by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streaming_vlm.eval import synth
from streaming_vlm.world import seeds
from tests.test_eval_synth import SETTINGS, SLIP_GT, _at, _chunks, _record

LONG_S = 1200  # 20 min: a long stream for the last/first 10-minute ratio
LONG_GT = _at(LONG_S, {s: "red ball! score zero" for s in range(5, LONG_S, 10)})  # 120 calls


def _report(model: str, short_b: list[str]) -> dict:
    short = {k: t for k, t in enumerate(SLIP_GT) if t}  # 8 calls in 40 s
    streams = [synth.Stream("s/a", Path("a.mp4"), _record(40, short), 40.0),
               synth.Stream("s/b", Path("b.mp4"), _record(40, short), 40.0),
               synth.Stream("l/c", Path("c.mp4"), _record(LONG_S, {k: t for k, t in enumerate(LONG_GT) if t}),
                            float(LONG_S))]  # fmt: skip
    records = [{"id": "streaming/s/a", "chunks": _chunks(SLIP_GT), "peak_rss_mb": 1.0},
               {"id": "streaming/s/b", "chunks": _chunks(short_b), "peak_rss_mb": 1.0},
               {"id": "streaming/l/c", "chunks": _chunks(LONG_GT), "peak_rss_mb": 1.0}]
    return synth.build_report(records, streams, {**SETTINGS, "model": model, "text_rounds": 16}, ["streaming"])


@pytest.fixture
def reports(tmp_path):
    slipped = list(SLIP_GT)
    slipped[21] = "black ball! score one"  # a goal not counted (two), still one behind at 23
    slipped[23] = "red bar! score one"
    paths = []
    for name, short_b in (("runs/seed2", SLIP_GT), ("runs/seed3", slipped)):
        path = tmp_path / f"{name.replace('/', '_')}.json"
        path.write_text(json.dumps(_report(name, short_b)))
        paths.append(path)
    return paths


def test_rows_count_each_seed_by_hand(reports):
    good, bad = (seeds.seed_row(seeds.load_report(p)) for p in reports)
    assert good == {"run": "runs/seed2", "F1 short": 1.0, "F1 long": 1.0, "score short": 1.0, "worst short": 1.0,
                    "score long": 1.0, "worst long": 1.0, "last/first": 1.0, "slips": 0, "targets": "pass"}
    # 16 short calls, two said one where the score was two; the long stream is right throughout
    assert bad == {"run": "runs/seed3", "F1 short": 1.0, "F1 long": 1.0, "score short": 0.875, "worst short": 0.75,
                   "score long": 1.0, "worst long": 1.0, "last/first": 1.0, "slips": 1, "targets": "fail"}


def test_main_prints_the_table_and_how_many_pass(reports, capsys):
    assert seeds.main([str(p) for p in reports]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["run", "F1", "short", "F1", "long", "score", "short", "worst", "short", "score", "long",
                              "worst", "long", "last/first", "slips", "targets"]
    assert out[2].split()[0] == "runs/seed2" and out[2].split()[-1] == "pass"
    assert out[3].split()[0] == "runs/seed3" and out[3].split()[3:5] == ["0.875", "0.75"]
    assert out[-1] == "1 of 2 run(s) meet every target"


def test_bad_reports_are_one_line_errors(reports, tmp_path, capsys):
    (tmp_path / "other.json").write_text(json.dumps({"modes": {}}))
    for bad in (tmp_path / "missing.json", tmp_path / "other.json"):
        assert seeds.main([str(reports[0]), str(bad)]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and len(captured.err.strip().splitlines()) == 1 and str(bad) in captured.err
    assert seeds.main([]) == 2
