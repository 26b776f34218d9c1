"""``scripts/bench_serve.py``: the live server's capacity benchmark and soak, run briefly through real servers on
127.0.0.1 (structure and consistency of the JSON, the figures and the table; no timing assertions), and its
summaries on hand-made events (the real-time verdict, time to first answer token, the capacity, memory per session,
RSS growth)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")
pytest.importorskip("websockets")

from streaming_vlm.serve import bench  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
SESSION_KEYS = {
    "id", "source", "chunks", "expected", "skipped", "missing", "latency_p50", "latency_p95", "lag_p50", "lag_p95",
    "delay_p50", "delay_p95", "delay_max", "delivery_p50", "delivery_p95", "asked", "answered", "ttft_p50", "ttft_p95",
    "first_token_p50", "first_token_p95", "cache_tokens_max", "end", "served_realtime", "why",
}  # fmt: skip
LEVEL_KEYS = {
    "n", "duration_s", "served_realtime", "sessions_served_realtime", "latency_p50", "latency_p95", "lag_p50",
    "lag_p95", "delay_p50", "delay_p95", "delay_max", "worst_session_delay_p95", "best_session_delay_p95", "ttft_p50",
    "ttft_p95", "first_token_p50", "first_token_p95", "delivery_p50", "delivery_p95", "chunks", "skipped",
    "chunks_min", "chunks_max", "asked", "answered", "idle_rss_mb", "steady_rss_mb", "peak_rss_mb",
    "rss_per_session_mb", "server_cores", "machine_busy_cores", "machine_niced_cores", "load1", "warmup", "sessions",
    "samples",
}  # fmt: skip
META_KEYS = {
    "kind", "date", "command", "model", "device", "max_lag_s", "question", "question_every_s", "sample_s",
    "server_extra_args", "server_omp_num_threads", "server_torch_threads", "cpu_count", "loadavg_start", "python",
    "platform", "torch", "transformers", "uvicorn", "fastapi", "minutes", "loadavg_end", "machine", "shared_machine",
}  # fmt: skip
SUMMARY_KEYS = {
    "server_torch_threads", "capacity_sessions", "capacity_min_s", "target_sessions", "meets_target",
    "largest_served_any_length", "smallest_failed_any_length", "rss_per_session_mb", "rss_intercept_mb",
    "other_threads",
}  # fmt: skip
SOAK_SUMMARY_KEYS = {
    "duration_s", "warmup_s", "window_s", "rss_start_mb", "rss_after_warmup_mb", "rss_end_mb", "rss_growth_pct",
    "rss_growth_ok", "rss_trend_mb_per_h", "rss_min_after_warmup_mb", "rss_max_after_warmup_mb",
    "latency_p50_first_window", "latency_p50_last_window", "latency_ratio_last_vs_first", "server_cores", "session",
}  # fmt: skip
SAMPLE_KEYS = {"t", "rss_mb", "server_cpu_s", "busy_cores", "niced_cores", "load1"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``bench_serve.py capacity`` (1 then 2 sessions of 6 s) and ``soak`` (one session of 9 s), run at once as
    subprocesses with one torch thread for the servers: their documents, figures and printed output."""
    out = tmp_path_factory.mktemp("bench_serve")
    common = ["--media", str(out / "media"), "--server-threads", "1", "--question-every-s", "2", "--sample-s", "0.5",
              "--quiet"]
    commands = {
        "capacity": ["capacity", "--levels", "1,2", "--minutes", "0.1", "--stop-after-failures", "2",
                     "--out", str(out / "cap.json"), "--figure", str(out / "cap.png"), *common],
        "soak": ["soak", "--minutes", "0.15", "--warmup-minutes", "0.05", "--window-minutes", "0.05",
                 "--out", str(out / "soak.json"), "--figure", str(out / "soak.png"), *common],
    }  # fmt: skip
    procs = {name: subprocess.Popen([sys.executable, str(REPO / "scripts" / "bench_serve.py"), *argv], cwd=REPO,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, argv in commands.items()}
    done = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name}: {stderr[-3000:]}"
        done[name] = stdout
    return {"out": out, "capacity": json.loads((out / "cap.json").read_text()),
            "soak": json.loads((out / "soak.json").read_text()), "stdout": done}


def _ordered(low, high) -> bool:
    return low is not None and high is not None and 0 <= low <= high


@pytest.mark.slow
def test_capacity_document(runs):
    doc, out = runs["capacity"], runs["out"]
    assert (out / "cap.png").read_bytes()[:8] == PNG
    assert set(doc) == {"runs", "summary"} and len(doc["runs"]) == 1
    meta, levels = doc["runs"][0]["meta"], doc["runs"][0]["levels"]
    assert set(meta) >= META_KEYS and meta["kind"] == "capacity" and meta["levels_asked"] == [1, 2]
    assert meta["server_omp_num_threads"] == "1" and meta["server_torch_threads"] == 1
    assert meta["model"] == "demo" and meta["minutes"] == 0.1 and len(meta["loadavg_start"]) == 3
    for proc in meta["machine"]["other_processes"]:
        assert set(proc) == {"pid", "nice", "cpu_cores", "command"} and proc["cpu_cores"] >= 0.05
    assert [lv["n"] for lv in levels] == [1, 2]
    for level in levels:
        assert set(level) == LEVEL_KEYS and level["duration_s"] == 6.0
        assert len(level["sessions"]) == level["n"]
        assert len({s["source"] for s in level["sessions"]}) == level["n"]  # each session its own stream
        assert level["warmup"]["chunks"] == 3 and level["warmup"]["idle_rss_mb"] > 50
        assert level["samples"] and set(level["samples"][0]) == SAMPLE_KEYS
        ts = [s["t"] for s in level["samples"]]
        assert ts == sorted(ts) and all(s["rss_mb"] > 50 for s in level["samples"])
        assert level["steady_rss_mb"] > 50 and level["peak_rss_mb"] >= level["steady_rss_mb"]
        for s in level["sessions"]:
            assert set(s) == SESSION_KEYS
            assert s["end"] == "end of stream" and s["expected"] == 6 and s["missing"] == 0
            assert s["chunks"] + s["skipped"] == 6 and s["chunks"] >= 1
            assert _ordered(s["latency_p50"], s["latency_p95"]) and _ordered(s["lag_p50"], s["lag_p95"])
            assert _ordered(s["delay_p50"], s["delay_p95"]) and s["delay_max"] >= s["delay_p95"]
            assert s["asked"] >= 1 and s["answered"] == s["asked"]  # each asked in time for a chunk
            assert _ordered(s["ttft_p50"], s["ttft_p95"]) and _ordered(s["first_token_p50"], s["first_token_p95"])
            assert s["served_realtime"] == (not s["why"])
            assert s["served_realtime"] == (s["skipped"] == 0 and s["delay_p95"] < 2.0)
        assert level["served_realtime"] == all(s["served_realtime"] for s in level["sessions"])
        assert level["chunks"] == sum(s["chunks"] for s in level["sessions"])
        assert level["answered"] == sum(s["answered"] for s in level["sessions"])
        assert level["worst_session_delay_p95"] == max(s["delay_p95"] for s in level["sessions"])
    summary = doc["summary"]
    assert set(summary) == SUMMARY_KEYS and summary["server_torch_threads"] == 1 and summary["other_threads"] == {}
    assert summary["capacity_sessions"] == 0  # no level of 10 minutes
    served = [lv["n"] for lv in levels if lv["served_realtime"]]
    assert summary["largest_served_any_length"] == max(served, default=0)
    slope = levels[1]["steady_rss_mb"] - levels[0]["steady_rss_mb"]  # two points: the fit is the line through them
    assert summary["rss_per_session_mb"] == pytest.approx(slope, abs=0.01)
    table = runs["stdout"]["capacity"]
    assert "| 1 | 1 | 0.1 |" in table and "| 2 | 1 | 0.1 |" in table


@pytest.mark.slow
def test_capacity_replot_and_append(runs, tmp_path):
    """--replot redraws from the JSON alone; --append keeps earlier runs (here: the same run twice)."""
    out = runs["out"]
    png = tmp_path / "again.png"
    argv = ["capacity", "--replot", "--out", str(out / "cap.json"), "--figure", str(png)]
    assert bench.main(argv) == 0 and png.read_bytes()[:8] == PNG
    doubled = {"runs": runs["capacity"]["runs"] * 2}
    summary = bench.summarize_runs(doubled)
    assert summary["rss_per_session_mb"] == runs["capacity"]["summary"]["rss_per_session_mb"]
    assert len(bench.capacity_table(doubled).splitlines()) == 2 + 4


@pytest.mark.slow
def test_soak_document(runs):
    doc, out = runs["soak"], runs["out"]
    assert (out / "soak.png").read_bytes()[:8] == PNG
    assert set(doc) == {"meta", "summary", "minutes", "samples"}
    assert set(doc["meta"]) >= META_KEYS and doc["meta"]["kind"] == "soak" and doc["meta"]["minutes"] == 0.15
    s = doc["summary"]
    assert set(s) == SOAK_SUMMARY_KEYS and s["duration_s"] == 9.0 and s["warmup_s"] == 3.0 and s["window_s"] == 3.0
    assert s["session"]["end"] == "end of stream" and s["session"]["chunks"] + s["session"]["skipped"] == 9
    assert isinstance(s["rss_growth_pct"], float) and s["rss_growth_ok"] == (s["rss_growth_pct"] < 1.0)
    assert s["rss_min_after_warmup_mb"] <= s["rss_after_warmup_mb"] <= s["rss_max_after_warmup_mb"]
    assert len(doc["samples"]) >= 10 and set(doc["samples"][0]) == SAMPLE_KEYS
    assert [m["minute"] for m in doc["minutes"]] == [0] and doc["minutes"][0]["chunks"] == s["session"]["chunks"]
    assert '"rss_growth_pct"' in runs["stdout"]["soak"]


# ---- summaries on hand-made events -----------------------------------------------------------------------------


def _chunk(index: int, *, latency=0.05, lag=0.01, delay=0.06, event="commentary", **extra) -> dict:
    return {"type": event, "index": index, "start": float(index), "latency_s": latency, "lag_s": lag,
            "delay_s": delay, "cache_tokens": 10 * index, "new_tokens": 3, "at": 1000.0 + index, **extra}


def _session(n_chunks: int = 10, *, skip: int = 0, delays=None, reason: str = "end of stream") -> bench.SessionRun:
    run = bench.SessionRun({"source": "streams/a.mp4", "duration": n_chunks})
    for i in range(n_chunks - skip):
        index = i + skip
        if skip and i == 0:
            run.record({"type": "skipped", "start": 0.0, "count": skip}, 1.0, 1000.0)
        run.record(_chunk(index, delay=(delays or {}).get(index, 0.06)), 1.0 + index, 1000.0 + index + 0.002)
    run.record({"type": "end", "reason": reason, "error": reason != "end of stream"}, 99.0, 1099.0)
    return run


def test_session_verdict():
    ok = bench.session_summary(_session(), expected=10, max_lag_s=2.0)
    assert ok["served_realtime"] and ok["why"] == [] and ok["chunks"] == 10 and ok["delivery_p50"] == 0.002
    skipped = bench.session_summary(_session(skip=2), expected=10, max_lag_s=2.0)
    assert not skipped["served_realtime"] and skipped["why"] == ["2 chunk(s) skipped"] and skipped["missing"] == 0
    # 1 chunk in 10 at 2.5 s: the nearest-rank p95 of 10 values is the largest
    slow = bench.session_summary(_session(delays={4: 2.5}), expected=10, max_lag_s=2.0)
    assert not slow["served_realtime"] and slow["delay_p95"] == 2.5 and slow["why"][0].startswith("commentary lag")
    short = bench.session_summary(_session(8), expected=10, max_lag_s=2.0)
    assert short["missing"] == 2 and not short["served_realtime"]
    died = bench.session_summary(_session(reason="model error: boom"), expected=10, max_lag_s=2.0)
    assert died["why"] == ["ended: model error: boom"]
    refused = bench.SessionRun({"source": "x"}, refused="429: full")
    assert bench.session_summary(refused, expected=10, max_lag_s=2.0)["end"] == "refused 429: full"


def test_time_to_first_answer_token():
    """The client's clock: from sending to the first token event, or to the answer when no token came."""
    run = bench.SessionRun({"source": "x"})
    run.created_at = 100.0
    run._sent = {"b0": 101.0, "b1": 110.0}
    run.record({"type": "question", "question_id": "q1", "ref": "b0", "text": "?"}, 101.01, 0.0)
    run.record({"type": "token", "question_id": "q1", "text": "a", "delta": "a"}, 101.7, 0.0)
    run.record({"type": "token", "question_id": "q1", "text": "ab", "delta": "b"}, 101.8, 0.0)
    run.record(_chunk(1, event="answer", question_id="q1", first_token_s=0.3, wait_s=0.65), 102.0, 1001.0)
    run.record({"type": "question", "question_id": "q2", "ref": "b1", "text": "?"}, 110.01, 0.0)
    run.record(_chunk(2, event="answer", question_id="q2", first_token_s=0.2, wait_s=0.4), 110.5, 1002.0)
    assert [a["ttft_s"] for a in run.answers] == [pytest.approx(0.7), pytest.approx(0.5)]
    assert [a["wait_s"] for a in run.answers] == [0.65, 0.4] and len(run.chunks) == 2
    assert run.chunks[0]["t"] == pytest.approx(2.0)


def test_capacity_summary():
    def level(n, minutes, ok, rss):
        return {"n": n, "duration_s": minutes * 60.0, "served_realtime": ok, "steady_rss_mb": rss}

    levels = [level(1, 2, True, 410.0), level(4, 2, True, 440.0), level(8, 2, True, 480.0), level(12, 2, False, 520.0),
              level(8, 10, True, 480.0), level(12, 10, False, 520.0)]  # fmt: skip
    s = bench.capacity_summary(levels, target=8)
    assert s["capacity_sessions"] == 8 and s["meets_target"] and s["largest_served_any_length"] == 8
    assert s["smallest_failed_any_length"] == 12
    slope, intercept = np.polyfit([1, 4, 8, 12, 8, 12], [410.0, 440.0, 480.0, 520.0, 480.0, 520.0], 1)
    assert s["rss_per_session_mb"] == pytest.approx(slope, abs=1e-3)
    assert s["rss_intercept_mb"] == pytest.approx(intercept, abs=1e-2)
    assert bench.capacity_summary([level(4, 2, True, 440.0)])["capacity_sessions"] == 0  # screening only


def test_soak_growth():
    """Growth compares the medians of the first window after warm-up and the last window."""
    samples = [{"t": float(t), "rss_mb": 400.0 + (50.0 if t < 60 else 0.0) + (4.0 if t >= 540 else 0.0),
                "server_cpu_s": (0.25 if t < 60 else 0.5) * t} for t in range(0, 601, 10)]
    run = _session(600)
    s = bench.soak_summary(run, samples, duration_s=600.0, warmup_s=60.0, window_s=60.0, max_lag_s=2.0)
    assert s["rss_after_warmup_mb"] == 400.0 and s["rss_end_mb"] == 404.0
    assert s["rss_growth_pct"] == pytest.approx(1.0) and not s["rss_growth_ok"]  # 1 % is not under 1 %
    assert s["rss_start_mb"] == 450.0 and s["rss_max_after_warmup_mb"] == 404.0
    assert s["rss_trend_mb_per_h"] > 0 and s["server_cores"] == 0.5  # after warm-up
    assert s["latency_ratio_last_vs_first"] == 1.0 and s["session"]["served_realtime"]


def test_usage_errors(capsys):
    for argv in (["capacity", "--levels", "4,2"], ["capacity", "--levels", "0"], ["capacity", "--minutes", "0"],
                 ["soak", "--minutes", "4"], ["nothing"]):
        with pytest.raises(SystemExit) as exc:
            bench.main(argv)
        assert exc.value.code == 2, argv
    assert bench.main(["soak", "--replot", "--out", "/nonexistent/soak.json"]) == 1
    assert "does not exist" in capsys.readouterr().err
