"""Memory of this process: resident memory (RSS) now and at its peak, and the peak memory of a span of work.

- :func:`current_rss_mb`: resident memory now (``/proc/self/statm``; getrusage's peak where there is no /proc).
- :func:`peak_rss_mb`: peak resident memory (``VmHWM``, resettable on Linux; else getrusage's ``ru_maxrss``).
- :func:`reset_peak_rss`: reset the kernel's peak-RSS counter (Linux ``clear_refs`` 5), so that a later
  :func:`peak_rss_mb` is the peak since then.
- :class:`PeakMemory`: the peak of one span of work (a benchmark mode, an evaluated stream) on a device: CUDA's
  max allocated memory on a GPU, the peak RSS otherwise.
- :func:`oom_errors`, :func:`oom_message`: what running out of memory raises, and one line saying it, for a
  benchmark that records an out-of-memory stop instead of crashing.

Megabytes are MiB (2**20 bytes). Nothing here loads torch unless a CUDA device is asked about.
"""

from __future__ import annotations

import os
import resource
import sys
from typing import Any

__all__ = ["PeakMemory", "current_rss_mb", "oom_errors", "oom_message", "peak_rss_mb", "reset_peak_rss"]

_MB = 1024.0 * 1024.0


def _maxrss_mb() -> float:
    """Process peak RSS from getrusage (kilobytes on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / _MB if sys.platform == "darwin" else peak / 1024.0


def current_rss_mb() -> float:
    """Resident memory now, from ``/proc/self/statm``; the peak from getrusage where there is no /proc."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            resident_pages = int(f.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE") / _MB
    except (OSError, ValueError, IndexError):
        return _maxrss_mb()


def _vm_hwm_mb() -> float | None:
    """``VmHWM`` (peak resident memory since the last reset) from ``/proc/self/status``, or None."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux ``clear_refs`` 5); True if it worked."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    return _vm_hwm_mb() is not None


def peak_rss_mb() -> float:
    """Peak resident memory: ``VmHWM`` where available (resettable), else getrusage's ``ru_maxrss``."""
    hwm = _vm_hwm_mb()
    return hwm if hwm is not None else _maxrss_mb()


class PeakMemory:
    """The peak memory of a span of work on ``device`` (a ``torch.device`` or its name), from construction on.

    Construction starts the span: the process's peak RSS is reset (where Linux allows), and on a CUDA device the
    allocator's cache is emptied and its peak statistics are reset. Then:

    - :meth:`peak_mb`: CUDA's max allocated memory on a GPU, else the peak RSS;
    - :meth:`now_mb`: CUDA's allocated memory now on a GPU, else the RSS now;
    - ``kind``: ``"cuda_max_allocated"`` or ``"rss"``; ``scope``: ``"mode"`` when the peak is this span's own,
      ``"process"`` when the RSS peak could not be reset (the process's peak so far).

    The process's RSS (:func:`current_rss_mb`, :func:`peak_rss_mb`) can be read alongside on a GPU too.
    """

    def __init__(self, device: Any = "cpu"):
        self.device = device
        self.cuda = getattr(device, "type", str(device).split(":")[0]) == "cuda"
        rss_reset = reset_peak_rss()
        if self.cuda:
            import torch

            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            self.kind, self.scope = "cuda_max_allocated", "mode"
        else:
            self.kind, self.scope = "rss", "mode" if rss_reset else "process"

    def now_mb(self) -> float:
        if self.cuda:
            import torch

            return torch.cuda.memory_allocated(self.device) / _MB
        return current_rss_mb()

    def peak_mb(self) -> float:
        if self.cuda:
            import torch

            return torch.cuda.max_memory_allocated(self.device) / _MB
        return peak_rss_mb()


def oom_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "out of memory": ``MemoryError`` and torch's CUDA ``OutOfMemoryError`` (imports
    torch)."""
    import torch

    cuda_oom = getattr(torch.cuda, "OutOfMemoryError", None) or getattr(torch, "OutOfMemoryError", None)
    return (MemoryError, cuda_oom) if cuda_oom is not None else (MemoryError,)


def oom_message(exc: BaseException) -> str:
    """``TYPE: message`` of an out-of-memory error on one line, at most 300 characters."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]
