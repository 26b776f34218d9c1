"""The evaluation runner: sharding, resumable JSONL, merging across ranks."""

from __future__ import annotations

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
