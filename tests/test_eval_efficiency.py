"""The latency benchmark's efficiency preset (``streaming-vlm eval efficiency``) end to end on the tiny model and a
few seconds of synthetic video (no timing checks)."""

from __future__ import annotations

import json

import pytest

from streaming_vlm import bench, cli
from streaming_vlm.engine import StreamSession
from streaming_vlm.eval import runner
from streaming_vlm.synthetic import write_synthetic_video
from tests.test_bench import CHUNK_KEYS, DOC_KEYS, ENGINE_KEYS, META_KEYS, SUMMARY_KEYS

SECONDS = 6


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_synthetic_video(tmp_path_factory.mktemp("video") / "clip.mp4", SECONDS, fps=4, width=84, height=56)


def _argv(model, video, out, *extra):
    return [
        "--model", str(model), "--video", str(video),
        "--max-pixels", str(56 * 56), "--max-new-tokens", "3", "--device", "cpu", "--dtype", "fp32",
        "--out", str(out / "efficiency.json"), "--figure", str(out / "efficiency.png"), *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_dir, video):
    out = tmp_path_factory.mktemp("eff")
    capture = pytest.MonkeyPatch()
    printed: list[str] = []
    capture.setattr("builtins.print", lambda *a, **k: printed.append(" ".join(map(str, a))))
    try:
        rc = bench.efficiency_main(_argv(tiny_model_dir, video, out, "--reset-every", "2"))
    finally:
        capture.undo()
    assert rc == 0
    return json.loads((out / "efficiency.json").read_text()), out / "efficiency.png", "\n".join(printed)


def test_json_structure_and_figure(run):
    doc, png, printed = run
    assert set(doc) == DOC_KEYS
    meta = doc["meta"]
    assert set(meta) == META_KEYS and set(meta["engine"]) == ENGINE_KEYS and meta["preset"] == "efficiency"
    assert meta["modes"] == ["full", "sliding", "recompute", "streaming"]
    assert meta["reset_every"] == 2.0 and meta["max_new_tokens"] == 3 and meta["chunk_seconds"] == 1.0
    assert meta["realtime_threshold_per_token_s"] == pytest.approx(1.0 / 3)
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in printed and "(d) StreamingVLM" in printed and "med ms/tok" in printed


def test_every_mode_has_a_full_series(run):
    doc, _, _ = run
    assert list(doc["modes"]) == ["full", "sliding", "recompute", "streaming"]
    for mode, data in doc["modes"].items():
        chunks, summary = data["chunks"], data["summary"]
        assert set(summary) == SUMMARY_KEYS and data["label"] == bench.MODE_LABELS[mode]
        assert len(chunks) == summary["num_chunks"] == SECONDS
        assert [c["index"] for c in chunks] == list(range(SECONDS))
        assert [c["video_len_s"] for c in chunks] == [float(k + 1) for k in range(SECONDS)]
        for c in chunks:
            assert set(c) == CHUNK_KEYS
            assert c["latency_s"] > 0 and 0 <= c["new_tokens"] <= 3 and c["cache_tokens"] > 0
            if c["new_tokens"]:
                assert c["latency_per_token_s"] == pytest.approx(c["latency_s"] / c["new_tokens"], abs=1e-5)
                assert c["decode_per_token_s"] <= c["latency_per_token_s"]
        assert summary["oom"] is False and summary["oom_at_s"] is None
        assert summary["fps"] > 0 and summary["peak_memory_mb"] > 0 and summary["memory_kind"] == "rss"


def test_sliding_mode_resets(run):
    doc, _, _ = run
    sliding = [c["cache_tokens"] for c in doc["modes"]["sliding"]["chunks"]]
    full = [c["cache_tokens"] for c in doc["modes"]["full"]["chunks"]]
    assert full == sorted(full) and full[-1] > full[1]  # full attention only grows
    assert sliding[2] < sliding[1] and sliding[4] < sliding[3]  # restarts at 2 s and 4 s
    assert sliding[1] > sliding[0] and sliding[3] > sliding[2]
    assert [c["prefill_tokens"] for c in doc["modes"]["sliding"]["chunks"]][2] > doc["modes"]["sliding"]["chunks"][1][
        "prefill_tokens"
    ]  # the restart re-sends the system prompt


def test_out_of_memory_is_recorded_and_other_modes_run(tmp_path, tiny_model_dir, video, monkeypatch, capsys):
    step = StreamSession.step

    def failing_step(self, frames, start, end, **kwargs):
        if self.config.mode == "full" and self.round >= 2:
            raise MemoryError("injected")
        return step(self, frames, start, end, **kwargs)

    monkeypatch.setattr(StreamSession, "step", failing_step)
    argv = _argv(tiny_model_dir, video, tmp_path, "--modes", "full,streaming", "--duration", "4")
    assert bench.efficiency_main(argv) == 0
    doc = json.loads((tmp_path / "efficiency.json").read_text())
    full, streaming = doc["modes"]["full"], doc["modes"]["streaming"]
    assert full["summary"]["oom"] is True and full["summary"]["oom_at_s"] == 2.0
    assert "MemoryError" in full["summary"]["oom_error"] and full["summary"]["oom_wall_s"] >= 0
    assert len(full["chunks"]) == full["summary"]["num_chunks"] == 2
    assert streaming["summary"]["oom"] is False and len(streaming["chunks"]) == 4
    assert (tmp_path / "efficiency.png").is_file()
    assert "at 2 s" in capsys.readouterr().out


def test_missing_video_is_one_line_exit_2(tmp_path, tiny_model_dir, capsys):
    rc = cli.main(["eval", "efficiency", *_argv(tiny_model_dir, tmp_path / "missing.mp4", tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and "missing.mp4" in err
    assert err.startswith("streaming-vlm eval efficiency: error:")
    assert not (tmp_path / "efficiency.json").exists()


def test_summary_percentiles():
    assert runner.percentile([], 95) is None
    assert runner.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert runner.percentile([float(k) for k in range(1, 21)], 95) == 19.0
