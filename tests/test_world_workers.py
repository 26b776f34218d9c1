"""Reading in several processes: the jobs' results in order, errors raised here, and the repair stage's and the
checkpoint choice's readings the same as one process's."""

from __future__ import annotations

import operator

import pytest

from streaming_vlm.infer import DEMO_MODEL
from streaming_vlm.world import dataset, repair
from streaming_vlm.world.script import DEFAULT_WORLD
from streaming_vlm.world.workers import map_in_processes

pytestmark = pytest.mark.usefixtures("one_thread")


def test_results_come_back_in_the_jobs_order_and_errors_are_raised_here():
    jobs = [(7, 2), (1, 4), (9, 3), (5, 5), (2, 8)]
    assert map_in_processes(operator.truediv, jobs, workers=2) == [a / b for a, b in jobs]
    assert map_in_processes(operator.truediv, jobs, workers=1) == [a / b for a, b in jobs]
    with pytest.raises(ZeroDivisionError):
        map_in_processes(operator.truediv, [(1, 2), (1, 0), (3, 4)], workers=2)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        map_in_processes(operator.truediv, jobs, workers=0)


def test_two_processes_read_every_pool_call_as_one_process_does(tmp_path, capsys):
    specs = [dataset.StreamSpec(dataset.split_seed("train", 900 + i), 60, DEFAULT_WORLD, f"p{i}") for i in range(3)]
    dataset.write_streams(tmp_path, specs, repair.POOL, progress=False, titled=False)
    one = repair.read_calls(DEMO_MODEL, tmp_path, progress=False, workers=1)
    two = repair.read_calls(DEMO_MODEL, tmp_path, progress=False, workers=2)
    assert two == one  # the same calls in stream order, the same probabilities bit for bit
    assert [r.video for r in one] == sorted(r.video for r in one) and len({r.video for r in one}) == 3
    printed = []
    for workers in ("1", "2"):
        assert repair.main([str(tmp_path), str(DEMO_MODEL), "--out", str(tmp_path / f"w{workers}.jsonl"),
                            "--workers", workers, "--threshold", "0.999"]) == 0
        printed.append(capsys.readouterr().out.splitlines())
    # the count (the checkpoint and output path aside) and every hard call printed alike
    assert [printed[0][0].split(" (")[0], *printed[0][1:]] == [printed[1][0].split(" (")[0], *printed[1][1:]]
    assert (tmp_path / "w1.jsonl").read_bytes() == (tmp_path / "w2.jsonl").read_bytes()
