"""The latency benchmark's bench preset end to end on a few seconds of synthetic video (structure only, no timing
checks), ``streaming-vlm bench`` handing every option on, replotting the committed figures/bench_stream.json, and
the stream settings a checkpoint's streaming_vlm.json gives both presets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from streaming_vlm import bench, cli
from streaming_vlm.settings import SETTING_NAMES
from streaming_vlm.synthetic import write_synthetic_video

REPO = Path(__file__).resolve().parents[1]
# The union of what bench.py and eval/efficiency.py recorded before they merged (issue 14), exactly.
CHUNK_KEYS = {
    "index", "t", "video_len_s", "latency_s", "decode_s", "new_tokens", "latency_per_token_s", "decode_per_token_s",
    "prefill_tokens", "cache_tokens", "memory_mb", "rss_mb",
}  # fmt: skip
BENCH_SUMMARY_KEYS = {
    "num_chunks", "stream_s", "median_latency_s", "median_latency_minute_1", "median_latency_last_minute",
    "latency_ratio_last_vs_first", "median_latency_minute_2", "latency_ratio_last_vs_minute_2", "p10_latency_minute_1",
    "p10_latency_minute_2", "p10_latency_last_minute", "p95_latency_s", "max_latency_s", "mean_ms_per_generated_token",
    "generated_tokens", "prefill_tokens_total", "cache_tokens_max", "cache_tokens_last", "cache_window_s",
    "cache_tokens_last_10min_min", "cache_tokens_last_10min_max", "rss_start_mb", "rss_end_mb", "peak_rss_mb",
    "peak_rss_scope", "wall_s", "video_read_s", "real_time_factor", "per_minute_median_latency_ms",
}  # fmt: skip
EFFICIENCY_SUMMARY_KEYS = {
    "num_chunks", "processed_s", "median_latency_s", "p95_latency_s", "median_latency_per_token_s",
    "p95_latency_per_token_s", "median_decode_per_token_s", "p95_decode_per_token_s", "realtime_chunk_fraction",
    "realtime_token_fraction", "generated_tokens", "frames", "wall_s", "fps", "real_time_factor", "cache_tokens_max",
    "peak_memory_mb", "memory_kind", "memory_scope", "oom", "oom_at_s", "oom_wall_s", "oom_error",
}  # fmt: skip
SUMMARY_KEYS = BENCH_SUMMARY_KEYS | EFFICIENCY_SUMMARY_KEYS
BENCH_META_KEYS = {
    "model", "model_label", "minutes", "fps", "chunk_seconds", "pixels", "frame_size", "resized_frame_size",
    "vision_tokens_per_chunk", "video", "max_new_tokens", "seed", "dtype", "device", "engine", "torch", "transformers",
    "python", "platform", "cpu_count", "torch_threads", "date", "notes",
}  # fmt: skip
EFFICIENCY_META_KEYS = {
    "model", "model_label", "video", "video_duration_s", "frame_size", "duration_requested_s", "processed_s", "modes",
    "mode_labels", "fps", "chunk_seconds", "max_new_tokens", "max_pixels", "reset_every", "realtime_threshold_chunk_s",
    "realtime_threshold_per_token_s", "sampling", "engine", "seed", "dtype", "device", "torch", "transformers",
    "python", "platform", "cpu_count", "torch_threads", "gpu", "date", "notes",
}  # fmt: skip
META_KEYS = BENCH_META_KEYS | EFFICIENCY_META_KEYS | {"preset", "stream_settings", "stream_settings_sources"}
ENGINE_KEYS = {"vision_window", "text_rounds", "text_sink", "text_window", "reset_every", "temperature",
               "repetition_penalty"}  # fmt: skip
DOC_KEYS = {"meta", "modes", "comparisons"}


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
    assert set(doc) == DOC_KEYS
    meta = doc["meta"]
    assert set(meta) == META_KEYS and set(meta["engine"]) == ENGINE_KEYS and meta["preset"] == "bench"
    assert meta["dtype"] == "float32" and meta["minutes"] == 0.25 and meta["pixels"] == 56 * 56
    assert meta["vision_tokens_per_chunk"] == 4  # 56x56 frames: 2x2 merged tokens, 2 frames = 1 temporal patch
    assert meta["duration_requested_s"] == 15.0 and meta["processed_s"] == 15.0
    assert meta["modes"] == ["streaming", "recompute"] and meta["realtime_threshold_per_token_s"] == 0.25
    settings = meta["stream_settings"]
    used = [k for k in SETTING_NAMES if k not in ("total_pixels", "max_frames")]  # those the benchmark excludes
    assert list(settings) == used and list(meta["stream_settings_sources"]) == used  # are left out
    assert (settings["min_pixels"], settings["max_pixels"], settings["max_new_tokens"]) == (784, 3136, 4)
    assert {k: meta["stream_settings_sources"][k] for k in ("min_pixels", "max_pixels", "max_new_tokens", "fps")} == {
        "min_pixels": "preset", "max_pixels": "flag", "max_new_tokens": "flag", "fps": "default"}
    # the sessions sampled with the tiny checkpoint's generation config where no setting gives top_p / top_k
    assert meta["sampling"] == {"temperature": 0.9, "top_p": 1.0, "top_k": 50, "repetition_penalty": 1.05,
                                "max_new_tokens": 4}


def test_per_mode_records(bench_run):
    doc, _ = bench_run
    assert list(doc["modes"]) == ["streaming", "recompute"]
    for mode, data in doc["modes"].items():
        chunks, summary = data["chunks"], data["summary"]
        assert set(data) == {"label", "summary", "chunks"} and data["label"] == bench.MODE_LABELS[mode]
        assert set(summary) == SUMMARY_KEYS
        assert len(chunks) == summary["num_chunks"] == 15  # 15 s at 1 s per chunk
        assert [c["index"] for c in chunks] == list(range(15))
        assert [c["t"] for c in chunks] == [float(k) for k in range(15)]
        assert [c["video_len_s"] for c in chunks] == [float(k + 1) for k in range(15)]
        for c in chunks:
            assert set(c) == CHUNK_KEYS
            assert c["cache_tokens"] > 0 and c["prefill_tokens"] > 0 and c["rss_mb"] > 0
            assert c["memory_mb"] == c["rss_mb"]  # on CPU the memory in use is the resident memory
            assert 0 <= c["new_tokens"] <= 4 and c["latency_s"] > 0 and 0 <= c["decode_s"] <= c["latency_s"]
        assert summary["cache_tokens_max"] == max(c["cache_tokens"] for c in chunks)
        assert summary["peak_rss_mb"] > 0 and summary["wall_s"] > 0
        assert summary["peak_memory_mb"] > 0 and summary["memory_kind"] == "rss" and summary["frames"] == 30
        assert summary["oom"] is False and summary["stream_s"] == summary["processed_s"] == 15.0
        assert len(summary["per_minute_median_latency_ms"]) == 1


def test_comparisons(bench_run):
    doc, _ = bench_run
    comp = doc["comparisons"]
    assert comp["recompute_vs_streaming_median_latency"] > 0
    assert comp["full_vs_streaming_last_minute"] is None  # full mode was not run


def test_parser_rejects_unknown_mode(capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--modes", "streaming,bogus"])
    assert exc.value.code == 2 and "bogus" in capsys.readouterr().err


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


def test_the_committed_benchmark_replots(tmp_path, capsys):
    """figures/bench_stream.json predates the union of fields: its summaries come back the same and what its chunks
    do not record is None; its meta is kept as it was (no settings of this command added)."""
    committed = REPO / "figures" / "bench_stream.json"
    doc = json.loads(committed.read_text())
    out, png = tmp_path / "bench_stream.json", tmp_path / "bench_stream.png"
    assert bench.main(["--replot", str(committed), "--out", str(out), "--figure", str(png)]) == 0
    again = json.loads(out.read_text())
    assert again["meta"] == doc["meta"] and "stream_settings" not in again["meta"]
    assert png.is_file() and again["comparisons"] == doc["comparisons"]
    for mode, data in doc["modes"].items():
        new = again["modes"][mode]["summary"]
        assert set(new) == SUMMARY_KEYS
        for key, value in data["summary"].items():
            if key == "real_time_factor":  # from the rounded wall time and the processed seconds
                assert new[key] == pytest.approx(value, abs=2e-4), mode
            else:
                assert new[key] == value, (mode, key)
        assert new["processed_s"] == 1800.0 and new["frames"] is None and new["fps"] is None
        assert new["median_latency_per_token_s"] is None and new["oom"] is False
    assert "streaming  " in capsys.readouterr().out


def test_cli_hands_every_option_to_the_benchmark(tmp_path, bench_run, capsys):
    """`streaming-vlm bench --help` and options (they used to be refused: "unrecognized arguments")."""
    with pytest.raises(SystemExit) as help_:
        cli.main(["bench", "--help"])
    text = capsys.readouterr().out
    assert help_.value.code == 0 and text.startswith("usage: streaming-vlm bench")
    assert "--minutes" in text and "--pixels" in text and "--max-pixels" in text and "--replot" in text
    src, out = tmp_path / "in.json", tmp_path / "out.json"
    src.write_text(json.dumps(bench_run[0]))
    assert cli.main(["bench", "--replot", str(src), "--out", str(out), "--figure", ""]) == 0
    assert json.loads(out.read_text())["modes"].keys() == bench_run[0]["modes"].keys()
    with pytest.raises(SystemExit) as bad:
        cli.main(["bench", "--modes", "bogus"])
    assert bad.value.code == 2 and "streaming-vlm bench: error:" in capsys.readouterr().err
    assert "bench" in cli.build_parser().format_help()  # still listed


def test_checkpoint_settings_apply_to_both_presets(tmp_path, tiny_model_dir):
    """A checkpoint's streaming_vlm.json fills what no flag gives, above the preset; the results record every
    setting and where it came from, and the streams ran with them."""
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    (model / "streaming_vlm.json").write_text(json.dumps(
        {"min_pixels": 3136, "max_pixels": 3136, "text_sink": 3, "max_new_tokens": 2, "temperature": 0.0}))
    common = ["--model", str(model), "--modes", "streaming", "--text-window", "7", "--threads", "1", "--no-progress",
              "--figure", ""]  # fmt: skip
    assert bench.main([*common, "--minutes", "0.05", "--out", str(tmp_path / "bench.json")]) == 0
    video = json.loads((tmp_path / "bench.json").read_text())["meta"]["video"]
    assert video.startswith("synthetic 56x56")  # written at the checkpoint's frame size
    clip = write_synthetic_video(tmp_path / "clip.mp4", 3, fps=4, width=112, height=112)
    assert bench.efficiency_main([*common, "--video", str(clip), "--device", "cpu", "--dtype", "fp32",
                                  "--out", str(tmp_path / "efficiency.json")]) == 0
    for name, preset_sources in (("bench", {"reset_every": "default"}), ("efficiency", {"reset_every": "preset"})):
        doc = json.loads((tmp_path / f"{name}.json").read_text())
        meta, chunks = doc["meta"], doc["modes"]["streaming"]["chunks"]
        settings, sources = meta["stream_settings"], meta["stream_settings_sources"]
        assert meta["preset"] == name and list(settings) == [k for k in SETTING_NAMES
                                                             if k not in ("total_pixels", "max_frames")]
        assert {k: settings[k] for k in ("min_pixels", "max_pixels", "text_sink", "text_window", "max_new_tokens",
                                         "temperature", "repetition_penalty", "reset_every", "top_k")} == {
            "min_pixels": 3136, "max_pixels": 3136, "text_sink": 3, "text_window": 7, "max_new_tokens": 2,
            "temperature": 0.0, "repetition_penalty": 1.05, "reset_every": 100.0, "top_k": None}
        assert {k: sources[k] for k in ("min_pixels", "max_pixels", "text_sink", "text_window", "max_new_tokens",
                                        "temperature", "repetition_penalty", "top_k", "reset_every")} == {
            "min_pixels": "checkpoint", "max_pixels": "checkpoint", "text_sink": "checkpoint", "text_window": "flag",
            "max_new_tokens": "checkpoint", "temperature": "checkpoint", "repetition_penalty": "default",
            "top_k": "default", **preset_sources}
        assert meta["resized_frame_size"] == [56, 56] and meta["vision_tokens_per_chunk"] == 4
        assert meta["engine"]["text_sink"] == 3 and meta["sampling"]["top_k"] == 50  # generation_config.json
        assert len(chunks) == 3 and all(c["new_tokens"] <= 2 for c in chunks)


def test_default_run_builds_the_tiny_model_and_video_with_the_seed(tmp_path, monkeypatch):
    """No --model, no --video: the tiny model and a synthetic video of the stream's length are made with --seed in a
    temporary folder, removed at the end."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    out = tmp_path / "bench.json"
    argv = ["--minutes", "0.05", "--modes", "streaming", "--seed", "3", "--threads", "1", "--no-progress",
            "--out", str(out), "--figure", ""]  # fmt: skip
    assert bench.main(argv) == 0
    meta = json.loads(out.read_text())["meta"]
    assert (meta["model"], meta["model_label"]) == ("tiny (build_tiny_model)", "tiny random Qwen2.5-VL")
    assert meta["video"] == "synthetic 112x112 @ 4 fps" and meta["video_duration_s"] == 3.0
    assert meta["seed"] == 3 and meta["stream_settings_sources"]["seed"] == "flag"
    assert (meta["device"], meta["dtype"], meta["pixels"]) == ("cpu", "float32", 112 * 112)
    assert not list(scratch.glob("bench_stream_*"))  # (torch may leave its own folders there)
