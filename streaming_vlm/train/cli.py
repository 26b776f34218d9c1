"""The training entry point: ``streaming-vlm train ...`` and ``python -m streaming_vlm.train ...``.

Arguments are those of :func:`streaming_vlm.train.args.parse_args` (``--config FILE.yaml`` plus ``--key value``
overrides). Launch one process per GPU with ``torchrun`` (see ``scripts/sft_stage_1.sh``).

Exit status: 0 trained; 2 a usage error (bad config, annotation files that cannot be opened); 1 bad data (more
distinct bad lines than ``max_bad_sample_fraction`` allows, or ``max_attempts`` bad lines tried for one item), or
a build lock that a killed build left behind (:mod:`streaming_vlm.train.build_lock`).
These errors are one line on stderr, no traceback: ``streaming-vlm train: error: ...``. Under ``torchrun`` an error
that every rank raises at the same point (config, setup, the bad-line stop, which all ranks count together) is printed
by rank 0 alone and every rank exits with the status; an error of one rank (a run of bad lines in its shard) is
printed by that rank, as ``streaming-vlm train: error (rank R): ...``, and torchrun then stops the others (and adds
its own failure summary). Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Sequence

PROG = "streaming-vlm train"


def error_line(exc: BaseException) -> str:
    """An error's one-line message, also when a DataLoader worker raised it: the DataLoader re-raises it in the
    main process with the worker's whole traceback as its message, whose last line is ``module.Type: message``."""
    text = str(exc).strip()
    if "\nOriginal Traceback" in text:
        last = text.splitlines()[-1]
        prefix = f"{type(exc).__module__}.{type(exc).__qualname__}: "
        text = last[len(prefix):] if last.startswith(prefix) else last
    return " ".join(text.split())


def report_error(exc: BaseException, every_rank: bool) -> None:
    """Print ``exc`` on stderr in one line: once (rank 0) if every rank raised it, else with the rank's number."""
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if every_rank and rank != 0:
        return
    where = f" (rank {rank})" if world > 1 and not every_rank else ""
    print(f"{PROG}: error{where}: {error_line(exc)}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, train, and tear the process group down (a live gloo group can crash at exit)."""
    import torch.distributed as dist
    import transformers

    from streaming_vlm.data.dataset import DataError
    from streaming_vlm.train.args import ConfigError, parse_args
    from streaming_vlm.train.build_lock import BuildLockError

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        try:
            model_args, data_args, training_args = parse_args(argv)
        except ConfigError as exc:
            report_error(exc, every_rank=True)
            return 2
        level = logging.INFO if training_args.should_log else logging.WARNING
        logging.getLogger().setLevel(level)
        transformers.utils.logging.set_verbosity(level)

        from streaming_vlm.train.trainer import run_training

        try:
            run_training(model_args, data_args, training_args)
        except DataError as exc:
            report_error(exc, every_rank=exc.every_rank)
            return exc.exit_status
        except BuildLockError as exc:  # every rank waits on the same file for the same time
            report_error(exc, every_rank=True)
            return exc.exit_status
        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # no rank tears down while another is still saving or communicating
    finally:
        # Free the trainer (its DeepSpeed engine holds process-group handles) before the groups go, so that no
        # communication thread is left to C++ static destruction at exit ("terminate called ...").
        gc.collect()
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``train``; every argument after it goes to :func:`main` unchanged (``train --help`` lists them)."""
    # prefix_chars="+": nothing after "train" looks like an option of this parser, so "--config" etc. pass through
    p = subparsers.add_parser(
        "train",
        help="supervised fine-tuning (--config configs/sft_stage1.yaml [--key value ...])",
        description="Supervised fine-tuning; run 'streaming-vlm train --help' for every argument.",
        add_help=False,
        prefix_chars="+",
    )
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="--config FILE.yaml and --key value overrides")
    p.set_defaults(run=lambda args: main(args.train_args))
    return p
