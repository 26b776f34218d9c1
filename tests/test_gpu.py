"""On a CUDA device (skipped without one; run on a GPU machine with ``pytest -m gpu``): the fast path against itself
and against the CPU.

- decode steps captured as CUDA graphs and replayed = the same steps run eagerly on the same device: identical
  tokens, kept ids and positions, logits within 1e-4 (fp32), over 60 chunks with every kind of eviction, greedy and
  sampled (sampling runs outside the graphs, from each session's own generator); the graphs really were captured
  and replayed, and no capture fell back to eager steps;
- the tiny model streaming on the GPU (graphs on) = the same model streaming on the CPU: identical greedy tokens,
  kept ids and positions, logits within 1e-3 (fp32 with TF32 off);
- batched decoding on the GPU (``batch.step_many``, sessions at different stream lengths) = each session alone on
  the GPU with graphs on.
"""

from __future__ import annotations

import pytest
import torch

from streaming_vlm.batch import step_many
from streaming_vlm.engine import StreamConfig, StreamSession
from streaming_vlm.layout import Kind
from streaming_vlm.models import load_model
from streaming_vlm.sampling import SamplingConfig
from tests.conftest import SMALL_SPEC, logits_diff, random_frames

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

PREVIOUS = "Earlier: the home side scored twice and the crowd is loud."
WINDOWS = dict(vision_window=3, text_rounds=2, text_sink=4, text_window=6)
GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=4)
SAMPLED = SamplingConfig(temperature=0.9, top_k=40, top_p=0.9, repetition_penalty=1.2, max_new_tokens=5)


@pytest.fixture(scope="module")
def exact_fp32():
    """fp32 matrix products and convolutions without TF32 (cuDNN allows it by default), as on the CPU."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="module")
def tiny_cuda(tiny_model_dir, exact_fp32):
    return load_model(str(tiny_model_dir), device="cuda", dtype="fp32")


def _session(model, tokenizer, graphs: bool, sampling=GREEDY, seed=0) -> StreamSession:
    config = StreamConfig(sampling=sampling, previous_text=PREVIOUS, seed=seed, **WINDOWS)
    return StreamSession(model, tokenizer, config, vision_spec=SMALL_SPEC, keep_logits=True, cuda_graphs=graphs)


def _assert_same_state(a: StreamSession, b: StreamSession, what: str) -> None:
    for field in ("ids", "kind", "round"):
        assert torch.equal(getattr(a.cache.meta, field).cpu(), getattr(b.cache.meta, field).cpu()), \
            f"{what}: kept {field} differ"
    assert torch.equal(a.cache.positions.cpu(), b.cache.positions.cpu()), f"{what}: positions differ"
    assert a.cache.next_position == b.cache.next_position, what


def _stream_pair(a: StreamSession, b: StreamSession, chunks: int, tol: float) -> dict[str, int]:
    """Step both sessions through the same ``chunks`` chunks, asserting after each that they agree; returns what
    happened (tokens decoded, vision blocks evicted, turns retired)."""
    seen = dict(tokens=0, evicted=0, retired=0)
    for k in range(chunks):
        before = a.cache.meta
        frames = random_frames(300 + k)
        x, y = a.step(frames, k, k + 1), b.step(frames, k, k + 1)
        assert x.token_ids == y.token_ids, f"chunk {k}: tokens differ"
        assert len(x.logits) == len(y.logits)
        for i, (p, q) in enumerate(zip(x.logits, y.logits, strict=True)):
            assert logits_diff(p, q) <= tol, f"chunk {k}, token {i}: logits differ by {logits_diff(p, q)}"
        _assert_same_state(a, b, f"chunk {k}")
        meta = a.cache.meta
        seen["tokens"] += len(x.token_ids)
        seen["evicted"] += len(set(before.round[before.kind == Kind.VISION].tolist())
                               - set(meta.round[meta.kind == Kind.VISION].tolist()))
        seen["retired"] += len(set(before.round[before.kind == Kind.ASSIST_TEXT].tolist())
                               - set(meta.round[meta.kind == Kind.ASSIST_TEXT].tolist()))
    return seen


@pytest.mark.parametrize("sampling", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_graph_replayed_decode_equals_eager_decode(tiny_cuda, tiny, sampling):
    graphs = _session(tiny_cuda.model, tiny.tokenizer, True, sampling, seed=3)
    eager = _session(tiny_cuda.model, tiny.tokenizer, False, sampling, seed=3)
    seen = _stream_pair(graphs, eager, 60, tol=1e-4)
    assert graphs.graphs.backend is not None, "a capture failed: the steps fell back to eager"
    assert graphs.graphs.captures >= 2 and eager.graphs.captures == 0
    assert seen["tokens"] >= 150 and seen["evicted"] >= 50 and seen["retired"] >= 50, seen


def test_gpu_stream_equals_cpu_stream(tiny_cuda, tiny):
    gpu = _session(tiny_cuda.model, tiny.tokenizer, True)
    cpu = _session(tiny.model, tiny.tokenizer, False)
    seen = _stream_pair(gpu, cpu, 40, tol=1e-3)
    assert gpu.graphs.captures >= 2
    assert seen["tokens"] >= 100 and seen["evicted"] >= 30, seen


def test_batched_decode_on_gpu_equals_each_session_alone(tiny_cuda, tiny):
    batched = [_session(tiny_cuda.model, tiny.tokenizer, True, SAMPLED, seed=s) for s in (1, 2, 3)]
    alone = [_session(tiny_cuda.model, tiny.tokenizer, True, SAMPLED, seed=s) for s in (1, 2, 3)]
    for i, advance in enumerate((0, 3, 7)):  # different stream lengths
        for k in range(advance):
            for s in (batched[i], alone[i]):
                s.step(random_frames(700 * i + k), k, k + 1)
    tokens = 0
    for k in range(15):
        chunks = [(random_frames(90 * i + k), 10 + k, 11 + k) for i in range(3)]
        results = step_many(batched, chunks)
        for i, a in enumerate(results):
            b = alone[i].step(*chunks[i])
            assert a.token_ids == b.token_ids, f"chunk {k}, session {i}: tokens differ"
            for p, q in zip(a.logits, b.logits, strict=True):
                assert logits_diff(p, q) <= 1e-4, f"chunk {k}, session {i}"
            _assert_same_state(batched[i], alone[i], f"chunk {k}, session {i}")
            assert torch.equal(batched[i].generator.get_state(), alone[i].generator.get_state())
            tokens += len(a.token_ids)
    assert tokens >= 100
