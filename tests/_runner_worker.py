"""Run by tests/test_eval_runner.py under torchrun: each rank evaluates its shard of 10 items."""

import sys

from streaming_vlm.eval.runner import rank_and_world, run_items

out = sys.argv[1]
items = [{"id": f"item{i}", "x": i} for i in range(10)]
rank, _ = rank_and_world()
records = run_items("squares", items, lambda it: {"y": it["x"] ** 2, "rank": rank}, out, progress=False)
if records is not None:
    assert [r["y"] for r in records] == [i * i for i in range(10)]
    assert {r["rank"] for r in records} == {0, 1}
import torch.distributed as dist  # noqa: E402

if dist.is_initialized():
    dist.barrier()
    dist.destroy_process_group()
