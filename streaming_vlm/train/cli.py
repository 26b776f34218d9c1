"""The training entry point: ``streaming-vlm train ...`` and ``python -m streaming_vlm.train ...``.

Arguments are those of :func:`streaming_vlm.train.args.parse_args` (``--config FILE.yaml`` plus ``--key value``
overrides). Launch one process per GPU with ``torchrun`` (see ``scripts/sft_stage_1.sh``).
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, train, and tear the process group down (a live gloo group can crash at exit)."""
    import torch.distributed as dist
    import transformers

    from streaming_vlm.train.args import ConfigError, parse_args

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        try:
            model_args, data_args, training_args = parse_args(argv)
        except ConfigError as exc:
            print(f"streaming-vlm train: error: {exc}", file=sys.stderr)
            return 2
        level = logging.INFO if training_args.should_log else logging.WARNING
        logging.getLogger().setLevel(level)
        transformers.utils.logging.set_verbosity(level)

        from streaming_vlm.train.trainer import run_training

        run_training(model_args, data_args, training_args)
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
