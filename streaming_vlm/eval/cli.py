"""``streaming-vlm eval BENCHMARK ...``: one subcommand per benchmark module, imported only when it runs."""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS = {  # name: the module whose main(argv) runs it, or "module:function"
    "efficiency": "streaming_vlm.bench:efficiency_main",  # the latency benchmark's efficiency preset
    "ovobench": "streaming_vlm.eval.ovobench",
    "vqa": "streaming_vlm.eval.vqa",
    "inf-stream": "streaming_vlm.eval.inf_stream",
    "livesports": "streaming_vlm.eval.livesports",
    "synth": "streaming_vlm.eval.synth",
}


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help="evaluations: " + ", ".join(BENCHMARKS),
                              description="Run an evaluation; `streaming-vlm eval BENCHMARK --help` for its options.")
    p.add_argument("benchmark", choices=sorted(BENCHMARKS))
    p.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's own options")

    def run(args) -> int:
        module, _, function = BENCHMARKS[args.benchmark].partition(":")
        return getattr(importlib.import_module(module), function or "main")(args.args)

    p.set_defaults(run=run)
    return p
