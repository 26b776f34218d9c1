"""A stale build lock must not hang training forever.

On a machine without CUDA, DeepSpeed builds its shared-memory communication op (``deepspeed_shm_comm``) with
``torch.utils.cpp_extension.load`` when its process group starts, in every launch. torch serialises builds with an
empty ``lock`` file in the op's build directory (``$TORCH_EXTENSIONS_DIR/deepspeed_shm_comm``, by default
``~/.cache/torch_extensions/py311_cpu/deepspeed_shm_comm``): a process that finds the file sleeps until it goes
away, checking every 0.1 s, with no limit and no message. A launch killed while it built (Ctrl-C, a job time limit,
a test runner's timeout) leaves the file behind, and from then on every DeepSpeed run on that machine waits
forever in silence.

:func:`wait_for_build_lock` runs before DeepSpeed starts (see ``trainer.attach_deepspeed_to_process_group``): a
lock that another launch is building under (a few seconds to a minute) is waited for with one warning; one still
there after ``timeout_s`` (:func:`build_lock_wait_s`: ``$STREAMING_VLM_BUILD_LOCK_WAIT_S``, else
:data:`BUILD_LOCK_WAIT_S`) is :class:`BuildLockError`, a one-line error that names the file to delete.

Nothing here runs at import time.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from streaming_vlm.argtypes import env_seconds

logger = logging.getLogger(__name__)

BUILD_LOCK_WAIT_S = 300.0
"""How long a lock is waited for before it is called stale: building the op takes about 25 s on 2 CPU cores."""

BUILD_LOCK_WAIT_ENV = "STREAMING_VLM_BUILD_LOCK_WAIT_S"


class BuildLockError(RuntimeError):
    """A build lock outlived the wait: a build was killed midway (exit status 1); or the wait is not a positive
    number of seconds (exit status 2)."""

    def __init__(self, message: str, exit_status: int = 1):
        super().__init__(message)
        self.exit_status = exit_status


def build_lock_wait_s() -> float:
    """``$STREAMING_VLM_BUILD_LOCK_WAIT_S`` (seconds), else :data:`BUILD_LOCK_WAIT_S`; anything but a positive
    number is a :class:`BuildLockError` with exit status 2."""
    try:
        return env_seconds(BUILD_LOCK_WAIT_ENV, BUILD_LOCK_WAIT_S)
    except ValueError as exc:
        raise BuildLockError(str(exc), 2) from None


def extension_build_dir(name: str) -> Path:
    """Where ``torch.utils.cpp_extension.load(name=name)`` builds: ``$TORCH_EXTENSIONS_DIR/name``, else
    ``<default build root>/py<major><minor><abiflags>_<cpu|cuXY>/name`` (torch's own rule)."""
    from torch.utils.cpp_extension import get_default_build_root

    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root is None:
        import torch

        device = "cpu" if torch.version.cuda is None else f"cu{torch.version.cuda.replace('.', '')}"
        python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
        root = os.path.join(get_default_build_root(), f"{python}_{device}")
    return Path(root) / name


def wait_for_build_lock(
    name: str,
    timeout_s: float | None = None,
    *,
    poll_s: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Return once the build lock of extension ``name`` is absent; wait (one warning) while it is there, and raise
    :class:`BuildLockError` naming the file if it still is after ``timeout_s`` seconds (``None``:
    :func:`build_lock_wait_s`, read before anything else)."""
    if timeout_s is None:
        timeout_s = build_lock_wait_s()
    lock = extension_build_dir(name) / "lock"
    if not lock.exists():
        return
    logger.warning(
        "waiting for %s: another process is building %s (if none is, a killed build left the file: delete it)",
        lock,
        name,
    )
    deadline = clock() + timeout_s
    while lock.exists():
        if clock() >= deadline:
            raise BuildLockError(
                f"{lock} has been there for over {timeout_s:g} s: a build of {name} was killed midway and left "
                f"its lock, which makes every DeepSpeed launch on this machine wait forever; delete the file "
                f"(no build of {name} is running) and launch again"
            )
        sleep(poll_s)
    logger.info("%s is gone: going on", lock)
