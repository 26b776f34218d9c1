"""Captured decode steps: CUDA graphs of the engine's static steps, behind one switch.

What it owns: whether steps are captured (:func:`graph_backend`, the switch), capturing a step once per shape and
cache allocation, and replaying it. What it does not own: what a step computes (the engine's static forward,
``cache.StreamingCache.static_step``), which must read and write only device tensors whose addresses stay fixed
(the cache's buffers and device length/position, the engine's token buffer) and depend on no host value that
changes between tokens; the cache makes that so.

A backend captures a step function into a replayable callable: ``capture(fn, reset)`` may run ``fn`` (warm-up,
recording) and calls ``reset()`` after each run, which undoes the step's effect on the device state (the cache's
length and position; the slots it wrote are rewritten by the next real step). :class:`StepGraphs` keys captures by
(step key, ``cache.buffer_version``): a reallocated cache is captured again. ``CudaGraphs`` is the real backend;
tests substitute a CPU one that replays recorded operations (``tests/test_static_cache.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from typing import Any, Protocol

import torch

logger = logging.getLogger(__name__)

Replay = Callable[[], Any]


class GraphBackend(Protocol):
    def capture(self, fn: Callable[[], Any], reset: Callable[[], None]) -> Replay: ...


class CudaGraphs:
    """CUDA graphs on one device, each with its own memory pool (a graph's output stays valid whatever other graphs
    are replayed; the steps' activations are a few megabytes)."""

    def __init__(self, device: torch.device, warmup: int = 2):
        self.device, self.warmup = device, warmup

    def capture(self, fn: Callable[[], Any], reset: Callable[[], None]) -> Replay:
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):  # lazy initialisations (cuBLAS workspaces, kernel choice) outside the capture
            for _ in range(self.warmup):
                fn()
                reset()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # thread_local: other threads (a server's) may use CUDA while this one captures
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out = fn()
        reset()

        def replay() -> Any:
            graph.replay()
            return out

        return replay


def graph_backend(device: torch.device, enabled: bool | None) -> GraphBackend | None:
    """The switch: CUDA graphs when ``enabled`` (None = on when ``device`` is a CUDA device); None = eager steps.

    Asked for on a device without CUDA graphs, logs one line and returns None.
    """
    device = torch.device(device)
    if enabled is False or (enabled is None and device.type != "cuda"):
        return None
    if device.type != "cuda" or not torch.cuda.is_available():
        logger.info("CUDA graphs need a CUDA device (the model is on %s): decode steps run eagerly", device)
        return None
    return CudaGraphs(device)


class StepGraphs:
    """Runs static steps, captured once per (key, cache allocation) and replayed, or eagerly without a backend.

    Args:
        backend: a ``GraphBackend``, or None to run every step eagerly.
        snapshot: returns the device state a step changes (e.g. ``cache.static_snapshot``).
        restore: puts back a snapshot (``cache.static_restore``).

    A capture that fails logs one line and turns capturing off for good (steps run eagerly from then on).
    """

    def __init__(self, backend: GraphBackend | None, snapshot: Callable[[], Any], restore: Callable[[Any], None]):
        self.backend = backend
        self._snapshot, self._restore = snapshot, restore
        self._graphs: dict[Hashable, tuple[int, Replay]] = {}
        self.captures = 0  # how many steps were captured (tests, logs)

    def run(self, key: Hashable, version: int, fn: Callable[[], Any]) -> Any:
        """The output of step ``key`` (``fn``, whose captures stay valid while ``version`` does not change)."""
        if self.backend is None:
            return fn()
        held = self._graphs.get(key)
        if held is None or held[0] != version:
            self._graphs.pop(key, None)  # drop a stale graph (its buffers were reallocated) before capturing anew
            snap = self._snapshot()
            try:
                replay = self.backend.capture(fn, lambda: self._restore(snap))
            except Exception as err:  # any capture failure falls back to eager steps, said once
                logger.warning("decode step capture failed (%s: %s): decode steps run eagerly", type(err).__name__,
                               err)
                self._restore(snap)
                self.backend, self._graphs = None, {}
                return fn()
            self.captures += 1
            held = self._graphs[key] = (version, replay)
        return held[1]()
