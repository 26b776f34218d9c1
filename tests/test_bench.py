"""The streaming benchmark end to end on a few seconds of synthetic video (structure only, no timing checks)."""

from __future__ import annotations

import json

import pytest

from streaming_vlm import bench

SUMMARY_KEYS = {
    "num_chunks",
    "median_latency_minute_1",
    "median_latency_last_minute",
    "latency_ratio_last_vs_first",
    "mean_ms_per_generated_token",
    "cache_tokens_max",
    "cache_tokens_last_10min_min",
    "cache_tokens_last_10min_max",
    "peak_rss_mb",
    "wall_s",
    "real_time_factor",
    "per_minute_median_latency_ms",
}
CHUNK_KEYS = {"index", "t", "latency_s", "new_tokens", "prefill_tokens", "cache_tokens", "rss_mb"}


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("bench")
    json_path, png_path = out / "bench.json", out / "bench.png"
    argv = [
        "--model", str(tiny_model_dir),
        "--minutes", "0.25",
        "--modes", "streaming,recompute",
        "--pixels", str(56 * 56),
        "--max-new-tokens", "4",
        "--threads", "1",
        "--no-progress",
        "--out", str(json_path),
        "--figure", str(png_path),
    ]  # fmt: skip
    assert bench.main(argv) == 0
    return json.loads(json_path.read_text()), png_path


def test_files_and_meta(bench_run):
    doc, png = bench_run
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(doc) == {"meta", "modes", "comparisons"}
    meta = doc["meta"]
    for key in ("model", "minutes", "fps", "pixels", "dtype", "torch", "transformers", "cpu_count", "date"):
        assert key in meta
    assert meta["dtype"] == "float32" and meta["minutes"] == 0.25 and meta["pixels"] == 56 * 56
    assert meta["vision_tokens_per_chunk"] == 4  # 56x56 frames: 2x2 merged tokens, 2 frames = 1 temporal patch


def test_per_mode_records(bench_run):
    doc, _ = bench_run
    assert list(doc["modes"]) == ["streaming", "recompute"]
    for data in doc["modes"].values():
        chunks, summary = data["chunks"], data["summary"]
        assert SUMMARY_KEYS <= set(summary)
        assert len(chunks) == summary["num_chunks"] == 15  # 15 s at 1 s per chunk
        assert [c["index"] for c in chunks] == list(range(15))
        assert [c["t"] for c in chunks] == [float(k) for k in range(15)]
        for c in chunks:
            assert set(c) == CHUNK_KEYS
            assert c["cache_tokens"] > 0 and c["prefill_tokens"] > 0 and c["rss_mb"] > 0
            assert 0 <= c["new_tokens"] <= 4 and c["latency_s"] > 0
        assert summary["cache_tokens_max"] == max(c["cache_tokens"] for c in chunks)
        assert summary["peak_rss_mb"] > 0 and summary["wall_s"] > 0
        assert len(summary["per_minute_median_latency_ms"]) == 1


def test_comparisons(bench_run):
    doc, _ = bench_run
    comp = doc["comparisons"]
    assert comp["recompute_vs_streaming_median_latency"] > 0
    assert comp["full_vs_streaming_last_minute"] is None  # full mode was not run


def test_parser_rejects_unknown_mode():
    with pytest.raises(SystemExit):
        bench.build_parser().parse_args(["--modes", "streaming,bogus"])


def test_replot_recomputes_the_same_summaries(bench_run, tmp_path):
    doc, _ = bench_run
    src, out, png = tmp_path / "in.json", tmp_path / "out.json", tmp_path / "again.png"
    src.write_text(json.dumps(doc))
    assert bench.main(["--replot", str(src), "--out", str(out), "--figure", str(png)]) == 0
    again = json.loads(out.read_text())
    assert png.is_file() and again["meta"] == doc["meta"]
    for mode, data in doc["modes"].items():
        new = again["modes"][mode]
        assert new["chunks"] == data["chunks"]
        for key, value in data["summary"].items():
            if key != "real_time_factor":  # recomputed from the rounded wall time
                assert new["summary"][key] == value, key
    assert again["comparisons"] == doc["comparisons"]
