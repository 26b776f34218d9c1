#!/usr/bin/env python
"""Benchmark the streaming engine over a long (synthetic) video in every mode.

Streams the video through ``VideoReader -> StreamSession.step`` in the streaming, full, sliding and recompute
modes and records per-chunk latency (also decoding and per token), generated/prefilled tokens, KV cache size and
memory, then writes ``figures/bench_stream.json`` and ``figures/bench_stream.png``. This is the ``bench`` preset
of the latency benchmark in ``streaming_vlm/bench.py`` (``streaming-vlm eval efficiency`` is the other preset);
every stream setting is a flag (``--pixels`` is ``--max-pixels``) and the tiny model and the synthetic video are
made with ``--seed``.

Usage (from the repository root, with the project's virtual environment active)::

    python scripts/bench_stream.py                                   # 30 min, all modes, tiny model, fp32
    python scripts/bench_stream.py --minutes 5 --modes streaming,full --threads 1
    python scripts/bench_stream.py --model Qwen/Qwen2.5-VL-3B-Instruct --dtype bf16 --device cuda --minutes 10

On a small, shared CPU machine ``--threads 1`` gives steadier timings than torch's default (one intra-op thread
per core competes with the video decoder's threads and anything else running). ``--replot FILE.json`` redraws
the figure from an earlier run. ``python scripts/bench_stream.py --help`` lists every option.
"""

import sys

from streaming_vlm.bench import main

if __name__ == "__main__":
    sys.exit(main())
