"""Qwen2-VL / Qwen2.5-VL video preprocessing in plain torch, on any device.

Contract
--------
:class:`VideoPreprocessor` turns a chunk of uint8 RGB frames ``[T, H, W, 3]`` (numpy array or torch tensor,
``T`` a multiple of ``temporal_patch_size``) into exactly what the Qwen2-VL vision tower takes for a video:

* ``pixel_values``: ``[grid_t * grid_h * grid_w, 3 * temporal_patch_size * patch_size ** 2]`` in the requested
  dtype, patches in Qwen's merge-window order (the ``merge_size x merge_size`` patches that the patch merger
  fuses into one LLM token are consecutive rows);
* ``grid_thw``: int64 ``[[grid_t, grid_h, grid_w]]``, ``grid_h = H' / patch_size`` and so on.

The pipeline mirrors ``transformers``' ``Qwen2VLVideoProcessor`` (used by Qwen2.5-VL too) step by step:
:func:`smart_resize` picks ``H' x W'`` (multiples of ``patch_size * merge_size``, per-frame pixel count within
``[min_pixels, max_pixels]``), frames are resized with antialiased bicubic interpolation the way torchvision
resizes a uint8 tensor, rescaled by 1/255 and normalised with the CLIP mean/std (fused, in float32), then
temporally and spatially patchified. With the default ``resize_backend="auto"`` the result is identical to
the HF processor running on the same device (bit-exact on CPU in the tests): on CPU torchvision uses torch's
native uint8 bicubic kernel, elsewhere it interpolates in float32 and rounds/clamps back to uint8, and so do
we. The two give slightly different uint8 frames (the native kernel works in fixed point with a uint8
intermediate between its horizontal and vertical passes); see ``resize_backend`` for a closer GPU
approximation of the CPU result.

Nothing here imports torchvision or the transformers processors; there is no frame sampling (the caller hands
over the frames it wants encoded) and no padding of ``T`` (a ragged chunk is an error, not silently repeated).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from streaming_vlm.settings import DEFAULTS, MAX_PIXELS

__all__ = [
    "IMAGE_MEAN",
    "IMAGE_STD",
    "RESIZE_BACKENDS",
    "VideoPreprocessor",
    "VisionSpec",
    "smart_resize",
]

# OpenAI CLIP normalisation constants: Qwen2-VL / Qwen2.5-VL's defaults.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

# The HF processors' ``rescale_factor``; they fuse it into mean/std as ``x * (1 / rescale_factor)``.
_RESCALE_FACTOR = 1 / 255

RESIZE_BACKENDS = ("auto", "float", "two_pass")

_PREPROCESSOR_FILES = ("preprocessor_config.json", "video_preprocessor_config.json")
_SPEC_KEYS_FROM_FILES = ("patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std")


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = 56 * 56,
    max_pixels: int = MAX_PIXELS,
) -> tuple[int, int]:
    """Qwen's resize rule; returns ``(new_height, new_width)``.

    Each side is rounded to the nearest multiple of ``factor``; if the area then exceeds ``max_pixels``
    (or falls below ``min_pixels``) both sides are scaled by the same factor, keeping the aspect ratio,
    and floored (ceiled) to multiples of ``factor``. Identical to ``smart_resize`` in transformers'
    ``models/qwen2_vl/image_processing_qwen2_vl.py`` (including Python's round-half-to-even).

    Raises ``ValueError`` if a side is < 1 or the aspect ratio exceeds 200.
    """
    height, width, factor = int(height), int(width), int(factor)
    if height < 1 or width < 1:
        raise ValueError(f"image sides must be >= 1, got height={height}, width={width}")
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class VisionSpec:
    """Everything video preprocessing needs to know about the vision tower.

    ``min_pixels`` / ``max_pixels`` bound the pixel count of each frame after resizing. Their defaults are
    StreamingVLM's stream settings (``settings.MIN_PIXELS`` and ``settings.MAX_PIXELS``), not the model
    repository's image limits, which is why :meth:`from_pretrained` never reads them from disk.
    """

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = DEFAULTS.min_pixels
    max_pixels: int = DEFAULTS.max_pixels
    image_mean: tuple[float, float, float] = IMAGE_MEAN
    image_std: tuple[float, float, float] = IMAGE_STD

    def __post_init__(self) -> None:
        for name in ("patch_size", "temporal_patch_size", "merge_size", "min_pixels", "max_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"VisionSpec.{name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels ({self.min_pixels}) must be <= max_pixels ({self.max_pixels})")
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if isinstance(value, (int, float)):
                value = (value,) * 3
            value = tuple(float(v) for v in value)
            if len(value) != 3:
                raise ValueError(f"VisionSpec.{name} must have 3 entries (RGB), got {value!r}")
            object.__setattr__(self, name, value)
        if any(s == 0 for s in self.image_std):
            raise ValueError(f"VisionSpec.image_std must be non-zero, got {self.image_std!r}")

    @property
    def factor(self) -> int:
        """Side granularity of a resized frame: one LLM token covers ``factor x factor`` pixels."""
        return self.patch_size * self.merge_size

    @classmethod
    def from_pretrained(cls, path_or_dir: str | os.PathLike[str] | None, **overrides: Any) -> VisionSpec:
        """Build a spec from a model directory (or one preprocessor JSON file), then apply ``overrides``.

        From a model, values are taken (later wins) from ``config.json``'s ``vision_config`` (``patch_size``,
        ``temporal_patch_size``, ``spatial_merge_size``), then ``preprocessor_config.json``, then
        ``video_preprocessor_config.json`` (keys ``patch_size``, ``temporal_patch_size``, ``merge_size``,
        ``image_mean``, ``image_std``). ``min_pixels`` / ``max_pixels`` / ``size`` found there are ignored on
        purpose; pass them as overrides. ``path_or_dir`` is a local directory, a single JSON file, or a hub
        repo id, which is looked up in the local Hugging Face cache only (never downloaded). Whatever is
        missing keeps its default. Unknown override names raise ``TypeError``.
        """
        unknown = sorted(set(overrides) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(f"unknown VisionSpec field(s): {', '.join(unknown)}")
        values: dict[str, Any] = {}
        if path_or_dir is not None and Path(path_or_dir).is_file():
            values.update(_spec_keys(_read_json(Path(path_or_dir))))
        elif path_or_dir is not None:
            vision = _read_json(_model_file(path_or_dir, "config.json")).get("vision_config")
            if isinstance(vision, dict):
                for src, dst in (
                    ("patch_size", "patch_size"),
                    ("temporal_patch_size", "temporal_patch_size"),
                    ("spatial_merge_size", "merge_size"),
                ):
                    if vision.get(src) is not None:
                        values[dst] = vision[src]
            for name in _PREPROCESSOR_FILES:
                values.update(_spec_keys(_read_json(_model_file(path_or_dir, name))))
        values.update(overrides)
        return cls(**values)


def _model_file(path_or_id: str | os.PathLike[str], filename: str) -> Path | None:
    """``filename`` of a local model directory, or of a hub repo id already in the local HF cache."""
    path = Path(path_or_id)
    if path.is_dir():
        return path / filename
    repo_id = os.fspath(path_or_id)
    if path.exists() or repo_id.count("/") != 1 or repo_id.startswith((".", "/")):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return None
    try:
        cached = try_to_load_from_cache(repo_id, filename)
    except ValueError:  # not a valid repo id after all
        return None
    return Path(cached) if isinstance(cached, str) else None


def _read_json(path: Path | None) -> dict[str, Any]:
    if path is None or not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _spec_keys(data: dict[str, Any]) -> dict[str, Any]:
    return {k: data[k] for k in _SPEC_KEYS_FROM_FILES if data.get(k) is not None}


_DEFAULT_SPEC = VisionSpec()


class VideoPreprocessor:
    """Resize + normalise + patchify video chunks for Qwen2-VL / Qwen2.5-VL on ``device``.

    ``resize_backend`` picks how uint8 frames are resized (all antialiased bicubic, ``align_corners=False``):

    * ``"auto"`` (default): what torchvision (hence the HF processor) does on that device: torch's native
      uint8 kernel on CPU; float32 interpolation, clamp to [0, 255], round, back to uint8 elsewhere.
    * ``"float"``: the float32 path on every device (HF-on-GPU semantics everywhere).
    * ``"two_pass"``: float32 horizontal pass, round/clamp to uint8, float32 vertical pass, round/clamp; it
      mimics the uint8 intermediate of the CPU kernel, so on a GPU it lands much closer to HF-on-CPU than
      ``"float"`` (off by at most a couple of levels on a few per cent of pixels instead of a fifth of them).
    """

    def __init__(
        self,
        spec: VisionSpec | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        resize_backend: str = "auto",
    ) -> None:
        if resize_backend not in RESIZE_BACKENDS:
            raise ValueError(f"resize_backend must be one of {RESIZE_BACKENDS}, got {resize_backend!r}")
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating point dtype, got {dtype}")
        self.spec = _DEFAULT_SPEC if spec is None else spec
        self.device = torch.device(device)
        self.dtype = dtype
        self.resize_backend = resize_backend
        # Fused rescale + normalise, computed the way the HF processor does it (float32 mean/std * 1/rescale).
        scale = 1.0 / _RESCALE_FACTOR
        self._mean = (torch.tensor(self.spec.image_mean, dtype=torch.float32) * scale).view(1, 3, 1, 1)
        self._std = (torch.tensor(self.spec.image_std, dtype=torch.float32) * scale).view(1, 3, 1, 1)
        self._mean = self._mean.to(self.device)
        self._std = self._std.to(self.device)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(spec={self.spec!r}, device={str(self.device)!r}, dtype={self.dtype}, "
            f"resize_backend={self.resize_backend!r})"
        )

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        """``(H', W')`` a ``height x width`` frame is resized to (:func:`smart_resize` with the spec)."""
        spec = self.spec
        return smart_resize(height, width, spec.factor, spec.min_pixels, spec.max_pixels)

    def grid_thw(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """``(grid_t, grid_h, grid_w)`` for ``num_frames`` frames of ``height x width`` (computes only)."""
        tp = self.spec.temporal_patch_size
        if num_frames < 1 or num_frames % tp:
            raise ValueError(f"number of frames must be a positive multiple of {tp}, got {num_frames}")
        h, w = self.target_size(height, width)
        return num_frames // tp, h // self.spec.patch_size, w // self.spec.patch_size

    def resize(self, frames: np.ndarray | torch.Tensor | Sequence[Any]) -> torch.Tensor:
        """The resize step of :meth:`__call__` alone: uint8 ``[T, H', W', 3]`` on ``self.device``, with
        ``(H', W')`` = :meth:`target_size`. A preprocessor whose spec admits exactly ``H' * W'`` pixels per frame
        (same patch geometry and mean/std) turns the result into :meth:`__call__`'s output bit for bit: it skips
        the resize and only normalises and patchifies (training carries uint8 frames this way)."""
        video = _as_uint8_video(frames)
        if video.shape[-1] != 3:
            raise ValueError(f"frames must be RGB [T, H, W, 3], got shape {tuple(video.shape)}")
        height, width = self.target_size(video.shape[1], video.shape[2])
        video = video.to(self.device, non_blocking=True).permute(0, 3, 1, 2).contiguous()  # [T, 3, H, W]
        return self._resize(video, height, width).permute(0, 2, 3, 1).contiguous()

    def __call__(
        self, frames: np.ndarray | torch.Tensor | Sequence[Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Preprocess one chunk of frames.

        ``frames``: uint8 RGB ``[T, H, W, 3]`` (numpy array, torch tensor on any device, or a sequence of
        ``[H, W, 3]`` frames), ``T`` a positive multiple of ``temporal_patch_size``.

        Returns ``(pixel_values, grid_thw)``: ``pixel_values`` ``[grid_t * grid_h * grid_w,
        3 * temporal_patch_size * patch_size ** 2]`` in ``self.dtype`` on ``self.device``, and ``grid_thw`` an
        int64 ``[[grid_t, grid_h, grid_w]]`` on ``self.device``.
        """
        video = _as_uint8_video(frames)
        num_frames, height, width, channels = video.shape
        if channels != 3:
            raise ValueError(f"frames must be RGB [T, H, W, 3], got shape {tuple(video.shape)}")
        grid_t, grid_h, grid_w = self.grid_thw(num_frames, height, width)
        spec = self.spec

        video = video.to(self.device, non_blocking=True)
        video = video.permute(0, 3, 1, 2).contiguous()  # [T, 3, H, W], uint8
        video = self._resize(video, grid_h * spec.patch_size, grid_w * spec.patch_size)
        video = video.to(torch.float32).sub_(self._mean).div_(self._std)

        p, m, tp = spec.patch_size, spec.merge_size, spec.temporal_patch_size
        patches = video.view(grid_t, tp, 3, grid_h // m, m, p, grid_w // m, m, p)
        # -> [grid_t, grid_h/m, grid_w/m, m, m, C, tp, p, p]: HF's order, merge windows contiguous.
        patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
        pixel_values = patches.reshape(grid_t * grid_h * grid_w, 3 * tp * p * p).to(self.dtype)
        grid = torch.tensor([[grid_t, grid_h, grid_w]], dtype=torch.long, device=self.device)
        return pixel_values, grid

    def _resize(self, video: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Antialiased bicubic resize of a uint8 ``[T, C, H, W]`` batch to ``height x width`` (uint8 out)."""
        if tuple(video.shape[-2:]) == (height, width):
            return video
        backend = self.resize_backend
        if backend == "auto":
            backend = "native" if video.device.type == "cpu" else "float"
        if backend == "native":
            return F.interpolate(
                video, size=(height, width), mode="bicubic", align_corners=False, antialias=True
            )
        x = video.to(torch.float32)
        if backend == "two_pass":
            if x.shape[-1] != width:
                x = _bicubic_to_uint8_range(x, x.shape[-2], width)
            if x.shape[-2] != height:
                x = _bicubic_to_uint8_range(x, height, width)
        else:
            x = _bicubic_to_uint8_range(x, height, width)
        return x.to(torch.uint8)


def _bicubic_to_uint8_range(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    # torchvision's float fallback for uint8 bicubic: interpolate, clamp to [0, 255], round (stays float).
    x = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return x.clamp_(min=0, max=255).round_()


def _as_uint8_video(frames: np.ndarray | torch.Tensor | Sequence[Any]) -> torch.Tensor:
    """``frames`` as a uint8 ``[T, H, W, C]`` tensor (not moved yet; numpy memory shared when possible)."""
    if isinstance(frames, torch.Tensor):
        video = frames
    elif isinstance(frames, np.ndarray):
        video = _numpy_to_tensor(frames)
    elif isinstance(frames, Sequence) and len(frames) > 0:
        items = [f if isinstance(f, torch.Tensor) else _numpy_to_tensor(np.asarray(f)) for f in frames]
        if any(t.dtype != torch.uint8 for t in items):
            raise TypeError("frames must be uint8")
        video = torch.stack([t.to(items[0].device) for t in items])
    else:
        raise TypeError(
            f"frames must be a uint8 numpy array, torch tensor or non-empty sequence, got {frames!r:.80}"
        )
    if video.dtype != torch.uint8:
        raise TypeError(f"frames must be uint8, got {video.dtype}")
    if video.ndim != 4:
        raise ValueError(f"frames must have shape [T, H, W, 3], got {tuple(video.shape)}")
    return video


def _numpy_to_tensor(array: np.ndarray) -> torch.Tensor:
    if array.dtype != np.uint8:
        raise TypeError(f"frames must be uint8, got {array.dtype}")
    # Negative strides (e.g. a BGR->RGB [..., ::-1] view) and read-only buffers cannot be shared with torch.
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(np.ascontiguousarray(array))
