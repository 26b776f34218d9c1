"""The evaluation runner: sharding, resumable JSONL, merging across ranks."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys

import pytest

from streaming_vlm.eval import runner
from streaming_vlm.eval.runner import format_table, read_jsonl, run_items, shard

ITEMS = [{"id": f"q{i}", "x": i} for i in range(7)]


def test_shards_are_disjoint_covering_and_balanced():
    parts = [shard(ITEMS, r, 3) for r in range(3)]
    ids = [it["id"] for p in parts for it in p]
    assert sorted(ids) == sorted(it["id"] for it in ITEMS) and len(ids) == len(set(ids))
    assert [len(p) for p in parts] == [3, 2, 2]
    with pytest.raises(ValueError):
        shard(ITEMS, 3, 3)


def test_rerun_skips_finished_items(tmp_path, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    calls, crash = [], [True]

    class Crash(Exception):
        pass

    def flaky(item):
        calls.append(item["id"])
        if item["x"] == 4 and crash.pop() if crash else False:
            raise Crash  # the first run dies half-way
        return {"y": item["x"] * 10}

    with pytest.raises(Crash):
        run_items("bench", ITEMS, flaky, tmp_path, progress=False)
    assert len(read_jsonl(tmp_path / "bench.rank0.jsonl")) == 4
    with open(tmp_path / "bench.rank0.jsonl", "a") as f:
        f.write('{"id": "q9", "trunc')  # a torn last line from the crash is ignored
    calls.clear()
    records = run_items("bench", ITEMS, flaky, tmp_path, progress=False)
    assert calls == ["q4", "q5", "q6"]  # only what was not done
    assert [r["y"] for r in records] == [i * 10 for i in range(7)]
    merged = [json.loads(line) for line in open(tmp_path / "bench.jsonl")]
    assert [r["id"] for r in merged] == [it["id"] for it in ITEMS]


def test_rank_files_are_merged_on_rank_0(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "_barrier", lambda world: None)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert run_items("m", ITEMS, lambda it: {"r": 1}, tmp_path, progress=False) is None
    monkeypatch.setenv("RANK", "0")
    records = run_items("m", ITEMS, lambda it: {"r": 0}, tmp_path, progress=False)
    assert [r["r"] for r in records] == [0, 1, 0, 1, 0, 1, 0]


def test_missing_results_and_duplicate_ids_are_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "_barrier", lambda world: None)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(RuntimeError, match="no result"):
        run_items("m", ITEMS, lambda it: {}, tmp_path, progress=False)  # rank 1 never ran
    with pytest.raises(ValueError, match="unique"):
        run_items("d", [{"id": 1}, {"id": 1}], lambda it: {}, tmp_path, progress=False)


def test_unfinished_records_are_run_again_and_win_only_when_finished(tmp_path, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    calls = []

    def judge(good):
        def fn(item):
            calls.append(item["id"])
            return {"ok": good or item["x"] % 3 != 0}  # q0, q3, q6 fail unless good

        return fn

    def finished(record):
        return record["ok"]

    first = run_items("j", ITEMS, judge(False), tmp_path, progress=False, finished=finished)
    assert [r["ok"] for r in first] == [False, True, True, False, True, True, False]
    calls.clear()
    second = run_items("j", ITEMS, judge(True), tmp_path, progress=False, finished=finished)
    assert calls == ["q0", "q3", "q6"]  # exactly the unfinished ones
    assert all(r["ok"] for r in second) and [r["id"] for r in second] == [it["id"] for it in ITEMS]
    calls.clear()
    assert run_items("j", ITEMS, judge(True), tmp_path, progress=False, finished=finished) == second
    assert calls == []
    # An unfinished record after a finished one (e.g. from another world size) does not replace it.
    with open(tmp_path / "j.rank0.jsonl", "a") as f:
        f.write(json.dumps({"id": "q1", "ok": False}) + "\n")
    assert run_items("j", ITEMS, judge(True), tmp_path, progress=False, finished=finished)[1]["ok"] is True
    assert calls == []


def fake_process_group(monkeypatch, state: dict | None = None):
    """torch.distributed's set-up, barrier and tear-down recorded instead of run; returns the init calls.
    ``state["up"]`` says whether the fake group is up."""
    import torch.distributed as dist

    calls, state = [], state if state is not None else {}
    state["up"] = False

    def init_process_group(backend, **kw):
        calls.append((backend, kw))
        state["up"] = True

    monkeypatch.setattr(dist, "is_initialized", lambda: state["up"])
    monkeypatch.setattr(dist, "init_process_group", init_process_group)
    monkeypatch.setattr(dist, "barrier", lambda: None)
    monkeypatch.setattr(dist, "destroy_process_group", lambda: state.update(up=False))
    return calls


@pytest.mark.parametrize("env, seconds", [(None, 24 * 3600), ("90", 90), (" 7200.5 ", 7200.5)])
def test_the_barrier_has_one_timeout_for_every_benchmark(env, seconds, tmp_path, monkeypatch):
    calls = fake_process_group(monkeypatch)
    if env is None:
        monkeypatch.delenv(runner.BARRIER_TIMEOUT_ENV, raising=False)
    else:
        monkeypatch.setenv(runner.BARRIER_TIMEOUT_ENV, env)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert run_items("t", ITEMS, lambda it: {}, tmp_path, progress=False) is None
    assert calls == [("gloo", {"timeout": datetime.timedelta(seconds=seconds)})]


@pytest.mark.parametrize("value", ["abc", "0", "-5", "inf", "nan"])
def test_a_bad_barrier_timeout_fails_before_any_work(value, tmp_path, monkeypatch):
    calls = fake_process_group(monkeypatch)
    monkeypatch.setenv(runner.BARRIER_TIMEOUT_ENV, value)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    done = []
    with pytest.raises(ValueError, match=f"{runner.BARRIER_TIMEOUT_ENV} must be a positive number of seconds"):
        run_items("t", ITEMS, lambda it: done.append(it) or {}, tmp_path, progress=False)
    assert done == [] and calls == [] and list(tmp_path.iterdir()) == []


def test_two_processes_under_torchrun(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "tests._runner_worker", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(read_jsonl(tmp_path / "squares.jsonl")) == 10
    assert len(read_jsonl(tmp_path / "squares.rank0.jsonl")) == 5 == len(read_jsonl(tmp_path / "squares.rank1.jsonl"))


def test_format_table():
    text = format_table([{"task": "EPM", "acc": 0.5}, {"task": "OCR", "acc": 0.123456}])
    lines = text.splitlines()
    assert lines[0].split() == ["task", "acc"] and lines[3].split() == ["OCR", "0.1235"]


class _DataError(Exception):
    pass


@pytest.mark.parametrize("text, message", [
    (None, "items not found: {path}"),
    ('{"a": 1}\n\n{"a": 2\n', "{path}: line 3 is not JSON (Expecting ',' delimiter)"),
    ('{"a": 1}\n[1, 2]\n', "{path}: line 2 is not a JSON object"),
])  # fmt: skip
def test_jsonl_rows_reads_inputs_strictly(tmp_path, text, message):
    """The one strict reader of a benchmark's JSON-lines inputs: line numbers count blank lines, and every problem is
    one line in the benchmark's own error type (read_jsonl, for the runner's own files, skips a torn line)."""
    path = tmp_path / "in.jsonl"
    if text is not None:
        path.write_text(text)
    with pytest.raises(_DataError) as err:
        list(runner.jsonl_rows(path, _DataError, "items"))
    assert str(err.value) == message.format(path=path)


def test_jsonl_rows_yields_line_numbers_and_objects(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"a": 1}\n\n  \n{"b": [2]}\n')
    assert list(runner.jsonl_rows(path)) == [(1, {"a": 1}), (4, {"b": [2]})]
