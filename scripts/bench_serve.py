#!/usr/bin/env python
"""The live server's capacity benchmark and a one-hour soak, through the real server over its public API.

``capacity`` ramps the number of sessions (a fresh ``streaming-vlm serve`` per level; each session its own
synthetic stream played at wall-clock pace, a question every 30 s) and records per level and per session the chunk
latency, lag and commentary lag (p50/p95), skipped chunks, time to first answer token and the server's memory;
writes ``figures/serve_capacity.json`` and ``.png``. ``soak`` runs one session for an hour and records the server's
memory every 10 s and the latency per minute; writes ``figures/serve_soak.json`` and ``.png``. Definitions (served
in real time, memory per session, RSS growth) are in ``streaming_vlm/serve/bench.py`` and docs/serve.md.

Usage (from the repository root, with the project's virtual environment active)::

    python scripts/bench_serve.py capacity --minutes 2                       # screening: 1, 2, 4, ... sessions
    python scripts/bench_serve.py capacity --levels 16,20 --minutes 10 --append   # 10 minutes around the limit
    python scripts/bench_serve.py soak                                       # one session, 60 minutes
    python scripts/bench_serve.py capacity --replot                          # redraw the figure from the JSON

Synthetic streams are written under ``--media`` (``results/serve_bench/media``) the first time. The server runs
with this environment's ``OMP_NUM_THREADS`` (unset: torch's default, one thread per core) unless
``--server-threads`` is given. ``python scripts/bench_serve.py capacity --help`` lists every option.
"""

import sys

from streaming_vlm.serve.bench import main

if __name__ == "__main__":
    sys.exit(main())
