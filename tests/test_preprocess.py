"""Tests for streaming_vlm.preprocess, including a numerical comparison with transformers' processor."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import numpy as np
import pytest
import torch

from streaming_vlm.preprocess import (
    IMAGE_MEAN,
    IMAGE_STD,
    VideoPreprocessor,
    VisionSpec,
    smart_resize,
)

try:  # tests/ is not a package by default; support both layouts
    from tests.hf_reference import ReferenceCase, hf_reference, torchvision_dir, torchvision_import_error
except ImportError:
    from hf_reference import ReferenceCase, hf_reference, torchvision_dir, torchvision_import_error

M4 = 4 * 28 * 28
M100 = 100 * 28 * 28
MAX = 768 * 28 * 28


def _frames(t: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (t, h, w, 3), dtype=torch.uint8, generator=gen)


def _smooth_frames(t: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Photo-like frames (low-frequency content) rather than white noise."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(t, 3, h // 8 + 2, w // 8 + 2, generator=gen) * 255
    fine = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return fine.round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


# ----------------------------------------------------------------------------------------------- smart_resize


@pytest.mark.parametrize(
    ("height", "width", "min_pixels", "max_pixels", "expected"),
    [
        (720, 1280, M4, MAX, (560, 1008)),  # 20 x 36 merged tokens per 2-frame chunk
        (1080, 1920, M100, MAX, (560, 1008)),
        (112, 112, M4, MAX, (112, 112)),  # already a multiple of 28 and within bounds: unchanged
        (100, 90, M4, MAX, (112, 84)),  # rounded to nearest multiples of 28
        (123, 257, M100, MAX, (196, 420)),  # grown up to min_pixels
        (50, 70, M100, MAX, (252, 336)),
        (10, 10, M100, MAX, (280, 280)),  # tiny frames scale up to min_pixels
        (480, 640, M100, MAX, (476, 644)),
        (2000, 2000, M100, MAX, (756, 756)),  # shrunk (floored) below max_pixels
        (28, 5000, M4, MAX, (28, 5012)),  # extreme but allowed aspect ratio
    ],
)
def test_smart_resize_table(height, width, min_pixels, max_pixels, expected):
    out = smart_resize(height, width, 28, min_pixels, max_pixels)
    assert out == expected
    h, w = out
    assert h % 28 == 0 and w % 28 == 0
    assert min_pixels <= h * w <= max_pixels


def test_smart_resize_defaults_and_errors():
    assert smart_resize(720, 1280) == (560, 1008)
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 2500)
    with pytest.raises(ValueError, match=">= 1"):
        smart_resize(0, 100)
    with pytest.raises(ValueError, match=">= 1"):
        smart_resize(100, -5)


def test_smart_resize_bounds_random():
    rng = np.random.default_rng(0)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(8, 3000, size=2))
        if max(h, w) / min(h, w) > 200:
            continue
        rh, rw = smart_resize(h, w, 28, M100, MAX)
        assert rh % 28 == 0 and rw % 28 == 0
        assert rh * rw <= MAX
        assert rh * rw >= M100 or (rh, rw) == (round(h / 28) * 28, round(w / 28) * 28)


# ------------------------------------------------------------------------------------------------- VisionSpec


def test_vision_spec_defaults():
    spec = VisionSpec()
    assert spec.factor == 28
    assert (spec.min_pixels, spec.max_pixels) == (78400, 602112)
    assert spec.image_mean == IMAGE_MEAN and spec.image_std == IMAGE_STD
    with pytest.raises(ValueError):
        VisionSpec(min_pixels=10, max_pixels=5)
    with pytest.raises(ValueError):
        VisionSpec(image_mean=(0.5, 0.5))
    with pytest.raises(ValueError):
        VisionSpec(patch_size=0)


def test_vision_spec_from_pretrained(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "patch_size": 16,
                "temporal_patch_size": 2,
                "merge_size": 2,
                "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.25, 0.25, 0.25],
                "min_pixels": 3136,
                "max_pixels": 12845056,
                "image_processor_type": "Qwen2VLImageProcessor",
            }
        )
    )
    spec = VisionSpec.from_pretrained(tmp_path)
    assert spec.patch_size == 16 and spec.factor == 32
    assert spec.image_mean == (0.5, 0.5, 0.5) and spec.image_std == (0.25, 0.25, 0.25)
    # pixel bounds are ours, never the repository's
    assert (spec.min_pixels, spec.max_pixels) == (VisionSpec().min_pixels, VisionSpec().max_pixels)

    # the video config wins over the image config; overrides win over both
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps({"patch_size": 14, "merge_size": 2}))
    spec = VisionSpec.from_pretrained(str(tmp_path), max_pixels=360 * 420)
    assert spec.patch_size == 14 and spec.max_pixels == 360 * 420
    assert spec.image_mean == (0.5, 0.5, 0.5)

    # a single JSON file works too
    spec = VisionSpec.from_pretrained(tmp_path / "preprocessor_config.json")
    assert spec.patch_size == 16

    with pytest.raises(TypeError, match="unknown"):
        VisionSpec.from_pretrained(tmp_path, max_pixel=1)


def test_vision_spec_from_pretrained_model_config_and_missing(tmp_path):
    assert VisionSpec.from_pretrained(tmp_path / "nope") == VisionSpec()
    assert VisionSpec.from_pretrained("Qwen/Qwen2.5-VL-7B-Instruct") == VisionSpec()
    assert VisionSpec.from_pretrained(tmp_path, min_pixels=M4) == VisionSpec(min_pixels=M4)
    (tmp_path / "config.json").write_text(
        json.dumps({"vision_config": {"patch_size": 14, "spatial_merge_size": 1, "temporal_patch_size": 2}})
    )
    assert VisionSpec.from_pretrained(tmp_path).merge_size == 1


def test_vision_spec_from_pretrained_hub_cache(tmp_path, monkeypatch):
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    repo = tmp_path / "models--Org--Tiny-VL"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    (snapshot / "preprocessor_config.json").write_text(json.dumps({"patch_size": 16, "max_pixels": 1}))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    spec = VisionSpec.from_pretrained("Org/Tiny-VL")
    assert spec.patch_size == 16 and spec.max_pixels == VisionSpec().max_pixels
    assert VisionSpec.from_pretrained("Org/Not-Cached") == VisionSpec()


# ------------------------------------------------------------------------------------- VideoPreprocessor


def test_patch_order_is_merge_window_major():
    """Without HF: a frame whose pixels encode their coordinates must come out in merge-window order."""
    spec = VisionSpec(min_pixels=M4, max_pixels=MAX, image_mean=(0.0, 0.0, 0.0), image_std=(1.0, 1.0, 1.0))
    h, w = 56, 84  # already valid: no resize, so pixel values pass through exactly
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    frame = torch.stack([ys, xs, torch.zeros_like(ys)], dim=-1).to(torch.uint8)
    frames = torch.stack([frame, frame.clone().index_fill_(-1, torch.tensor([2]), 7)])  # t=1 has blue=7
    pv, grid = VideoPreprocessor(spec)(frames)
    assert grid.tolist() == [[1, 4, 6]]
    pv = (pv * 255).round().long().view(-1, 3, 2, 14, 14)  # [patch, C, tp, p, p]
    # row r -> (merge row block, merge col block, in-window row, in-window col), windows are 2x2 patches
    for r in range(pv.shape[0]):
        window, inner = divmod(r, 4)
        bh, bw = divmod(window, 6 // 2)
        ph, pw = bh * 2 + inner // 2, bw * 2 + inner % 2
        assert pv[r, 0, 0, 0, 0] == ph * 14 and pv[r, 1, 0, 0, 0] == pw * 14
        assert pv[r, 0, 0, 13, 0] == ph * 14 + 13 and pv[r, 1, 0, 0, 13] == pw * 14 + 13
        assert pv[r, 2, 0].eq(0).all() and pv[r, 2, 1].eq(7).all()


def test_output_shapes_dtype_and_errors():
    proc = VideoPreprocessor(VisionSpec(min_pixels=M4, max_pixels=MAX), dtype=torch.bfloat16)
    pv, grid = proc(_frames(4, 100, 90))
    assert proc.target_size(100, 90) == (112, 84)
    assert grid.dtype == torch.long and grid.tolist() == [[2, 8, 6]]
    assert pv.dtype == torch.bfloat16 and pv.shape == (2 * 8 * 6, 3 * 2 * 14 * 14)
    assert proc.grid_thw(4, 100, 90) == (2, 8, 6)
    ref, _ = VideoPreprocessor(VisionSpec(min_pixels=M4, max_pixels=MAX))(_frames(4, 100, 90))
    assert torch.equal(pv, ref.to(torch.bfloat16))

    with pytest.raises(ValueError, match="multiple of 2"):
        proc(_frames(3, 56, 56))
    with pytest.raises(ValueError, match="multiple of 2"):
        proc(_frames(0, 56, 56))
    with pytest.raises(TypeError, match="uint8"):
        proc(_frames(2, 56, 56).float())
    with pytest.raises(TypeError, match="uint8"):
        proc(np.zeros((2, 56, 56, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="RGB"):
        proc(torch.zeros(2, 56, 56, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="shape"):
        proc(torch.zeros(56, 56, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="resize_backend"):
        VideoPreprocessor(resize_backend="lanczos")
    with pytest.raises(ValueError, match="floating"):
        VideoPreprocessor(dtype=torch.int64)


def test_numpy_torch_and_list_inputs_agree():
    proc = VideoPreprocessor()
    frames = _frames(2, 123, 257, seed=3)
    pv_t, grid_t = proc(frames)
    pv_n, grid_n = proc(frames.numpy())
    pv_l, grid_l = proc([f for f in frames.numpy()])
    assert torch.equal(pv_t, pv_n) and torch.equal(pv_t, pv_l)
    assert torch.equal(grid_t, grid_n) and torch.equal(grid_t, grid_l)

    # BGR->RGB views (negative strides) and read-only arrays are accepted
    bgr = np.ascontiguousarray(frames.numpy()[..., ::-1])
    assert torch.equal(proc(bgr[..., ::-1])[0], pv_t)
    ro = frames.numpy().copy()
    ro.setflags(write=False)
    assert torch.equal(proc(ro)[0], pv_t)
    assert torch.equal(frames, _frames(2, 123, 257, seed=3))  # input untouched


def test_resize_backends_agree_closely():
    frames = _smooth_frames(2, 200, 300, seed=1)
    outs = {b: VideoPreprocessor(resize_backend=b)(frames)[0] for b in ("auto", "float", "two_pass")}
    level = 1 / (255 * min(IMAGE_STD))  # one uint8 step after normalisation
    assert (outs["float"] - outs["auto"]).abs().max() <= 1.01 * level
    assert (outs["two_pass"] - outs["auto"]).abs().max() <= 2.01 * level
    # two_pass mimics the CPU kernel's uint8 intermediate: far fewer pixels off than single-pass float
    frac_float = (outs["float"] != outs["auto"]).float().mean()
    frac_two = (outs["two_pass"] != outs["auto"]).float().mean()
    assert frac_two < frac_float


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_float_path():
    frames = _frames(2, 123, 257, seed=4)
    cpu = VideoPreprocessor(resize_backend="float")(frames)
    gpu = VideoPreprocessor(device="cuda")(frames.numpy())
    assert gpu[0].device.type == "cuda" and gpu[1].device.type == "cuda"
    assert torch.equal(gpu[1].cpu(), cpu[1])
    level = 1 / (255 * min(IMAGE_STD))
    assert (gpu[0].cpu() - cpu[0]).abs().max() <= 1.01 * level
    bf16 = VideoPreprocessor(device="cuda", dtype=torch.bfloat16)(frames.cuda())[0]
    assert bf16.dtype == torch.bfloat16 and bf16.device.type == "cuda"


# ------------------------------------------------------------------------------------------ reference: HF


HF_CASES = [
    # (T, H, W, min_pixels, max_pixels)
    (2, 112, 112, M4, MAX),  # no resize at all
    (4, 56, 84, M100, MAX),  # upscale to min_pixels
    (2, 123, 257, M100, MAX),  # non-multiple of 28, upscale
    (2, 300, 400, M4, 128 * 28 * 28),  # downscale to max_pixels
    (4, 150, 333, M4, MAX),  # non-multiple of 28, mild resize
    (2, 720, 1280, M100, MAX),  # StreamingVLM's real setting: 1280x720 -> 1008x560
]
# (T, H, W) run through torchvision's float resize route, with min_pixels=M100, max_pixels=MAX
HF_FLOAT_CASES = [(2, 123, 257), (2, 600, 900)]


def _hf_reference_cases() -> dict[tuple, ReferenceCase]:
    cases: dict[tuple, ReferenceCase] = {}
    for t, h, w, min_pixels, max_pixels in HF_CASES:
        for kind, frames in (("noise", _frames(t, h, w, seed=h * w)), ("smooth", _smooth_frames(t, h, w, seed=h + w))):
            cases[(t, h, w, min_pixels, max_pixels, kind)] = ReferenceCase(frames, min_pixels, max_pixels)
    for t, h, w in HF_FLOAT_CASES:
        cases[("float", t, h, w)] = ReferenceCase(_frames(t, h, w, seed=w), M100, MAX, force_float_resize=True)
    return cases


@pytest.fixture(scope="module")
def hf_outputs() -> dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``key -> (frames, hf_pixel_values, hf_grid_thw)`` for every reference case, from one HF subprocess."""
    cases = _hf_reference_cases()
    run = hf_reference(list(cases.values()))
    return {key: (case.frames, *out) for (key, case), out in zip(cases.items(), run.outputs, strict=True)}


@pytest.mark.parametrize(("t", "h", "w", "min_pixels", "max_pixels"), HF_CASES)
def test_matches_hf_video_processor(hf_outputs, t, h, w, min_pixels, max_pixels):
    ours = VideoPreprocessor(VisionSpec(min_pixels=min_pixels, max_pixels=max_pixels))
    for kind in ("noise", "smooth"):
        frames, ref_pv, ref_grid = hf_outputs[(t, h, w, min_pixels, max_pixels, kind)]
        pv, grid = ours(frames)
        assert torch.equal(grid, ref_grid.to(torch.long))
        assert pv.shape == ref_pv.shape and pv.dtype == ref_pv.dtype == torch.float32
        assert (pv - ref_pv).abs().max().item() <= 1e-5


def test_float_backend_matches_hf_float_fallback(hf_outputs):
    """``resize_backend="float"`` (what "auto" does off CPU) equals HF on torchvision's float path.

    The worker forces that path on CPU by making torchvision's ``_do_native_uint8_resize_on_cpu`` say no.
    """
    ours = VideoPreprocessor(resize_backend="float")
    for t, h, w in HF_FLOAT_CASES:
        frames, ref_pv, ref_grid = hf_outputs[("float", t, h, w)]
        pv, grid = ours(frames)
        assert torch.equal(grid, ref_grid)
        assert (pv - ref_pv).abs().max().item() <= 1e-5


def test_no_broken_torchvision_importable_in_test_process():
    """The HF reference leaves no torchvision behind here that transformers would import and choke on."""
    extra = os.path.realpath(torchvision_dir())
    assert all(os.path.realpath(p) != extra for p in sys.path if p), "reference torchvision dir leaked to sys.path"
    if importlib.util.find_spec("torchvision") is None:
        return
    error = torchvision_import_error(list(sys.path))
    if error is None:
        pytest.skip("torchvision is installed in this environment and imports fine")
    pytest.fail(f"torchvision is importable from the test process but its import fails:\n{error}")
