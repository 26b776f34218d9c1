"""Reading with checkpoints in several processes: the demo recipe's checkpoint choice and repair stage.

``map_in_processes(fn, jobs, workers)`` is ``[fn(*job) for job in jobs]`` in order, computed in ``workers``
processes (spawned: the parent may hold torch's OpenMP threads, which a forked child must not inherit), each
running torch with ``threads`` threads (default: this process's threads shared out among them, at least one);
with one worker, in this process. :func:`reader` gives each process one
:class:`~streaming_vlm.world.select.TeacherForced` per checkpoint, loaded on first use.

Why: on the demo's small model a 2-thread forward leaves much of the 2 cores idle (a pool call read teacher-forced:
45 ms with 2 threads, 72 ms with 1, so two 1-thread processes read one every 36 ms), and a 1-thread forward gives
the same numbers as a 2-thread one (all of 192 pool calls' probabilities equal, bit for bit, on this CPU).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def default_workers() -> int:
    """One per CPU core this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _set_threads(threads: int) -> None:
    if not threads:  # 0: jobs without torch, which is then never imported
        return
    import torch

    torch.set_num_threads(threads)


def map_in_processes(fn: Callable[..., T], jobs: Sequence[tuple], workers: int = 1, threads: int | None = None,
                     desc: str | None = None, unit: str = "job", progress: bool = False) -> list[T]:
    """``[fn(*job) for job in jobs]``, in ``min(workers, len(jobs))`` processes (module doc); ``fn`` must be a
    module-level function and the jobs picklable. A job that raises stops the rest and raises here. ``threads``:
    torch's threads in each process (``None``: this process's shared out; 0: torch left alone, for jobs without
    it)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    workers = min(workers, len(jobs))
    bar = tqdm(total=len(jobs), desc=desc, unit=unit, disable=not progress or not jobs)
    if workers <= 1:
        out = []
        for job in jobs:
            out.append(fn(*job))
            bar.update()
        bar.close()
        return out
    if threads is None:
        import torch

        threads = max(1, torch.get_num_threads() // workers)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_set_threads,
                             initargs=(threads,)) as pool:
        futures = [pool.submit(fn, *job) for job in jobs]
        for future in futures:
            future.add_done_callback(lambda _: bar.update())
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        finally:
            bar.close()


@lru_cache(maxsize=2)
def reader(model_dir: str | Path, frame_cache_mb: int = 0) -> Any:
    """This process's :class:`~streaming_vlm.world.select.TeacherForced` of ``model_dir`` (loaded once)."""
    from streaming_vlm.world.select import TeacherForced

    return TeacherForced(model_dir, frame_cache_mb=frame_cache_mb)
