"""The evaluation runner, written once for every benchmark: rank sharding, resumable JSONL, aggregation.

A benchmark hands the runner its items (each with a unique ``id``) and a function that turns one item into
a JSON-serialisable record. Under ``torchrun`` each rank takes every ``world``-th item and appends its
records to its own ``<name>.rank<r>.jsonl`` (flushed and fsynced per item), so a rerun skips what is done;
rank 0 then merges all ranks' files into ``<name>.jsonl``. Without torchrun it is one process, rank 0.
It knows nothing about models, prompts or scores.

Before merging, every rank waits for the slowest at a barrier of a gloo process group that the runner sets up
(the same for every benchmark). Its timeout bounds that wait, which can be a whole shard's run time (a resumed
run where one rank has nothing left to do): :data:`BARRIER_TIMEOUT_S` (24 hours) unless the environment variable
``STREAMING_VLM_EVAL_BARRIER_TIMEOUT_S`` gives another number of seconds. :func:`close_process_group` tears it down
at the end of a run (``eval/harness.py`` does).

It also writes what a benchmark produces: results JSON (:func:`write_results`, :func:`write_json`), JSON lines
(:func:`write_jsonl`), figures
(:func:`save_figure`) and plain-text tables (:func:`format_table`), and aggregates (:func:`percentile`).
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from streaming_vlm.argtypes import env_seconds

log = logging.getLogger(__name__)

MODE_COLORS = {"streaming": "tab:blue", "full": "tab:red", "sliding": "tab:green", "recompute": "tab:orange"}
"""The colour of each engine mode in every benchmark's figures."""
BARRIER_TIMEOUT_S = 24 * 3600.0
BARRIER_TIMEOUT_ENV = "STREAMING_VLM_EVAL_BARRIER_TIMEOUT_S"


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def rank_device(device: str) -> str:
    """Under torchrun, ``auto`` means this rank's own GPU (``cuda:$LOCAL_RANK``, made current); else unchanged."""
    local = os.environ.get("LOCAL_RANK")
    if device != "auto" or local is None:
        return device
    import torch

    if not torch.cuda.is_available():
        return device
    name = f"cuda:{int(local) % torch.cuda.device_count()}"
    torch.cuda.set_device(name)
    return name


def shard(items: Sequence[Any], rank: int, world: int) -> list[Any]:
    """Every ``world``-th item starting at ``rank``: disjoint, covering, balanced, order kept."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world}")
    return list(items[rank::world])


def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a JSONL file; a truncated last line (an interrupted write) is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s: ignoring an incomplete line", path)
    return out


def jsonl_rows(path: str | Path, error: type[Exception] = ValueError, what: str = "file"
               ) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` of each non-blank line of the JSON-lines input ``path``, strictly (unlike
    :func:`read_jsonl`): raises ``error`` with one line when the file does not exist (``WHAT not found: PATH``) or a
    line is not JSON (``PATH: line N is not JSON (...)``) or not a JSON object (``PATH: line N is not a JSON
    object``)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{path}: line {n} is not JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise error(f"{path}: line {n} is not a JSON object")
            yield n, row


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one record to a JSONL file, flushed and fsynced (a crash loses at most the line being written)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _drop_torn_tail(path: Path) -> None:
    """Cut an incomplete last line (a write interrupted by a crash) so appends start on a fresh line."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
        log.warning("%s: dropped an incomplete last line", path)


def barrier_timeout_s() -> float:
    """Seconds the ranks wait for each other: ``$STREAMING_VLM_EVAL_BARRIER_TIMEOUT_S``, else 24 hours.

    Raises ValueError (one line) when the variable is set to anything but a positive number.
    """
    return env_seconds(BARRIER_TIMEOUT_ENV, BARRIER_TIMEOUT_S)


def _barrier(world: int) -> None:
    """Wait for every rank (a torch.distributed barrier when running under torchrun); a process group not yet
    set up is made here (gloo), with :func:`barrier_timeout_s` as its timeout."""
    if world <= 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=barrier_timeout_s()))
    dist.barrier()


def close_process_group() -> None:
    """Tear down the process group :func:`_barrier` set up (or anyone else did), if there is one."""
    if "torch.distributed" not in sys.modules:  # never imported: no group to close
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def run_items(
    name: str,
    items: Iterable[dict],
    fn: Callable[[dict], dict],
    out_dir: str | Path,
    *,
    progress: bool = True,
    finished: Callable[[dict], bool] | None = None,
) -> list[dict] | None:
    """Evaluate ``items`` with ``fn`` (one record per item, carrying the item's ``id``), resumably.

    A rerun skips the items that have a record, except those whose record ``finished(record)`` calls unfinished
    (e.g. a judge's invalid verdict, to ask again; default: every record is finished): they are evaluated again and
    the new record is appended. When merging, an item's last record wins, unless it is unfinished and an earlier
    one is not. Returns all records merged (on rank 0, in item order) or None on other ranks. Raises ValueError for
    duplicate ids or a bad ``$STREAMING_VLM_EVAL_BARRIER_TIMEOUT_S`` (before any work).
    """
    from tqdm import tqdm

    def is_finished(record: dict) -> bool:
        return finished is None or bool(finished(record))

    barrier_timeout_s()  # a bad value fails now, not after the work
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rank, world = rank_and_world()
    items = list(items)
    ids = [it["id"] for it in items]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{name}: item ids are not unique")
    mine = shard(items, rank, world)
    part = out / f"{name}.rank{rank}.jsonl"
    _drop_torn_tail(part)
    existing = read_jsonl(part)
    done = {r["id"] for r in existing if is_finished(r)}
    todo = [it for it in mine if it["id"] not in done]
    if existing:
        seen = {r["id"] for r in existing}
        redo = sum(it["id"] in seen for it in todo)
        log.info("%s: rank %d resumes, %d of %d items already done%s", name, rank, len(mine) - len(todo), len(mine),
                 f", {redo} unfinished ones run again" if redo else "")
    for item in tqdm(todo, desc=f"{name} (rank {rank})", disable=not progress or not todo):
        t0 = time.perf_counter()
        record = fn(item)
        record.setdefault("id", item["id"])
        record.setdefault("elapsed_s", round(time.perf_counter() - t0, 4))
        append_jsonl(part, record)
    _barrier(world)
    if rank != 0:
        return None
    merged: dict[Any, dict] = {}
    for r in range(world):
        for rec in read_jsonl(out / f"{name}.rank{r}.jsonl"):
            old = merged.get(rec["id"])
            if old is None or is_finished(rec) or not is_finished(old):
                merged[rec["id"]] = rec
    missing = [i for i in ids if i not in merged]
    if missing:
        raise RuntimeError(f"{name}: {len(missing)} items have no result (first: {missing[0]!r})")
    records = [merged[i] for i in ids]
    write_jsonl(out / f"{name}.jsonl", records)
    return records


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    """``rows`` as JSON lines, written whole then renamed into place (a reader never sees half a file); folders
    created; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def write_results(path: str | Path, results: dict) -> Path:
    """``results`` as indented JSON (folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def _to_json(obj: Any, level: int = 0) -> str:
    """Indented JSON, except that lists of records are written one record per line."""
    pad = "  " * level
    if isinstance(obj, dict) and obj:
        items = [f"{pad}  {json.dumps(str(k))}: {_to_json(v, level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and obj and all(isinstance(x, dict) for x in obj):
        items = [f"{pad}  {json.dumps(x)}" for x in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(obj)


def write_json(doc: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """``doc`` as indented JSON with each list of records one record per line (long per-chunk series stay
    readable); folders created; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_to_json(doc) + "\n", encoding="utf-8")
    return path


def save_figure(fig, path: str | os.PathLike[str]) -> Path:
    """Write a matplotlib figure (creating folders) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of ``values`` (``q`` in [0, 100]); None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100.0 * len(ordered)) - 1))]


def format_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """A plain-text table of ``rows`` (dicts), floats with 4 significant digits."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())

    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    cells = [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)
