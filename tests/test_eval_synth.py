"""The synthetic-world quality benchmark: scoring on hand-made predictions with exact numbers, the report's
targets and stopped streams without a model, and ``main`` end to end on a 20-s held-out stream and the tiny model
(an oracle mode fed the ground truth through ``force_text``, a real mode, resume, time budget, out of memory,
errors)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from streaming_vlm.data.annotations import StreamRecord, Word
from streaming_vlm.engine import StreamSession
from streaming_vlm.eval import synth
from streaming_vlm.settings import SETTING_NAMES
from streaming_vlm.world import score
from streaming_vlm.world.dataset import split_specs, write_streams
from streaming_vlm.world.score import TimedCall, chunk_texts, match_calls, per_minute, score_stream
from streaming_vlm.world.script import GOAL, events, score_word

pytestmark = pytest.mark.usefixtures("one_thread")


def _chunks(texts, start=0.0, **extra):
    return [{"t": start + k, "text": x, **{key: v[k] for key, v in extra.items()}} for k, x in enumerate(texts)]


def _at(seconds: int, calls: dict[int, str]) -> list[str]:
    return [calls.get(k, "") for k in range(seconds)]


# Ten seconds, four calls (event seconds 0, 2, 4, 7).
GT = _at(10, {0: "whistle! score zero", 2: "red ball! score one", 4: "blue bar! score two",
              7: "yellow ball! score three"})  # fmt: skip


def _shift(texts, by):
    return [""] * by + texts[: len(texts) - by]


# ------------------------------------------------------------------------------------------------------------
# matching and scores on hand-made predictions
# ------------------------------------------------------------------------------------------------------------


def test_oracle_scores_one():
    t = score_stream(GT, _chunks(GT)).tally()
    assert (t.gt_calls, t.pred_calls, t.matched_gt, t.matched_pred) == (4, 4, 4, 4)
    assert (t.precision, t.recall, t.f1, t.fact_accuracy, t.fact_accuracy_all) == (1.0, 1.0, 1.0, 1.0, 1.0)
    assert (t.empty_share, t.garbled_share, t.event_seconds, t.chunks) == (0.0, 0.0, 4, 10)


def test_one_second_late_still_matches_two_seconds_do_not():
    late = score_stream(GT, _chunks(_shift(GT, 1))).tally()
    assert (late.matched_gt, late.f1, late.fact_accuracy) == (4, 1.0, 1.0)
    assert late.empty_share == 1.0  # every ground-truth event second itself got no words
    assert score_stream(GT, _chunks(_shift(GT, 1)), tolerance_s=0.0).tally().f1 == 0.0
    early = score_stream(GT, _chunks(GT[1:] + [""])).tally()  # whistle at -1 s is dropped: 3 calls, all 1 s early
    assert (early.pred_calls, early.matched_gt, early.recall) == (3, 3, 0.75)
    assert early.f1 == pytest.approx(2 * 0.75 / 1.75)
    off = score_stream(GT, _chunks(_shift(GT, 2))).tally()
    assert (off.pred_calls, off.matched_gt, off.precision, off.recall, off.f1) == (4, 0, 0.0, 0.0, 0.0)
    assert off.fact_accuracy is None and off.fact_accuracy_all == 0.0


def test_wrong_and_missing_scores_lower_fact_accuracy_exactly():
    pred = list(GT)
    pred[4] = "blue bar! score five"
    t = score_stream(GT, _chunks(pred)).tally()
    assert (t.f1, t.fact_accuracy, t.fact_accuracy_all) == (1.0, 0.75, 0.75)
    pred[7] = "yellow ball!"  # a missing score is wrong
    pred[0] = ""  # the whistle is not called: 3 matched, 1 right
    t = score_stream(GT, _chunks(pred)).tally()
    assert (t.matched_gt, t.fact_correct, t.recall, t.precision) == (3, 1, 0.75, 1.0)
    assert t.fact_accuracy == pytest.approx(1 / 3) and t.fact_accuracy_all == 0.25
    assert t.empty_share == 0.25  # second 0 of the four event seconds has no words


def test_garbled_text_and_extra_calls():
    pred = list(GT)
    pred[2] = "red ball! score one what a goal"  # the call is read, the chunk is garbled
    pred[5] = "lovely"
    pred[8] = "black bar! score nine"  # a call with no ground truth
    t = score_stream(GT, _chunks(pred)).tally()
    assert (t.garbled_chunks, t.garbled_share) == (2, 0.2)
    assert (t.pred_calls, t.matched_pred, t.precision, t.recall, t.fact_accuracy) == (5, 4, 0.8, 1.0, 1.0)
    assert t.f1 == pytest.approx(2 * 0.8 / 1.8)


def test_empty_sides():
    assert score_stream(["", ""], _chunks(["", "..."])).tally().f1 == 1.0
    t = score_stream(["", ""], _chunks(["red ball! score one", ""])).tally()
    assert (t.precision, t.recall, t.f1, t.empty_share, t.fact_accuracy_all) == (0.0, 1.0, 0.0, None, None)


def test_matching_is_one_to_one_by_smallest_gap_ties_to_the_earlier():
    red = "red ball"
    assert match_calls([TimedCall(10, red, 1), TimedCall(11, red, 2)], [TimedCall(11, red, 2)]) == [(1, 0)]
    assert match_calls([TimedCall(10, red, 1), TimedCall(12, red, 2)], [TimedCall(11, red, 2)]) == [(0, 0)]
    assert match_calls([TimedCall(10, red, 1)], [TimedCall(10, "blue ball", 1)]) == []
    two = [TimedCall(10, red, 1), TimedCall(10, red, 2)]
    assert match_calls(two, [TimedCall(10, red, 1), TimedCall(11, red, 2), TimedCall(11, red, 3)]) == [(0, 0), (1, 1)]


def test_per_minute_series_counts_each_side_in_its_own_minute():
    gt = _at(150, {30: "red ball! score one", 59: "blue ball! score two", 90: "whistle! score zero",
                   130: "red bar! score one"})  # fmt: skip
    pred = _at(150, {30: "red ball! score one", 60: "blue ball! score two", 100: "black ball! score three",
                     130: "red bar! score seven"})  # fmt: skip
    lat = [0.01 * (k // 60 + 1) for k in range(150)]
    cache = list(range(150))
    score = score_stream(gt, _chunks(pred, latency_s=lat, cache_tokens=cache))
    total = score.tally()
    assert (total.f1, total.fact_accuracy, total.fact_accuracy_all) == (0.75, pytest.approx(2 / 3), 0.5)
    series = per_minute([score])
    assert [m["minute"] for m in series] == [0, 1, 2] and [m["streams"] for m in series] == [1, 1, 1]
    assert [m["event_f1"] for m in series] == [1.0, 0.0, 1.0]
    assert [(m["gt_calls"], m["pred_calls"], m["matched"]) for m in series] == [(2, 1, 2), (1, 2, 0), (1, 1, 1)]
    assert [m["precision"] for m in series] == [1.0, 0.5, 1.0] and [m["recall"] for m in series] == [1.0, 0.0, 1.0]
    assert [m["fact_accuracy"] for m in series] == [1.0, None, 0.0]
    assert [m["latency_ms_median"] for m in series] == [10.0, 20.0, 30.0]
    assert [m["cache_tokens_max"] for m in series] == [59, 119, 149]
    # Two streams pool per minute; the shorter one only counts in the minutes it reaches.
    short = score_stream(gt[:60], _chunks(gt[:60]))
    pooled = per_minute([score, short])
    assert [m["streams"] for m in pooled] == [2, 1, 1]
    assert (pooled[0]["gt_calls"], pooled[0]["matched"], pooled[1]["gt_calls"]) == (4, 4, 1)


def test_ground_truth_chunks_take_the_words_ending_in_the_second():
    words = [Word(0.1, 0.5, "a"), Word(0.5, 1.0, "b"), Word(1.0, 1.01, "c"), Word(2.5, 3.0, "d"),
             Word(3.0, 3.5, "e")]  # fmt: skip
    record = StreamRecord("v.mp4", 0.0, 3.0, words=words)
    assert chunk_texts(record) == ["a b", "c", "d"]
    assert chunk_texts(record, end=2.0) == ["a b", "c"]
    assert chunk_texts(StreamRecord("v.mp4", 1.0, 3.0, words=words)) == ["c", "d"]


def test_scores_reaching_back_before_a_sliding_reset():
    assert score.reset_starts(0.0, 60.0, 1.0, 24.0) == [0.0, 24.0, 48.0]
    assert score.reset_starts(0.0, 60.0, 1.0, 24.5) == [0.0, 25.0, 50.0]
    gt = _at(20, {2: "black ball! score one", 5: "black ball! score two", 12: "red bar! score two",
                  15: "whistle! score zero", 16: "black bar! score zero"})  # fmt: skip
    pred = list(gt)
    pred[12] = "red bar! score zero"  # what a context restarted at 10 s can know: no goal since
    t = score_stream(gt, _chunks(pred), reset_every=10.0).tally()
    assert (t.across_reset, t.across_reset_correct, t.fact_accuracy_across_reset) == (1, 0, 0.0)
    assert (t.fact_accuracy_within_reset, t.fact_accuracy) == (1.0, 0.8)
    assert score_stream(gt, _chunks(pred)).tally().across_reset == 0  # no reset schedule: nothing marked


def test_a_stopped_stream_is_scored_over_what_was_streamed():
    score = score_stream(GT, _chunks(GT[:5]))
    t = score.tally()
    assert (score.end, t.gt_calls, t.f1, t.chunks) == (5.0, 3, 1.0, 5)


# ------------------------------------------------------------------------------------------------------------
# the report from records (no model): edges, targets, stopped streams, findings
# ------------------------------------------------------------------------------------------------------------


def _record(seconds: int, calls: dict[int, str]) -> StreamRecord:
    words = []
    for s, text in calls.items():
        parts = text.split()
        words += [Word(s + 0.1 + 0.1 * i, s + 0.2 + 0.1 * i, w) for i, w in enumerate(parts)]
    return StreamRecord("videos/x.mp4", 0.0, float(seconds), words=words)


SETTINGS = {"model": "m", "data": ["d"], "chunk_seconds": 1.0, "tolerance_s": 1.0, "reset_every": 24.0,
            "training_window_s": 24.0, "fps": 2.0}  # fmt: skip


def test_report_edges_targets_and_stopped_streams():
    long_calls = {s: f"red ball! score {score_word(s // 10 % 30)}" for s in range(0, 1200, 10)}  # 60 + 60 calls
    short_calls = {s: f"blue bar! score {score_word(s // 10)}" for s in range(5, 120, 10)}
    streams = [synth.Stream("d/long", Path("x.mp4"), _record(1200, long_calls), 1200.0),
               synth.Stream("d/short", Path("y.mp4"), _record(120, short_calls), 120.0)]
    late = {s: t for s, t in long_calls.items() if s < 600 or s % 20 == 0}  # half the calls of the last 10 min
    records = [
        {"id": "streaming/d/long", "chunks": _chunks(_at(1200, late), latency_s=[0.01] * 1200,
                                                      cache_tokens=[100] * 1200), "peak_rss_mb": 300.0},
        {"id": "streaming/d/short", "chunks": _chunks(_at(120, short_calls), latency_s=[0.02] * 120,
                                                       cache_tokens=[80] * 120), "peak_rss_mb": 310.0},
        {"id": "full/d/long", "chunks": _chunks(_at(300, long_calls), latency_s=[0.01 * (1 + k // 60) for k in
                                                                                 range(300)],
                                                cache_tokens=list(range(300))), "peak_rss_mb": 500.0,
         "stopped_at_s": 300.0, "stop_reason": "time budget"},
        {"id": "full/d/short", "chunks": _chunks(_at(120, short_calls)), "peak_rss_mb": 400.0},
    ]  # fmt: skip
    report = synth.build_report(records, streams, SETTINGS, ["streaming", "full"])
    s, f = report["modes"]["streaming"], report["modes"]["full"]
    assert (s["first_10_min_f1"], s["last_10_min_f1"], s["last_vs_first_10_min"]) == (1.0, 0.6667, 0.6667)
    assert (s["long_streams"], s["long_streams_scored"], s["coverage"], s["stopped"]) == (1, 1, 1.0, [])
    assert (s["gt_calls"], s["matched"], s["recall"]) == (132, 102, round(102 / 132, 4))
    assert (s["latency_ms_median"], s["peak_cache_tokens"], s["peak_rss_mb"]) == (10.0, 100, 310.0)
    assert len(s["per_minute"]) == 20 and [m["streams"] for m in s["per_minute"][:3]] == [2, 2, 1]
    assert s["per_stream"]["d/short"]["event_f1"] == 1.0 and s["per_stream"]["d/short"]["first_10_min_f1"] is None
    # Full attention stopped after 5 of 20 minutes: scored there only, no last-10-minute F1, and it says so.
    assert f["stopped"] == [{"stream": "d/long", "at_s": 300.0, "reason": "time budget"}]
    assert (f["event_f1"], f["coverage"], f["long_streams_scored"], f["last_10_min_f1"]) == (
        1.0, round(420 / 1320, 4), 0, None)
    assert len(f["per_minute"]) == 2 + 3 and f["latency_growth"] == 5.0
    assert f["per_stream"]["d/long"]["stopped_at_s"] == 300.0
    targets = report["targets"]
    assert targets["streaming_event_f1_short"] | {"description": ""} == {
        "description": "", "target": ">= 0.98", "value": 1.0, "streams": 1, "pass": True}
    assert (targets["streaming_last_vs_first_10_min"]["value"], targets["streaming_last_vs_first_10_min"]["pass"]) == (
        0.6667, False)
    assert targets["streaming_last_vs_first_10_min"]["target"] == ">= 0.97"
    assert targets["streaming_fact_accuracy"] | {"description": ""} == {
        "description": "", "target": ">= 0.97", "value": 1.0, "streams": 2, "pass": True}
    assert targets["streaming_fact_accuracy_worst_short"] | {"description": ""} == {
        "description": "", "target": ">= 0.93", "value": 1.0, "streams": 1, "pass": True}
    assert any(line.startswith("full:") and "stopped (time budget at 300 s in d/long)" in line
               for line in report["findings"])


# Forty seconds: a goal at 3 (score one), quiet 4..20, a goal at 21 (two) 18 s after the last call, then calls at
# 23 (two), a whistle at 25 (zero), 27 (zero), 29 (zero) and a goal at 31 (one).
SLIP_GT = _at(40, {0: "whistle! score zero", 3: "black ball! score one", 21: "black ball! score two",
                   23: "red bar! score two", 25: "whistle! score zero", 27: "blue ball! score zero",
                   29: "red ball! score zero", 31: "black ball! score one"})  # fmt: skip


def test_score_slips_by_cause_and_source():
    pred = list(SLIP_GT)
    pred[21] = "black ball! score one"  # missed increment, the last call 18 s back: only in the previous text
    pred[23] = "red bar! score one"  # carried on: not a slip
    pred[27] = "blue ball! score one"  # extra increment after a right whistle, 2 s after it
    pred[29] = "red ball! score one"  # carried on
    pred[31] = "black ball! score two"  # carried on (one + 1 said from the wrong one)
    scored = score_stream(SLIP_GT, _chunks(pred), text_rounds=16)
    assert [(s.t, s.label, s.truth, s.said, s.cause, s.source) for s in scored.slips] == [
        (21.0, "black ball", 2, 1, "missed_increment", "previous_text"),
        (27.0, "blue ball", 0, 1, "extra_increment", "verbatim")]
    assert scored.tally().fact_correct == 3  # 8 calls, 5 wrong: 2 slips and the 3 calls they carried into
    counts = score.count_slips([scored, scored])
    assert counts["total"] == 4 and counts["by_cause"] == {"missed_increment": 2, "extra_increment": 2,
                                                           "missed_reset": 0, "other": 0}
    assert counts["by_source"] == {"verbatim": 2, "previous_text": 2}
    assert counts["by_cause_and_source"]["missed_increment"] == {"verbatim": 0, "previous_text": 2}
    # without text_rounds (a cache that retires nothing) every slip is verbatim
    assert {s.source for s in score_stream(SLIP_GT, _chunks(pred)).slips} == {"verbatim"}
    pred = list(SLIP_GT)
    pred[25] = "whistle! score two"  # missed reset
    pred[27] = "blue ball! score two"  # carried on
    pred[29] = "red ball!"  # a missing score: wrong, carried on
    pred[31] = "black ball! score three"  # carried on
    pred[3] = "black ball!"  # a missing score after a right call: other
    pred[21] = "black ball! score two"  # right again: the next wrong one is a new slip
    slips = score_stream(SLIP_GT, _chunks(pred), text_rounds=16).slips
    assert [(s.t, s.cause, s.said) for s in slips] == [(3.0, "other", None), (25.0, "missed_reset", 2)]


def test_report_per_stream_score_worst_stream_and_slips():
    calls = {k: t for k, t in enumerate(SLIP_GT) if t}
    streams = [synth.Stream(f"d/{n}", Path(f"{n}.mp4"), _record(40, calls), 40.0) for n in ("a", "b", "c")]
    bad = list(SLIP_GT)
    bad[21] = "black ball! score one"
    bad[23] = "red bar! score one"
    records = [{"id": "streaming/d/a", "chunks": _chunks(SLIP_GT), "peak_rss_mb": 1.0},
               {"id": "streaming/d/b", "chunks": _chunks(bad), "peak_rss_mb": 1.0},
               {"id": "streaming/d/c", "chunks": _chunks(SLIP_GT), "peak_rss_mb": 1.0},
               {"id": "full/d/a", "chunks": _chunks(bad), "peak_rss_mb": 1.0},
               {"id": "full/d/b", "chunks": _chunks(SLIP_GT), "peak_rss_mb": 1.0},
               {"id": "full/d/c", "chunks": _chunks(SLIP_GT), "peak_rss_mb": 1.0}]  # fmt: skip
    report = synth.build_report(records, streams, {**SETTINGS, "text_rounds": 16}, ["streaming", "full"])
    s, f = report["modes"]["streaming"], report["modes"]["full"]
    assert s["fact_accuracy_per_stream"] == {"d/a": 1.0, "d/b": 0.75, "d/c": 1.0}
    assert s["fact_accuracy_stream_mean"] == round(2.75 / 3, 4) and s["fact_accuracy"] == round(22 / 24, 4)
    assert s["fact_accuracy_worst"] == s["fact_accuracy_worst_short"] == {"stream": "d/b", "fact_accuracy": 0.75}
    assert s["score_slips"]["by_cause_and_source"]["missed_increment"] == {"verbatim": 0, "previous_text": 1}
    assert s["per_stream"]["d/b"]["score_slips"] == [
        {"t": 21.0, "label": "black ball", "truth": 2, "said": 1, "cause": "missed_increment",
         "source": "previous_text"}]  # fmt: skip
    # full attention retires no turn: its slip is read from the verbatim turns
    assert f["fact_accuracy_worst"] == {"stream": "d/a", "fact_accuracy": 0.75}
    assert f["score_slips"]["by_source"] == {"verbatim": 1, "previous_text": 0}
    target = report["targets"]["streaming_fact_accuracy_worst_short"]
    assert (target["value"], target["streams"], target["pass"]) == (0.75, 3, False)
    line = next(x for x in report["findings"] if x.startswith("streaming:"))
    assert ("worst stream d/b at 0.750; 1 score slip(s) (1 missed increment; 1 with the last score only in the "
            "previous text)") in line
    row = next(r for r in synth.table_rows(report) if r["mode"] == "streaming")
    assert (row["fact worst"], row["slips"]) == (0.75, 1)


# ------------------------------------------------------------------------------------------------------------
# end to end on the tiny model
# ------------------------------------------------------------------------------------------------------------

SECONDS = 20
RESET = 8
TEST_SEED = 2_000_000
MODE_KEYS = {
    "event_f1", "precision", "recall", "fact_accuracy", "fact_accuracy_all", "empty_share", "garbled_share",
    "latency_ms_median", "latency_ms_p90", "peak_cache_tokens", "peak_rss_mb", "first_10_min_f1",
    "last_10_min_f1", "last_vs_first_10_min", "per_minute", "per_stream", "stopped", "coverage",
    "f1_within_training_window", "f1_past_training_window", "fact_accuracy_across_reset",
}  # fmt: skip
CHUNK_KEYS = {"t", "text", "latency_s", "cache_tokens", "new_tokens", "rss_mb"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "heldout"
    write_streams(root, split_specs("test", 1, SECONDS / 60), "test.jsonl", progress=False)
    return root


def _truth() -> dict[int, str]:
    """Ground truth straight from the world's script (independent of the benchmark's reading of the file)."""
    return {e.second: e.text for e in events(TEST_SEED, SECONDS)}


def _argv(model, data, out, *extra):
    return ["--data", str(data), "--model", str(model), "--min-pixels", "3136", "--max-pixels", "3136",
            "--max-new-tokens", "2", "--reset-every", str(RESET), "--device", "cpu", "--dtype", "fp32", "--quiet",
            "--report", str(out / "report.json"), "--out", str(out / "records"), *extra]  # fmt: skip


def _main(argv, patch):
    printed: list[str] = []
    patch.setattr("builtins.print", lambda *a, **k: printed.append(" ".join(map(str, a))))
    try:
        return synth.main(argv), "\n".join(printed)
    finally:
        patch.undo()


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_dir, data):
    """streaming mode is fed the ground truth through force_text (an oracle); sliding mode really generates."""
    out = tmp_path_factory.mktemp("run")
    truth, calls = _truth(), []
    step = StreamSession.step

    def oracle_step(self, frames, start, end, **kwargs):
        calls.append(self.config.mode)
        if self.config.mode == "streaming":
            kwargs["force_text"] = " " + truth.get(round(start), "")
        return step(self, frames, start, end, **kwargs)

    patch = pytest.MonkeyPatch()
    patch.setattr(StreamSession, "step", oracle_step)
    rc, printed = _main(_argv(tiny_model_dir, data, out, "--modes", "streaming,sliding"), patch)
    assert rc == 0
    return json.loads((out / "report.json").read_text()), out, printed, calls


def test_report_shape(run, data):
    report, out, printed, calls = run
    assert calls.count("streaming") == calls.count("sliding") == SECONDS
    assert {"model", "data", "streams", "modes", "targets", "settings", "findings"} <= set(report)
    name = f"{data.name}/test_{TEST_SEED}"
    assert report["streams"] == [{"name": name, "video": str(data / f"videos/test_{TEST_SEED}.mp4"),
                                  "duration_s": float(SECONDS), "gt_calls": len(_truth())}]
    assert list(report["modes"]) == ["streaming", "sliding"]
    for s in report["modes"].values():
        assert MODE_KEYS <= set(s)
        assert len(s["per_minute"]) == 1 and s["per_minute"][0]["streams"] == 1
        assert list(s["per_stream"]) == [name] and len(s["per_stream"][name]["per_minute"]) == 1
        assert s["first_10_min_f1"] is None and s["coverage"] == 1.0 and s["stopped"] == []
        assert s["latency_ms_median"] > 0 and s["peak_rss_mb"] > 0 and s["peak_cache_tokens"] > 0
    assert set(report["targets"]) == {"streaming_event_f1_short", "streaming_last_vs_first_10_min",
                                      "streaming_fact_accuracy", "streaming_fact_accuracy_worst_short"}
    assert report["targets"]["streaming_last_vs_first_10_min"]["pass"] is None  # no stream of 20 min
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "garbled" in printed and "target streaming_event_f1_short >= 0.98: 1.000" in printed


def test_oracle_scores_one_end_to_end(run):
    report = run[0]
    s = report["modes"]["streaming"]
    assert (s["event_f1"], s["precision"], s["recall"], s["fact_accuracy"], s["fact_accuracy_all"]) == (1, 1, 1, 1, 1)
    assert (s["empty_share"], s["garbled_share"], s["gt_calls"], s["matched"]) == (0, 0, len(_truth()), len(_truth()))
    goals, across = {}, 0  # calls whose score reaches back before an 8-s restart, from the script itself
    for e in events(TEST_SEED, SECONDS):
        w = e.second // RESET
        goals[w] = goals.get(w, 0) + ((e.colour, e.shape) == GOAL)
        across += e.score > goals[w]
    assert across > 0 and s["calls_across_reset"] == across and s["fact_accuracy_across_reset"] == 1.0
    assert report["targets"]["streaming_event_f1_short"]["pass"] is True
    assert report["targets"]["streaming_fact_accuracy"] == {
        **report["targets"]["streaming_fact_accuracy"], "value": 1.0, "streams": 1, "pass": True}
    name = report["streams"][0]["name"]
    assert s["fact_accuracy_per_stream"] == {name: 1.0} and s["fact_accuracy_worst"] == {
        "stream": name, "fact_accuracy": 1.0}
    assert s["score_slips"]["total"] == 0 and s["per_stream"][name]["score_slips"] == []


def test_generation_records(run):
    _, out, _, _ = run
    records = {json.loads(line)["id"]: json.loads(line) for line in (out / "records/synth.jsonl").open()}
    assert len(records) == 2
    sliding = next(r for i, r in records.items() if i.startswith("sliding/"))
    assert [c["t"] for c in sliding["chunks"]] == [float(k) for k in range(SECONDS)]
    assert all(set(c) == CHUNK_KEYS and c["latency_s"] > 0 and 0 < c["new_tokens"] <= 2 for c in sliding["chunks"])
    cache = [c["cache_tokens"] for c in sliding["chunks"]]
    assert cache[RESET] < cache[RESET - 1] and cache[2 * RESET] < cache[2 * RESET - 1]  # the context restarts
    assert cache[1] > cache[0] and sliding["stop_reason"] is None and sliding["peak_rss_mb"] > 0


def test_resume_generates_nothing(run, tiny_model_dir, data):
    report, out, _, _ = run

    def fail(*a, **k):
        raise AssertionError("generated again")

    patch = pytest.MonkeyPatch()
    patch.setattr(StreamSession, "step", fail)
    patch.setattr("streaming_vlm.eval.generate.load_eval_model", fail)
    rc, _ = _main(_argv(tiny_model_dir, data, out, "--modes", "streaming,sliding"), patch)
    assert rc == 0
    again = json.loads((out / "report.json").read_text())
    assert again["modes"] == report["modes"] and again["targets"] == report["targets"]


def test_resume_with_other_settings_is_refused(run, tiny_model_dir, data, capsys):
    _, out, _, _ = run
    assert synth.main(_argv(tiny_model_dir, data, out, "--modes", "streaming", "--seed", "3")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "seed=0" in err and "--out" in err


def test_time_budget_stops_visibly(tmp_path, tiny_model_dir, data):
    rc, printed = _main(_argv(tiny_model_dir, data, tmp_path, "--modes", "full", "--max-wall-s", "1e-9"),
                        pytest.MonkeyPatch())
    assert rc == 0
    report = json.loads((tmp_path / "report.json").read_text())
    full, name = report["modes"]["full"], report["streams"][0]["name"]
    assert full["stopped"] == [{"stream": name, "at_s": 1.0, "reason": "time budget"}]
    assert (full["coverage"], full["streamed_s"], len(full["per_minute"])) == (0.05, 1.0, 1)
    assert full["per_stream"][name]["stopped_at_s"] == 1.0 and full["per_stream"][name]["gt_calls"] == 1
    assert "stopped (time budget at 1 s" in printed


def test_out_of_memory_ends_the_item_and_is_recorded(tmp_path, tiny_model_dir, data):
    step = StreamSession.step

    def step_or_oom(self, frames, start, end, **kwargs):
        if start >= 2:
            raise MemoryError("injected")
        return step(self, frames, start, end, **kwargs)

    patch = pytest.MonkeyPatch()
    patch.setattr(StreamSession, "step", step_or_oom)
    rc, _ = _main(_argv(tiny_model_dir, data, tmp_path, "--modes", "recompute"), patch)
    assert rc == 0
    rec = json.loads((tmp_path / "report.json").read_text())["modes"]["recompute"]
    assert [(s["at_s"], s["reason"]) for s in rec["stopped"]] == [(2.0, "out of memory")]
    assert rec["streamed_s"] == 2.0 and math.isclose(rec["coverage"], 0.1)


@pytest.mark.parametrize("which", ["missing dir", "missing annotation"])
def test_bad_data_is_one_line_exit_2(tmp_path, tiny_model_dir, capsys, which):
    target = tmp_path / "nowhere"
    if which == "missing annotation":
        target.mkdir()
    assert synth.main(_argv(tiny_model_dir, target, tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("streaming-vlm eval synth: error:") and "nowhere" in err
    assert not (tmp_path / "report.json").exists()


def test_settings_come_from_flags_then_checkpoint_then_defaults(tmp_path, tiny_model_dir, data):
    """A checkpoint's streaming_vlm.json fills what no flag gives, the benchmark's preset what neither does; the
    streams run with exactly those settings, and the report says where each came from."""
    import shutil

    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    (model / "streaming_vlm.json").write_text(json.dumps({
        "fps": 2.0, "max_new_tokens": 3, "temperature": 0.7, "min_pixels": 3136, "max_pixels": 3136}))
    seen = []
    step = StreamSession.step

    def spy(self, frames, start, end, **kwargs):
        seen.append((self.config, self.preprocessor.spec.min_pixels, self.preprocessor.spec.max_pixels, len(frames)))
        return step(self, frames, start, end, **kwargs)

    patch = pytest.MonkeyPatch()
    patch.setattr(StreamSession, "step", spy)
    argv = ["--data", str(data), "--model", str(model), "--fps", "4", "--text-sink", "unlimited", "--modes",
            "streaming", "--max-minutes", "0.05", "--device", "cpu", "--dtype", "fp32", "--quiet",
            "--report", str(tmp_path / "report.json"), "--out", str(tmp_path / "records"), "--figure", ""]
    rc, _ = _main(argv, patch)
    assert rc == 0 and len(seen) == 3 and not (tmp_path / "report.png").exists()
    config, low, high, frames = seen[0]
    assert (config.fps, frames, config.text_sink, config.sampling.max_new_tokens, config.sampling.temperature) == (
        4.0, 4, None, 3, 0.7)
    assert (config.sampling.repetition_penalty, config.text_window, config.query, config.reset_every) == (
        1.0, 512, "Commentate on this match", 24.0)
    assert (low, high) == (3136, 3136)
    report = json.loads((tmp_path / "report.json").read_text())
    got = report["settings"]
    assert (got["fps"], got["text_sink"], got["max_new_tokens"], got["temperature"]) == (4.0, None, 3, 0.7)
    assert (got["repetition_penalty"], got["text_window"], got["query"]) == (1.0, 512, "Commentate on this match")
    stream = report["meta"]["stream_settings"]
    used = [k for k in SETTING_NAMES if k not in ("total_pixels", "max_frames")]  # excluded: not recorded
    assert list(stream) == used and {k: v for k, v in got.items() if k in stream} == {
        k: stream[k] for k in got if k in stream}  # the report's settings are the ones streamed with
    sources = report["meta"]["stream_settings_sources"]
    assert {k: sources[k] for k in ("fps", "text_sink", "max_new_tokens", "temperature", "min_pixels",
                                    "repetition_penalty", "reset_every", "text_window")} == {
        "fps": "flag", "text_sink": "flag", "max_new_tokens": "checkpoint", "temperature": "checkpoint",
        "min_pixels": "checkpoint", "repetition_penalty": "preset", "reset_every": "preset", "text_window": "default"}
