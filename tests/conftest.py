"""Shared fixtures: a tiny random Qwen2.5-VL built once per session, small frames, a small vision spec."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streaming_vlm.models import build_tiny_model, load_model
from streaming_vlm.preprocess import VisionSpec

# Small frames keep tests fast: 56x84 -> 4x6 patches -> 2x3 = 6 LLM tokens per 2-frame chunk (h != w).
FRAME_H, FRAME_W = 56, 84
SMALL_SPEC = VisionSpec(min_pixels=28 * 28, max_pixels=112 * 112)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    return load_model(str(tiny_model_dir), device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def one_thread():
    """The tiny model gains nothing from threads, and on a busy machine their spinning costs 100x (a module's tests
    use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_frames(seed: int, n: int = 2, h: int = FRAME_H, w: int = FRAME_W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def logits_diff(x, y) -> float:
    """Largest absolute difference of two logit vectors whose masked entries (-inf: forbidden or penalised tokens)
    must sit at the same ids; the masked entries themselves are left out (their difference is NaN, which a
    ``max`` would silently skip)."""
    import torch

    masked = torch.isneginf(x)
    assert torch.equal(masked, torch.isneginf(y)), "masked (-inf) logits differ"
    assert not torch.isnan(x).any() and not torch.isnan(y).any(), "NaN logits"
    if bool(masked.all()):
        return 0.0
    return float((x[~masked] - y[~masked]).abs().max())
