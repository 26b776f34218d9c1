"""Subprocess side of :mod:`hf_reference`: runs transformers' Qwen2-VL video processor on a batch of videos.

Usage: ``python _hf_reference_worker.py REQUEST.pt RESULT.pt``. Both files are written with ``torch.save``.

``REQUEST.pt`` holds ``{"torchvision_dir": str | None, "cases": [case, ...]}``, each case a dict with
``frames`` (uint8 ``[T, H, W, 3]``), ``min_pixels``, ``max_pixels`` and ``force_float_resize`` (bool: make
torchvision resize uint8 frames by interpolating in float32, as it does off CPU, instead of torch's native
uint8 CPU kernel). ``RESULT.pt`` receives ``{"results": [{"pixel_values", "grid_thw"}, ...], "torchvision":
{...}}`` in case order, or ``{"skip": reason}`` when torchvision cannot be found at all.

This runs in its own interpreter so that the test process never imports torchvision (nor transformers' image /
video processors): a torchvision wheel importable from the main environment makes transformers import it as
soon as a model class is imported, and the CPU-incompatible build used here would then break every import.

Importing torchvision: if it is importable from the environment it is used as is; otherwise
``torchvision_dir`` (a ``pip install --target`` directory) is put first on ``sys.path``. The pinned wheel is a
CUDA build whose compiled ops library does not load next to the CPU-only torch wheel, and ``import
torchvision`` then dies in ``torchvision/_meta_registrations.py`` with ``operator torchvision::nms does not
exist``: that module registers fake (meta) kernels for ``torchvision::nms`` / ``torchvision::qnms``
unconditionally, which needs the operator schemas to exist. Such a failed import is retried after defining
just those two schemas (copied from torchvision's C++ sources) in a ``torch.library`` fragment. No kernel is
registered, so the detection ops stay unusable, but the pure-torch transforms the processor uses (resize,
normalize) work. If the compiled library does load, the first import succeeds and nothing is stubbed.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import torch

# Schemas as torchvision's csrc declares them (ops/nms.cpp, ops/quantized/cpu/qnms_kernel.cpp).
_STUB_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
# Kept alive for the whole process: a torch.library.Library deregisters its definitions when collected.
_stub_library: torch.library.Library | None = None


def _has_schema(name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
    except RuntimeError:
        return False
    return True


def _stub_missing_ops() -> None:
    global _stub_library
    if _stub_library is not None:
        return
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _STUB_SCHEMAS:
        name = schema.split("(", 1)[0]
        if not _has_schema(name):
            lib.define(schema)
    _stub_library = lib


def _purge_torchvision_modules() -> None:
    for mod in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[mod]


def import_torchvision(torchvision_dir: str | None) -> tuple[Any, bool] | None:
    """Import torchvision as described in the module docstring.

    Returns ``(module, stubbed)`` (``stubbed``: whether the op schemas had to be defined), or ``None`` when
    torchvision is neither in the environment nor in ``torchvision_dir``. Must run before transformers is
    imported: transformers decides once, at import time, whether torchvision is available.
    """
    if importlib.util.find_spec("torchvision") is None:
        if torchvision_dir is None or not Path(torchvision_dir).is_dir():
            return None
        sys.path.insert(0, str(torchvision_dir))
        importlib.invalidate_caches()
        if importlib.util.find_spec("torchvision") is None:
            return None
    try:
        return importlib.import_module("torchvision"), False
    except RuntimeError as err:
        if "does not exist" not in str(err):
            raise
    # Drop the half-initialised package so the retry runs its __init__ from the top.
    _purge_torchvision_modules()
    _stub_missing_ops()
    return importlib.import_module("torchvision"), True


class _FloatResize:
    """Context manager: torchvision resizes uint8 CPU tensors in float32 (its route on every other device)."""

    def __enter__(self) -> None:
        from torchvision.transforms.v2.functional import _geometry

        name = "_do_native_uint8_resize_on_cpu"
        if not hasattr(_geometry, name):
            raise RuntimeError(f"torchvision.transforms.v2.functional._geometry.{name} is gone; update the worker")
        self._geometry = _geometry
        self._saved = getattr(_geometry, name)
        _geometry._do_native_uint8_resize_on_cpu = lambda interpolation: False

    def __exit__(self, *exc: object) -> None:
        self._geometry._do_native_uint8_resize_on_cpu = self._saved


def _processor(min_pixels: int, max_pixels: int) -> Any:
    """``Qwen2VLVideoProcessor`` (also Qwen2.5-VL's) bounded per frame to ``[min_pixels, max_pixels]``.

    In transformers 5.x ``min_pixels`` / ``max_pixels`` map to ``size={"shortest_edge": ..., "longest_edge":
    ...}``; frame sampling is off and the total-video pixel budget (``cap_pixels_per_frame``) is disabled so
    each frame is bounded only by ``max_pixels``, as in our preprocessing.
    """
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    proc = Qwen2VLVideoProcessor(
        min_pixels=min_pixels, max_pixels=max_pixels, do_sample_frames=False, cap_pixels_per_frame=False
    )
    if proc.size["shortest_edge"] != min_pixels or proc.size["longest_edge"] != max_pixels:
        raise RuntimeError(f"processor ignored min_pixels/max_pixels: size={proc.size}")
    return proc


def run_cases(cases: list[dict[str, Any]]) -> list[dict[str, torch.Tensor]]:
    processors: dict[tuple[int, int], Any] = {}
    results = []
    for case in cases:
        key = (int(case["min_pixels"]), int(case["max_pixels"]))
        if key not in processors:
            processors[key] = _processor(*key)
        proc = processors[key]
        frames = case["frames"]
        if case.get("force_float_resize", False):
            with _FloatResize():
                out = proc(videos=[frames], input_data_format="channels_last", return_tensors="pt")
        else:
            out = proc(videos=[frames], input_data_format="channels_last", return_tensors="pt")
        results.append({"pixel_values": out["pixel_values_videos"], "grid_thw": out["video_grid_thw"]})
    return results


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: _hf_reference_worker.py REQUEST.pt RESULT.pt", file=sys.stderr)
        return 2
    request_path, result_path = argv
    request = torch.load(request_path, weights_only=True)
    torchvision_dir = request.get("torchvision_dir")
    imported = import_torchvision(torchvision_dir)
    if imported is None:
        where = f"nor in {torchvision_dir}" if torchvision_dir else "and no install directory was given"
        torch.save({"skip": f"torchvision is not importable from the environment {where}"}, result_path)
        return 0
    torchvision, stubbed = imported
    info = {"version": str(torchvision.__version__), "path": str(torchvision.__file__), "stubbed": stubbed}
    torch.save({"results": run_cases(request["cases"]), "torchvision": info}, result_path)
    return 0


if __name__ == "__main__":
    # Run as a script, this file's directory (tests/) heads sys.path; keep it from shadowing real packages.
    if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
        del sys.path[0]
    sys.exit(main(sys.argv[1:]))
