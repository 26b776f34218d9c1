"""``scripts/bench_gpu.py``: the 7B shape it builds has Qwen2.5-VL-7B's parameter count (on the meta device), a
short CPU run with the tiny shape writes every field with numbers that agree with each other (token and frame
counts, FPS = frames / wall, decode time within chunk latency), the forced decode length holds even for a model that
wants to stop at once, and bad options are one-line usage errors."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from streaming_vlm.models import build_tiny_tokenizer, load_model
from tests.conftest import SMALL_SPEC, random_frames

REPO = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def _load_script():
    spec = importlib.util.spec_from_file_location("bench_gpu", REPO / "scripts" / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script is executed
    spec.loader.exec_module(module)
    return module


bench_gpu = _load_script()

RUN_KEYS = {
    "resolution", "frame_size", "resized_frame_size", "vision_tokens_per_chunk", "mode", "batch", "batched",
    "sessions", "chunks", "timed_chunks", "frames", "frames_timed", "generated_tokens", "tokens_timed",
    "forced_tokens_per_chunk", "tokens_per_chunk_min", "tokens_per_chunk_max", "ms_per_token_p50", "ms_per_token_p99",
    "chunk_latency_p50_s", "chunk_latency_p99_s", "round_latency_p50_s", "round_latency_p99_s",
    "vision_ms_per_chunk_p50", "vision_ms_per_chunk_mean", "first_round_s", "wall_s", "source_s", "fps",
    "tokens_per_s", "real_time_factor", "peak_memory_mb", "memory_kind", "peak_rss_mb", "rss_end_mb",
    "cache_tokens_max", "cache_tokens_last", "cuda_graphs", "per_minute", "ms_per_token_last_vs_first_minute",
    "ms_per_token_last_vs_second_minute", "targets", "oom",
}  # fmt: skip
META_KEYS = {
    "shape", "parameters", "shape_dims", "weights", "tokenizer", "dtype", "device", "device_name", "cuda_graphs",
    "cuda_graphs_effective", "batched_stepper", "sequential", "attention", "minutes", "fps", "chunk_seconds",
    "forced_tokens_per_chunk", "min_pixels", "max_pixels", "modes", "batches", "resolutions", "sampling", "seed",
    "targets", "torch", "transformers", "cuda", "python", "platform", "cpu_count", "torch_threads", "load_before",
    "load_after", "wall_s", "date", "command",
}  # fmt: skip
TIMINGS = ("ms_per_token_p50", "ms_per_token_p99", "chunk_latency_p50_s", "chunk_latency_p99_s", "round_latency_p50_s",
           "round_latency_p99_s", "vision_ms_per_chunk_p50", "vision_ms_per_chunk_mean", "first_round_s", "wall_s",
           "fps", "tokens_per_s", "real_time_factor", "peak_memory_mb", "peak_rss_mb")


def test_7b_shape_is_qwen25_vl_7b():
    """Built on the meta device (no memory): 8,292,166,656 parameters (the hub's "8.29B"), of which the vision tower
    676,550,144, the language model 7,070,619,136 and the untied head 544,997,376; bf16; the published geometry."""
    tokenizer = build_tiny_tokenizer()
    model = bench_gpu.random_model(bench_gpu.QWEN25_VL_7B, tokenizer, "meta", torch.bfloat16)
    counts = bench_gpu.parameter_counts(model)
    assert counts == {"total": 8_292_166_656, "vision": 676_550_144, "language_model": 7_070_619_136,
                      "lm_head": 544_997_376}
    assert counts["total"] == counts["vision"] + counts["language_model"] + counts["lm_head"]
    assert all(p.is_meta and p.dtype == torch.bfloat16 for p in model.parameters())
    text, vision = model.config.text_config, model.config.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads,
            text.intermediate_size, text.vocab_size) == (3584, 28, 28, 4, 18944, 152064)
    assert text.rope_parameters["mrope_section"] == [16, 24, 24] and text.rope_parameters["rope_theta"] == 1e6
    assert (vision.depth, vision.hidden_size, vision.out_hidden_size, vision.fullatt_block_indexes) == (
        32, 1280, 3584, [7, 15, 23, 31])
    # K/V per token in bf16: 2 x 28 layers x 4 heads x 128 x 2 bytes = 56 KiB (the environment notes' arithmetic)
    head_dim = text.hidden_size // text.num_attention_heads
    assert 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * 2 == 56 * 1024
    assert model.config.video_token_id == tokenizer.convert_tokens_to_ids("<|video_pad|>")


def test_random_model_path_streams():
    """The 7B path on a CPU at a small size (the shape's fields replaced): weights created in bf16 with transformers'
    initialisation (linear weights ~ N(0, 0.02), norms 1), token ids from the tokenizer, and a session streams
    chunks of exactly the forced length through it."""
    import dataclasses

    from streaming_vlm.engine import StreamConfig, StreamSession
    from streaming_vlm.sampling import SamplingConfig

    small = dataclasses.replace(
        bench_gpu.QWEN25_VL_7B, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, mrope_section=(4, 6, 6), vision_depth=2, vision_hidden_size=64,
        vision_intermediate_size=128, vision_num_heads=4, fullatt_block_indexes=(1,), vocab_size=1024)
    tokenizer = build_tiny_tokenizer()
    model = bench_gpu.random_model(small, tokenizer, "cpu", torch.bfloat16, seed=0)
    assert all(p.dtype == torch.bfloat16 and torch.isfinite(p).all() for p in model.parameters())
    q = model.model.language_model.layers[0].self_attn.q_proj.weight.float()
    assert 0.018 < float(q.std()) < 0.022 and float(model.model.language_model.norm.weight.float().mean()) == 1.0
    assert model.config.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    session = StreamSession(model, tokenizer, StreamConfig(sampling=SamplingConfig(max_new_tokens=5)),
                            vision_spec=SMALL_SPEC)
    bench_gpu.force_length(session, small.vocab_size)
    results = [session.step(random_frames(k), float(k), k + 1.0) for k in range(2)]
    assert [r.new_tokens for r in results] == [5, 5]
    assert all(0 <= i < len(tokenizer) for r in results for i in r.token_ids)


def test_force_length_decodes_every_token(tiny_model_dir):
    """A model whose greedy choice is always ``<|im_end|>`` stops at once; with :func:`force_length` every chunk
    decodes exactly ``max_new_tokens`` tokens, none of them a stop token or outside the tokenizer."""
    from streaming_vlm.engine import StreamConfig, StreamSession
    from streaming_vlm.sampling import SamplingConfig

    loaded = load_model(str(tiny_model_dir), device="cpu", dtype="fp32")
    model, tokenizer = loaded.model, loaded.tokenizer
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[im_end] = 1e4  # <|im_end|> always the most likely token
    model.lm_head = head.eval()
    config = StreamConfig(sampling=SamplingConfig(temperature=0.0, max_new_tokens=7))

    def run(force: bool) -> list[list[int]]:
        session = StreamSession(model, tokenizer, config, vision_spec=SMALL_SPEC)
        if force:
            bench_gpu.force_length(session, model.config.text_config.vocab_size)
        return [session.step(random_frames(k), float(k), k + 1.0).token_ids for k in range(3)]

    assert run(force=False) == [[], [], []]
    forced = run(force=True)
    assert [len(ids) for ids in forced] == [7, 7, 7]
    stops = {im_end, tokenizer.convert_tokens_to_ids("<|endoftext|>")}
    assert all(i not in stops and 0 <= i < len(tokenizer) for ids in forced for i in ids)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two short CPU runs of the tiny shape: 6 s at two sizes with batches 1 and 2 (batched where
    ``streaming_vlm.batch`` exists), and batch 2 with ``--sequential``."""
    out = tmp_path_factory.mktemp("bench_gpu")
    docs = {}
    for name, extra in (("default", ["--resolutions", "56x84,144p", "--batch", "1,2"]),
                        ("sequential", ["--resolutions", "56x84", "--batch", "2", "--sequential"])):
        path = out / name / "bench_gpu.json"
        assert bench_gpu.main(["--shape", "tiny", "--minutes", "0.1", "--device", "cpu", "--out", str(path),
                               *extra]) == 0
        docs[name] = (json.loads(path.read_text()), path)
    return docs


def _finite_positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_tiny_run_fields_and_consistency(runs):
    batch_available = importlib.util.find_spec("streaming_vlm.batch") is not None
    for name, (doc, path) in runs.items():
        meta = doc["meta"]
        assert META_KEYS <= set(meta), META_KEYS - set(meta)
        assert meta["shape"] == "tiny" and meta["dtype"] == "float32" and meta["device"] == "cpu"
        assert meta["cuda_graphs"] == "auto" and meta["cuda_graphs_effective"] == "off"
        assert meta["batched_stepper"] == (batch_available and name != "sequential")
        assert meta["torch"] == torch.__version__ and meta["transformers"]
        assert 500_000 < meta["parameters"]["total"] < 1_000_000  # the tests' tiny model
        assert path.with_suffix(".png").read_bytes().startswith(PNG)
        expected = [(r, b) for r in meta["resolutions"] for b in meta["batches"]]
        assert [(r["resolution"], r["batch"]) for r in doc["runs"]] == expected
        for r in doc["runs"]:
            assert RUN_KEYS <= set(r), RUN_KEYS - set(r)
            b, forced = r["batch"], r["forced_tokens_per_chunk"]
            assert r["oom"] is None and r["mode"] == "streaming" and r["sessions"] == b
            assert r["batched"] == (b > 1 and meta["batched_stepper"])
            # counts: 0.1 min = 6 one-second chunks of 2 frames per session, 20 tokens in every chunk
            assert (r["chunks"], r["timed_chunks"], forced) == (6, 5, 20)
            assert r["frames"] == 6 * b * 2 and r["frames_timed"] == 5 * b * 2
            assert r["tokens_per_chunk_min"] == r["tokens_per_chunk_max"] == forced
            assert r["generated_tokens"] == 6 * b * forced and r["tokens_timed"] == 5 * b * forced
            for key in TIMINGS:
                assert _finite_positive(r[key]), (key, r[key])
            # rates from the same wall time; the real-time factor is wall / stream seconds
            assert r["fps"] == pytest.approx(r["frames_timed"] / r["wall_s"], rel=1e-3)
            assert r["tokens_per_s"] == pytest.approx(r["tokens_timed"] / r["wall_s"], rel=1e-3)
            assert r["real_time_factor"] == pytest.approx(r["wall_s"] / 5.0, rel=1e-3, abs=5.1e-5)  # 4 decimals
            assert r["ms_per_token_p99"] >= r["ms_per_token_p50"]
            assert r["chunk_latency_p99_s"] >= r["chunk_latency_p50_s"]
            assert r["round_latency_p50_s"] >= r["chunk_latency_p50_s"]
            # a chunk's decoding and its vision tower run inside its step
            assert r["ms_per_token_p50"] * forced / 1000 < r["chunk_latency_p50_s"]
            assert r["vision_ms_per_chunk_p50"] / 1000 < r["chunk_latency_p50_s"]
            if not r["batched"]:  # stepped one after another: a round is the sum of its sessions' steps
                assert r["round_latency_p50_s"] >= b * 0.9 * r["chunk_latency_p50_s"]
            rw, rh = r["resized_frame_size"]
            assert rw % 28 == 0 and rh % 28 == 0 and r["vision_tokens_per_chunk"] == (rw // 28) * (rh // 28)
            assert r["cache_tokens_max"] > r["vision_tokens_per_chunk"]
            assert r["memory_kind"] == "rss" and r["peak_memory_mb"] == r["peak_rss_mb"]
            assert r["cuda_graphs"] == {"on": False, "captures": 0}
            pm = r["per_minute"]
            assert pm["minute"] == [1] and pm["ms_per_token_p50"] == [r["ms_per_token_p50"]]
            assert r["ms_per_token_last_vs_first_minute"] == 1.0 and r["ms_per_token_last_vs_second_minute"] is None
            t = r["targets"]
            assert t["ms_per_token_p50"]["value"] == r["ms_per_token_p50"]
            assert t["chunk_latency_p99_s"]["value"] == r["chunk_latency_p99_s"]
            assert t["chunk_latency_p99_s"]["applies"] is False  # not 720p
            assert t["ms_per_token_p50"]["met"] == (r["ms_per_token_p50"] <= 8.0)


@pytest.mark.parametrize("argv, message", [
    (["--minutes", "0.01"], "at least 2 chunks"),
    (["--resolutions", "720p,10x10"], "resolutions"),
    (["--batch", "1,0"], "batch"),
    (["--fps", "3"], "even whole number"),
    (["--cuda-graphs", "maybe"], "--cuda-graphs"),
])  # fmt: skip
def test_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        bench_gpu.main(["--shape", "tiny", "--device", "cpu", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("bench_gpu.py: error:")


def test_profile_writes_one_operator_table_per_configuration_outside_the_statistics(tmp_path):
    """``--profile``: one more round per configuration under torch.profiler, its table in ``.profile.txt`` (the
    model's own operators, each configuration's section), the JSON's counts those of the timed rounds alone."""
    out = tmp_path / "bench_gpu.json"
    argv = ["--shape", "tiny", "--device", "cpu", "--minutes", "0.05", "--resolutions", "56x84", "--batch", "1,2",
            "--profile", "--out", str(out)]
    assert bench_gpu.main(argv) == 0
    text = out.with_suffix(".profile.txt").read_text()
    assert text.startswith("# python scripts/bench_gpu.py ") and "--profile" in text.splitlines()[0]
    sections = text.split("\n## ")[1:]
    assert [s.split(":")[0] for s in sections] == ["56x84 streaming x1", "56x84 streaming x2 batched"]
    for section in sections:
        assert "Self CPU" in section and "aten::addmm" in section  # the model's linear layers ran under it
    for run in json.loads(out.read_text())["runs"]:
        assert (run["chunks"], run["timed_chunks"]) == (3, 2)
        assert run["generated_tokens"] == 3 * run["batch"] * run["forced_tokens_per_chunk"]
