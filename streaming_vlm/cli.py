"""The ``streaming-vlm`` command: one entry point, one subcommand per job.

Each subcommand lives in its own module and is imported only when it runs, so ``streaming-vlm --help``
is instant and nothing heavy happens at import.
"""

from __future__ import annotations

import argparse
import sys


def _infer(sub) -> None:
    from streaming_vlm import infer

    p = sub.add_parser("infer", help="streaming commentary on a video file (WebVTT / JSONL)",
                       description="Streaming commentary on a video file.")
    infer.add_arguments(p)
    p.set_defaults(run=infer.main)


def _tiny_model(sub) -> None:
    p = sub.add_parser("tiny-model", help="write a random tiny Qwen2.5-VL (tests, benchmarks, offline demos)",
                       description="Write a random-initialised tiny Qwen2.5-VL and its tokenizer to OUT_DIR.")
    p.add_argument("out_dir", help="directory to write (created)")
    p.add_argument("--seed", type=int, default=0)

    def run(args) -> int:
        from streaming_vlm.models import build_tiny_model

        path = build_tiny_model(args.out_dir, seed=args.seed)
        print(f"wrote a tiny Qwen2.5-VL to {path}")
        return 0

    p.set_defaults(run=run)


def _bench(sub) -> None:
    # Listed here for `streaming-vlm --help`; main() hands `bench`'s whole command line to bench.main (an argparse
    # REMAINDER positional does not take arguments that start with "-", so options would be refused here).
    sub.add_parser("bench", help="stream a long synthetic video in each mode; latency, cache, memory",
                   description="Streaming benchmark (see scripts/bench_stream.py).", add_help=False)


def _run_bench(argv: list[str]) -> int:
    from streaming_vlm import bench

    return bench.main(argv, prog="streaming-vlm bench")


def _data(sub) -> None:
    from streaming_vlm.data import cli

    cli.add_parser(sub)


def _train(sub) -> None:
    from streaming_vlm.train import cli as train_cli

    train_cli.add_parser(sub)


def _synth(sub) -> None:
    from streaming_vlm.world import cli

    cli.add_parser(sub)


def _eval(sub) -> None:
    from streaming_vlm.eval import cli

    cli.add_parser(sub)


def _serve(sub) -> None:
    from streaming_vlm.serve import cli

    p = sub.add_parser("serve", help="serve live sessions (files, URLs, cameras, pushed frames) over HTTP/WebSocket",
                       description="Live streaming commentary for several sessions on one model: an HTTP and "
                                   "WebSocket API and a web page (docs/serve.md).")
    cli.add_arguments(p)
    p.set_defaults(run=cli.main)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streaming-vlm", description="StreamingVLM: commentary on endless video.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_infer, _tiny_model, _bench, _data, _train, _synth, _eval, _serve):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # every option after `bench` is the benchmark's own, --help included
        return _run_bench(argv[1:])
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
