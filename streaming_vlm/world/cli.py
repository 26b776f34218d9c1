"""``streaming-vlm synth``: write streams of the synthetic world (videos + annotations), or the demo's training set."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from streaming_vlm.argtypes import non_negative_int, positive_float, positive_int


def add_parser(sub) -> argparse.ArgumentParser:
    from streaming_vlm.world.script import WorldConfig

    p = sub.add_parser(
        "synth", help="synthetic stream world: videos with word-timestamped commentary",
        description="Write synthetic streams (mp4 + annotations in the SFT format) to OUT_DIR. With --seed, one "
                    "stream; with --split, STREAMS streams from that split's fixed seeds (train, valid, test and "
                    "heldout never overlap; heldout is the demo's held-out evaluation set: 20 x 10 min from index 0, "
                    "3 x 60 min from index 20); with --training-set, the demo model's SFT data.")
    p.add_argument("out_dir", help="directory to write (created); use it as $DATASET_PATH")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--seed", type=int, help="write the one stream with this seed (annotation: stream.jsonl)")
    which.add_argument("--split", choices=["train", "valid", "test", "heldout"],
                       help="write streams of this split (<split>.jsonl)")
    which.add_argument("--training-set", action="store_true", help="write the demo model's SFT data")
    p.add_argument("--streams", type=positive_int, default=1, help="streams to write with --split (default 1)")
    p.add_argument("--first", type=non_negative_int, default=0,
                   help="with --split: index of the first stream in the split (default 0)")
    p.add_argument("--minutes", type=positive_float, default=10.0, help="length of each stream (default 10)")
    p.add_argument("--window", type=positive_float, default=None,
                   help="with --training-set: seconds of each stage's main training windows (default 24)")
    p.add_argument("--stride", type=positive_float, default=None,
                   help="with --training-set: seconds between their starts (default 12)")
    world = WorldConfig()
    p.add_argument("--density", type=float, default=None,
                   help=f"probability that a second shows an object ({world.density:g})")
    p.add_argument("--speed", type=float, default=None, help=f"object speed in pixels per second ({world.speed:g})")
    p.add_argument("--whistle-rate", type=float, default=None,
                   help=f"probability that a second is a whistle (1/{1 / world.whistle_rate:g})")
    p.add_argument("--kickoff", action=argparse.BooleanOptionalAction, default=None,
                   help="open each stream with a whistle at second 0; --no-kickoff starts it mid-match, the score "
                        "zero but unannounced (default: on)")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="processes that write the videos (default: one per CPU core)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=main)
    return p


def main(args: argparse.Namespace) -> int:
    from streaming_vlm.world import dataset
    from streaming_vlm.world.script import WorldConfig

    try:
        changes = {k: v for k, v in (("density", args.density), ("speed", args.speed),
                                     ("whistle_rate", args.whistle_rate), ("kickoff", args.kickoff)) if v is not None}
        config = replace(dataset.TRAINING_WORLD if args.training_set else WorldConfig(), **changes)
        cut = {k: v for k, v in (("window", args.window), ("stride", args.stride)) if v is not None}
        if cut and not args.training_set:
            raise ValueError("--window and --stride cut the training set's windows: use them with --training-set")
        if args.training_set:
            spec = replace(dataset.TrainingSetSpec(), minutes=args.minutes, **cut)
            files = dataset.make_training_set(args.out_dir, spec, config, progress=not args.quiet,
                                              workers=args.workers)
            print("wrote " + ", ".join(str(f) for f in files.values()))
            return 0
        if args.split:
            specs = dataset.split_specs(args.split, args.streams, args.minutes, config, first=args.first)
            path = dataset.write_streams(args.out_dir, specs, f"{args.split}.jsonl", progress=not args.quiet,
                                         workers=args.workers)
        else:
            seed = 0 if args.seed is None else args.seed
            specs = [dataset.StreamSpec(seed, int(round(args.minutes * 60)), config, f"stream_{seed}")]
            path = dataset.write_streams(args.out_dir, specs, "stream.jsonl", progress=not args.quiet)
    except ValueError as exc:
        print(f"streaming-vlm: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(specs)} stream(s) to {path}")
    return 0
