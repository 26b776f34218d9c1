"""``streaming-vlm data``: ``index`` (seek indexes), ``validate`` (annotation checks), ``windows`` (window builder).

Exit codes: 0 done / clean, 1 ``validate`` found problems, 2 unreadable input or bad settings (one
``streaming-vlm: error:`` line on stderr).
"""

from __future__ import annotations

import argparse
import sys

from streaming_vlm.argtypes import count_or_unlimited
from streaming_vlm.settings import DEFAULTS


def _error(exc: BaseException) -> int:
    if isinstance(exc, OSError) and exc.strerror:
        message = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    else:
        message = str(exc)
    print(f"streaming-vlm: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def _index(args) -> int:
    import json

    from streaming_vlm.data.annotations import build_seek_index

    for path in args.files:
        try:
            out = build_seek_index(path)
            count = len(json.loads(out.read_bytes()))
        except (OSError, ValueError) as exc:
            return _error(exc)
        print(f"{path}: {count} records -> {out}")
    return 0


def _validate(args) -> int:
    from streaming_vlm.data.validate import validate_file

    try:
        report = validate_file(args.file, dataset_path=args.dataset_path, check_videos=not args.no_videos,
                               max_problems=args.max_problems)
    except OSError as exc:
        return _error(exc)
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1


def _windows(args) -> int:
    from streaming_vlm.data.windows import build_windows

    try:
        stats = build_windows(args.input, args.output, window=args.window, stride=args.stride,
                              variant=args.variant, resume=not args.no_resume, drop_empty=args.drop_empty,
                              text_sink=args.text_sink, text_window=args.text_window)
    except (OSError, ValueError) as exc:
        return _error(exc)
    for line in stats.lines():
        print(line)
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``data`` and its actions on the top-level ``subparsers``."""
    p = subparsers.add_parser("data", help="annotation files: seek indexes, validation, training windows",
                              description="Annotation JSONL files (see docs/data.md).")
    actions = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    q = actions.add_parser("index", help="write FILE's seek index (X_with_seeks.jsonl -> X_seeks.jsonl)",
                           description="Write the byte offset of every record line of each FILE as one JSON array "
                                       "beside it (X_with_seeks.jsonl -> X_seeks.jsonl, X.jsonl -> X_seeks.jsonl).")
    q.add_argument("files", nargs="+", metavar="FILE")
    q.set_defaults(run=_index)

    q = actions.add_parser("validate", help="check records, videos and word/question times",
                           description="Check an annotation file: exit 0 when clean, 1 when any problem, "
                                       "2 when it cannot be read.")
    q.add_argument("file", metavar="FILE")
    q.add_argument("--dataset-path", metavar="DIR", default=None,
                   help="root for relative video paths (default: $DATASET_PATH)")
    q.add_argument("--no-videos", action="store_true", help="do not check that the videos exist")
    q.add_argument("--max-problems", type=int, default=20, metavar="N", help="problem lines to print (20)")
    q.set_defaults(run=_validate)

    q = actions.add_parser("windows", help="cut long-video records into overlapping training windows",
                           description="Cut long-video records into window records (docs/data.md); resumes an "
                                       "interrupted output unless --no-resume; writes the output's seek index and "
                                       "its build settings (X_build.json beside it).")
    q.add_argument("input", metavar="IN")
    q.add_argument("output", metavar="OUT")
    q.add_argument("--window", type=float, default=24.0, help="window length in seconds (24)")
    q.add_argument("--stride", type=float, default=12.0, help="seconds between window starts (12)")
    q.add_argument("--variant", choices=("overlap", "livecc"), default="overlap",
                   help="overlap: sliding windows; livecc: one window per clip (overlap)")
    q.add_argument("--no-resume", action="store_true", help="rewrite OUT from scratch")
    q.add_argument("--drop-empty", action="store_true",
                   help="leave out windows with neither words nor questions (training rejects them)")
    q.add_argument("--text-sink", type=count_or_unlimited, default=DEFAULTS.text_sink, metavar="N",
                   help="previous text keeps its first N pieces (words), as training keeps its first text_sink "
                        "tokens: use training's text_sink or more; 'unlimited' keeps the whole transcript (512)")
    q.add_argument("--text-window", type=count_or_unlimited, default=DEFAULTS.text_window, metavar="N",
                   help="previous text keeps its last N pieces (words): training's text_sliding_window or more; "
                        "'unlimited' keeps the whole transcript (512)")
    q.set_defaults(run=_windows)

    q = actions.add_parser("toy", help="write a small generated dataset laid out like Inf-Stream-Train",
                           description="Synthetic videos with word-timestamped transcripts, cut into the files the "
                                       "SFT stage configs name; use OUT_DIR as $DATASET_PATH.")
    q.add_argument("out_dir", metavar="OUT_DIR")
    q.add_argument("--videos", type=int, default=3, help="videos (the last one is the validation split)")
    q.add_argument("--seconds", type=float, default=60.0, help="length of each video")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(run=_toy)
    return p


def _toy(args) -> int:
    from streaming_vlm.data.toy import make_toy_dataset

    out = make_toy_dataset(args.out_dir, videos=args.videos, seconds=args.seconds, seed=args.seed)
    print(f"wrote a toy dataset to {out} (use it as DATASET_PATH)")
    return 0
