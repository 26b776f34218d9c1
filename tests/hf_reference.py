"""Test helper: transformers' Qwen2-VL video processor as a numerical reference, run in a subprocess.

The processor needs torchvision, and torchvision must not be importable from the main environment: the only
wheel for this torch (``torchvision==0.28.0``) is a CUDA build that fails to import next to the CPU-only torch
wheel, and once it is installed transformers imports it as soon as anything imports a model class such as
``Qwen2_5_VLForConditionalGeneration``, which then crashes everywhere. So it is installed outside
site-packages, in :func:`torchvision_dir`::

    pip install --no-deps --target "$(python -c 'import sys;print(sys.prefix)')/hf-reference-torchvision" \
        torchvision==0.28.0

and :func:`hf_reference` runs the processor in a child interpreter (``tests/_hf_reference_worker.py``) that
puts that directory first on its ``sys.path``, imports torchvision (defining two missing op schemas if the
compiled ops library does not load; see the worker's docstring), and hands the outputs back through a
temporary file. On a machine where torchvision imports normally from the environment, the child uses that one
instead. This process itself never imports torchvision nor transformers' image / video processors.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

TORCHVISION_DIR_ENV = "STREAMING_VLM_TORCHVISION_DIR"
INSTALL_COMMAND = (
    "pip install --no-deps --target \"$(python -c 'import sys;print(sys.prefix)')/hf-reference-torchvision\" "
    "torchvision==0.28.0"
)
_WORKER = Path(__file__).resolve().with_name("_hf_reference_worker.py")
_WORKER_TIMEOUT_S = 600


@dataclass(frozen=True)
class ReferenceCase:
    """One video for the HF processor: uint8 ``[T, H, W, 3]`` frames and the per-frame pixel bounds.

    ``force_float_resize`` makes torchvision resize in float32 (what it does off CPU, e.g. when HF runs on a
    GPU) instead of with torch's native uint8 CPU kernel.
    """

    frames: torch.Tensor
    min_pixels: int
    max_pixels: int
    force_float_resize: bool = False


@dataclass(frozen=True)
class ReferenceRun:
    """What :func:`hf_reference` returns: ``(pixel_values, grid_thw)`` per case, and which torchvision ran."""

    outputs: list[tuple[torch.Tensor, torch.Tensor]]
    torchvision: dict[str, Any]


def torchvision_dir() -> Path:
    """Where the reference torchvision lives: ``$STREAMING_VLM_TORCHVISION_DIR`` or
    ``<sys.prefix>/hf-reference-torchvision``."""
    override = os.environ.get(TORCHVISION_DIR_ENV)
    return Path(override) if override else Path(sys.prefix) / "hf-reference-torchvision"


def skip_reason() -> str | None:
    """Why the HF reference cannot run here (``None`` if it can, as far as one can tell without importing)."""
    if torchvision_dir().is_dir() or importlib.util.find_spec("torchvision") is not None:
        return None
    return (
        f"the HF reference processor needs torchvision, found neither in the environment nor in "
        f"{torchvision_dir()} (set ${TORCHVISION_DIR_ENV} to use another directory); install it with: "
        f"{INSTALL_COMMAND}"
    )


def hf_reference(cases: list[ReferenceCase]) -> ReferenceRun:
    """Run transformers' ``Qwen2VLVideoProcessor`` on every case, all in one child interpreter.

    Skips the calling test if torchvision is unavailable; raises ``RuntimeError`` (with the child's output) if
    the child fails.
    """
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    request = {
        "torchvision_dir": str(torchvision_dir()),
        "cases": [
            {
                "frames": case.frames.contiguous(),
                "min_pixels": int(case.min_pixels),
                "max_pixels": int(case.max_pixels),
                "force_float_resize": bool(case.force_float_resize),
            }
            for case in cases
        ],
    }
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_NO_ADVISORY_WARNINGS="1")
    with tempfile.TemporaryDirectory(prefix="hf-reference-") as tmp:
        request_path, result_path = Path(tmp) / "request.pt", Path(tmp) / "result.pt"
        torch.save(request, request_path)
        proc = subprocess.run(
            [sys.executable, str(_WORKER), str(request_path), str(result_path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=_WORKER_TIMEOUT_S,
        )
        if proc.returncode != 0 or not result_path.is_file():
            raise RuntimeError(
                f"HF reference worker failed (exit code {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        result = torch.load(result_path, weights_only=True)
    if "skip" in result:
        pytest.skip(f"{result['skip']}; the HF reference processor needs it, install it with: {INSTALL_COMMAND}")
    outputs = [(r["pixel_values"], r["grid_thw"]) for r in result["results"]]
    if len(outputs) != len(cases):
        raise RuntimeError(f"HF reference worker returned {len(outputs)} results for {len(cases)} cases")
    return ReferenceRun(outputs=outputs, torchvision=result["torchvision"])


def torchvision_import_error(path: list[str]) -> str | None:
    """Try ``import torchvision`` in a child interpreter whose ``sys.path`` is ``path``.

    Returns ``None`` if it imports, else the tail of the child's error output. Leaves this process untouched.
    """
    code = "import json, sys; sys.path[:] = json.loads(sys.argv[1]); import torchvision"
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(path)],
        capture_output=True,
        text=True,
        timeout=_WORKER_TIMEOUT_S,
    )
    if proc.returncode == 0:
        return None
    lines = proc.stderr.strip().splitlines()
    return "\n".join(lines[-12:]) or f"exit code {proc.returncode}"
