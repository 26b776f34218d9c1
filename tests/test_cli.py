"""Tests for the ``streaming-vlm`` command line, driven in-process through ``streaming_vlm.cli.main``.

Every video is generated here (synthetic clips, damaged and audio-only files written with PyAV), and the
model is the session's random tiny Qwen2.5-VL, so the outputs' *structure* is checked, not their words:
exact cue times, one JSONL record per chunk, the closing summary, and one ``streaming-vlm: error:`` line
(never a traceback, never a model load) for every kind of bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import yaml

import streaming_vlm.infer as infer_module
import streaming_vlm.models as models
from streaming_vlm.cli import build_parser, main
from streaming_vlm.engine import StreamSession
from streaming_vlm.infer import InferConfig, config_from_args
from streaming_vlm.settings import CHECKPOINT_FILE, SETTING_NAMES, StreamSettings
from streaming_vlm.synthetic import write_synthetic_video

REPO = Path(__file__).resolve().parents[1]
INFER_YAML = REPO / "configs" / "infer.yaml"
# small frames and short commentary keep each run around a second on a CPU
FAST = ["--quiet", "--max-pixels", str(112 * 112), "--min-pixels", str(28 * 28), "--max-new-tokens", "4"]
SUMMARY_WORDS = ("chunks:", "wall time:", "real-time factor:", "ms per generated token", "peak cache:", "peak memory:")
RECORD_KEYS = {"index", "start", "end", "text", "latency_s", "new_tokens", "cache_tokens"}


@pytest.fixture(autouse=True)
def _keep_warning_format(monkeypatch):
    """``infer.main`` sets ``warnings.formatwarning`` for the process; put it back after each test."""
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clips")
    return {
        "5.5s": write_synthetic_video(root / "clip55.mp4", 5.5, fps=10),
        "3s": write_synthetic_video(root / "clip3.mp4", 3.0, fps=10, seed=1),
        "2s": write_synthetic_video(root / "clip2.mp4", 2.0, fps=10, seed=2),
    }


def infer(capsys, *args) -> tuple[int, str, str]:
    """Run ``streaming-vlm infer ARGS`` in-process; returns (exit code, stdout, stderr)."""
    code = main(["infer", *(str(a) for a in args)])
    out, err = capsys.readouterr()
    return code, out, err


def read_vtt(path: Path) -> list[tuple[str, str, str]]:
    """(number, timing line, payload) per cue; checks the header and that every cue is complete."""
    text = path.read_text(encoding="utf-8")
    assert text.startswith("WEBVTT\n\n"), text[:40]
    assert text.endswith("\n\n"), "the last cue is cut short"
    body = text[len("WEBVTT\n\n") : -2]
    cues = []
    for block in body.split("\n\n") if body else []:
        lines = block.split("\n")
        assert len(lines) in (2, 3), block  # an empty commentary has no payload line
        cues.append((lines[0], lines[1], lines[2] if len(lines) == 3 else ""))
    return cues


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def timings(cues) -> list[str]:
    return [timing for _, timing, _ in cues]


# --------------------------------------------------------------------------------------------------
# end to end


def test_end_to_end_writes_exact_cues_jsonl_and_a_summary(tiny_model_dir, clips, tmp_path, capsys):
    vtt, jsonl = tmp_path / "out.vtt", tmp_path / "out.jsonl"
    code, out, err = infer(capsys, clips["5.5s"], "--model", tiny_model_dir, *FAST, "--output", vtt, "--jsonl", jsonl)
    assert code == 0, err
    assert out == ""
    assert "Traceback" not in err

    cues = read_vtt(vtt)
    assert [number for number, _, _ in cues] == ["1", "2", "3", "4", "5", "6"]
    assert timings(cues) == [
        "00:00:00.000 --> 00:00:01.000",
        "00:00:01.000 --> 00:00:02.000",
        "00:00:02.000 --> 00:00:03.000",
        "00:00:03.000 --> 00:00:04.000",
        "00:00:04.000 --> 00:00:05.000",
        "00:00:05.000 --> 00:00:05.500",  # the last, partial chunk ends with the video
    ]
    for _, _, payload in cues:
        assert " ..." not in payload and "-->" not in payload

    records = read_jsonl(jsonl)
    assert len(records) == 6
    for k, record in enumerate(records):
        assert RECORD_KEYS <= record.keys()
        assert record["index"] == k
        assert isinstance(record["start"], float) and isinstance(record["end"], float)
        assert isinstance(record["text"], str) and " ..." not in record["text"]
        assert isinstance(record["new_tokens"], int) and 1 <= record["new_tokens"] <= 4
        assert isinstance(record["cache_tokens"], int) and record["cache_tokens"] > 0
        assert record["latency_s"] > 0
    assert [r["start"] for r in records] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert [r["end"] for r in records] == [1.0, 2.0, 3.0, 4.0, 5.0, 5.5]
    # the cue payload is the record's text on one printable line
    for (_, _, payload), record in zip(cues, records, strict=True):
        flat = " ".join("".join(c if c.isprintable() else " " for c in record["text"]).split())
        assert payload == flat.replace("-->", "->")

    for word in SUMMARY_WORDS:
        assert word in err, (word, err)
    assert "chunks: 6 (5.5 s of video)" in err
    assert f"generated: {sum(r['new_tokens'] for r in records)} tokens" in err
    assert f"peak cache: {max(r['cache_tokens'] for r in records)} tokens" in err
    assert "interrupted" not in err


def test_start_and_duration_select_the_window(tiny_model_dir, clips, tmp_path, capsys):
    vtt, jsonl = tmp_path / "window.vtt", tmp_path / "window.jsonl"
    code, _, err = infer(
        capsys,
        clips["5.5s"],
        "--model",
        tiny_model_dir,
        *FAST,
        "--start",
        2,
        "--duration",
        2,
        "--output",
        vtt,
        "--jsonl",
        jsonl,
    )
    assert code == 0, err
    assert timings(read_vtt(vtt)) == ["00:00:02.000 --> 00:00:03.000", "00:00:03.000 --> 00:00:04.000"]
    records = read_jsonl(jsonl)
    assert [(r["start"], r["end"]) for r in records] == [(2.0, 3.0), (3.0, 4.0)]
    assert "chunks: 2 (2.0 s of video)" in err


def test_default_output_is_next_to_the_video(tiny_model_dir, tmp_path, capsys):
    video = write_synthetic_video(tmp_path / "match.mp4", 2.0)
    code, _, err = infer(capsys, video, "--model", tiny_model_dir, *FAST)
    assert code == 0, err
    assert len(read_vtt(tmp_path / "match.vtt")) == 2


@pytest.mark.parametrize(
    "mode,extra",
    [
        ("streaming", ["--vision-window", "1", "--text-rounds", "1"]),  # evicts from the second chunk on
        ("full", []),
        ("sliding", ["--reset-every", "1"]),  # restarts the context every chunk
        ("recompute", ["--vision-window", "1"]),
    ],
)
def test_every_mode_runs(tiny_model_dir, clips, tmp_path, capsys, mode, extra):
    vtt, jsonl = tmp_path / f"{mode}.vtt", tmp_path / f"{mode}.jsonl"
    code, _, err = infer(
        capsys, clips["3s"], "--model", tiny_model_dir, *FAST, "--mode", mode, *extra, "--output", vtt, "--jsonl", jsonl
    )
    assert code == 0, err
    assert "Traceback" not in err
    assert timings(read_vtt(vtt)) == [
        "00:00:00.000 --> 00:00:01.000",
        "00:00:01.000 --> 00:00:02.000",
        "00:00:02.000 --> 00:00:03.000",
    ]
    records = read_jsonl(jsonl)
    assert [r["index"] for r in records] == [0, 1, 2]
    if mode == "full":  # nothing is ever evicted
        caches = [r["cache_tokens"] for r in records]
        assert caches == sorted(caches) and caches[0] < caches[-1]


@pytest.mark.parametrize("temperature", ["0", "1.0"])
def test_same_seed_gives_the_same_commentary(tiny_model_dir, clips, tmp_path, capsys, temperature):
    texts = []
    for attempt in range(2):
        jsonl = tmp_path / f"run{attempt}.jsonl"
        code, _, err = infer(
            capsys,
            clips["2s"],
            "--model",
            tiny_model_dir,
            *FAST,
            "--temperature",
            temperature,
            "--seed",
            7,
            "--output",
            tmp_path / f"run{attempt}.vtt",
            "--jsonl",
            jsonl,
        )
        assert code == 0, err
        texts.append([r["text"] for r in read_jsonl(jsonl)])
    assert len(texts[0]) == 2
    assert texts[0] == texts[1]


def test_progress_bar_goes_to_the_current_stderr(tiny_model_dir, clips, tmp_path, capsys):
    args = [a for a in FAST if a != "--quiet"]
    code, _, err = infer(capsys, clips["2s"], "--model", tiny_model_dir, *args, "--output", tmp_path / "p.vtt")
    assert code == 0, err
    assert "2/2" in err and "chunk" in err


def test_demo_video_with_the_tiny_model_alias(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    monkeypatch.setenv("STREAMING_VLM_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)  # a file named "demo" in the working directory would win over the alias
    vtt = tmp_path / "demo.vtt"
    code, _, err = infer(capsys, "demo", "--model", "tiny", "--duration", 3, *FAST, "--output", vtt)
    assert code == 0, err
    assert timings(read_vtt(vtt)) == [
        "00:00:00.000 --> 00:00:01.000",
        "00:00:01.000 --> 00:00:02.000",
        "00:00:02.000 --> 00:00:03.000",
    ]
    assert (cache / "tiny-model-v1" / "config.json").is_file()
    assert "chunks: 3 (3.0 s of video)" in err


# --------------------------------------------------------------------------------------------------
# bad input: one line on stderr, exit code 2, nothing loaded, nothing written


def _audio_only(path: Path, codec: str) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=16000)
        fmt, samples = (
            ("s16", np.zeros((1, 1024), np.int16))
            if codec.startswith("pcm")
            else ("fltp", np.zeros((1, 1024), np.float32))
        )
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(samples, format=fmt, layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _no_frames(path: Path) -> Path:
    """A container that declares a video stream but stores only audio packets."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=10)
        video.width, video.height = 64, 48
        audio = container.add_stream("pcm_s16le", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1600), np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        for packet in audio.encode(frame):
            container.mux(packet)
    return path


def _text_file(path: Path) -> Path:
    path.write_text("no pictures here\n" * 40)
    return path


def _empty_file(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _directory(path: Path) -> Path:
    path.mkdir()
    return path


def _model_without_config(path: Path) -> Path:
    path.mkdir()
    (path / "model.safetensors").write_bytes(b"")  # weights alone do not make a checkpoint
    return path


def _model_with_garbage_config(path: Path) -> Path:
    path.mkdir()
    (path / "config.json").write_text("{this is not json")
    return path


def _yaml_with_unknown_key(path: Path) -> Path:
    path.write_text("# Launch: streaming-vlm infer VIDEO --config this.yaml\nmode: streaming\nvison_window: 4\n")
    return path


NO_VIDEO = "no video argument"
# Each case: (video maker, None for a good 2 s clip, or NO_VIDEO; extra arguments; words the error line holds;
# whether the model load is reached). "{tmp}" in an argument stands for the test's tmp_path.
BAD_INPUT = {
    "missing-file": (lambda t: t / "missing.mp4", [], "no such file", False),
    "directory": (lambda t: _directory(t / "folder.mp4"), [], "is a directory", False),
    "text-file": (lambda t: _text_file(t / "notes.txt"), [], "not a video", False),
    "text-named-mp4": (lambda t: _text_file(t / "fake.mp4"), [], "not a video", False),
    "audio-only-wav": (lambda t: _audio_only(t / "speech.wav", "pcm_s16le"), [], "no video stream", False),
    "audio-only-m4a": (lambda t: _audio_only(t / "music.m4a", "aac"), [], "no video stream", False),
    "video-stream-without-frames": (lambda t: _no_frames(t / "noframes.mkv"), [], "no decodable video frames", False),
    "zero-byte-mp4": (lambda t: _empty_file(t / "empty.mp4"), [], "empty", False),
    "start-past-the-end": (None, ["--start", "9"], "past the end of the video (2.0 s)", False),
    "no-video-given": (NO_VIDEO, [], "no video given", False),
    "model-dir-without-config": (None, ["--model", "{tmp}/noconfig"], "no config.json", True),
    "model-dir-with-garbage-config": (None, ["--model", "{tmp}/garbage"], "unreadable config.json", True),
    "model-path-missing": (None, ["--model", "{tmp}/no/such/model"], "no such directory", True),
    "model-path-is-a-file": (None, ["--model", "{tmp}/config.yaml"], "not a directory", True),
    "bogus-mode": (None, ["--mode", "bogus"], "--mode must be one of", False),
    "min-pixels-above-max": (None, ["--min-pixels", "200000", "--max-pixels", "1000"], "--min-pixels", False),
    "negative-start": (None, ["--start", "-1"], "--start must be >= 0", False),
    "zero-duration": (None, ["--duration", "0"], "--duration must be > 0", False),
    "odd-frames-per-chunk": (None, ["--fps", "3"], "frames per chunk", False),
    "fractional-frames-per-chunk": (None, ["--fps", "2.5"], "frames per chunk", False),
    "zero-chunk-seconds": (None, ["--chunk-seconds", "0"], "--chunk-seconds must be > 0", False),
    "negative-temperature": (None, ["--temperature", "-1"], "temperature", False),
    "top-p-above-one": (None, ["--top-p", "2"], "top_p", False),
    "zero-reset-every": (None, ["--reset-every", "0"], "reset_every", False),
    "zero-vision-window": (None, ["--vision-window", "0"], "vision_window", False),
    "unknown-device": (None, ["--device", "bogus"], "unknown device", False),
    "unknown-dtype": (None, ["--dtype", "bogus"], "unknown dtype", False),
    "config-unknown-key": (None, ["--config", "{tmp}/config.yaml"], "unknown option(s) vison_window", False),
    "config-missing": (None, ["--config", "{tmp}/nothere.yaml"], "cannot read config", False),
    "output-under-a-file": (None, ["--output", "{tmp}/file.txt/out.vtt"], "is not a directory", False),
    "deep-output-under-a-file": (None, ["--output", "{tmp}/file.txt/a/b/out.vtt"], "is not a directory", False),
    "jsonl-under-a-file": (None, ["--jsonl", "{tmp}/file.txt/out.jsonl"], "is not a directory", False),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_error_line(case, tiny_model_dir, clips, tmp_path, monkeypatch, capsys):
    make, extra, words, loads_model = BAD_INPUT[case]
    _model_without_config(tmp_path / "noconfig")
    _model_with_garbage_config(tmp_path / "garbage")
    _yaml_with_unknown_key(tmp_path / "config.yaml")
    _text_file(tmp_path / "file.txt")
    if not loads_model:  # bad input is found before the (expensive) model load

        def no_load(*args, **kwargs):
            raise AssertionError("the model was loaded for bad input")

        monkeypatch.setattr(models, "load_model", no_load)
        monkeypatch.setattr(models, "ensure_tiny_model", no_load)

    if make is NO_VIDEO:
        video, args = None, []
    else:
        video = make(tmp_path) if make is not None else clips["2s"]
        args = [video]
    extra = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    output = tmp_path / "out.vtt"
    code, out, err = infer(capsys, *args, "--model", tiny_model_dir, *FAST, "--output", output, *extra)

    assert code == 2
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("streaming-vlm: error: "), err
    assert words in lines[0], err
    if callable(make):
        assert str(video) in lines[0]  # the message names the file
        assert not Path(video).with_suffix(".vtt").exists()
    assert not output.exists()  # nothing is written by a run that never started


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda(tiny_model_dir, clips, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    code, _, err = infer(
        capsys, clips["2s"], "--model", tiny_model_dir, *FAST, "--device", "cuda", "--output", tmp_path / "o.vtt"
    )
    assert code == 2
    assert err.splitlines() == ["streaming-vlm: error: device 'cuda' requested but CUDA is not available"]


def test_argparse_rejects_malformed_values(capsys):
    for bad in (["--start", "soon"], ["--vision-window", "-3"], ["--vision-window", "lots"]):
        with pytest.raises(SystemExit) as caught:
            main(["infer", "x.mp4", *bad])
        assert caught.value.code == 2
        err = capsys.readouterr().err
        assert "streaming-vlm infer: error: argument" in err and "Traceback" not in err


# --------------------------------------------------------------------------------------------------
# damage, interruption


def _mdat_payload(data: bytes) -> tuple[int, int]:
    """Byte range of the payload of the top-level 'mdat' box of an MP4 file."""
    pos = 0
    while pos + 8 <= len(data):
        size, kind = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8]
        header = 8
        if size == 1:
            size, header = int.from_bytes(data[pos + 8 : pos + 16], "big"), 16
        elif size == 0:
            size = len(data) - pos
        if kind == b"mdat":
            return pos + header, pos + size
        pos += size
    raise AssertionError("no mdat box")


def test_damaged_region_is_skipped_with_a_warning(tiny_model_dir, tmp_path):
    video = write_synthetic_video(tmp_path / "damaged.mp4", 4.0, seed=1)
    data = bytearray(video.read_bytes())
    lo, hi = _mdat_payload(bytes(data))
    middle = (lo + hi) // 2
    data[middle - 400 : middle + 400] = np.random.default_rng(0).integers(0, 256, 800, dtype=np.uint8).tobytes()
    video.write_bytes(bytes(data))

    vtt = tmp_path / "damaged.vtt"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "streaming_vlm",
            "infer",
            str(video),
            "--model",
            str(tiny_model_dir),
            *FAST,
            "--output",
            str(vtt),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    warned = [line for line in proc.stderr.splitlines() if line.startswith("streaming-vlm: warning:")]
    assert len(warned) == 1, proc.stderr
    assert "damaged video" in warned[0] and str(video) in warned[0]
    assert timings(read_vtt(vtt))[-1] == "00:00:03.000 --> 00:00:04.000"
    assert len(read_vtt(vtt)) == 4
    assert "chunks: 4 (4.0 s of video)" in proc.stderr


def test_interrupted_run_keeps_what_it_wrote(tiny_model_dir, clips, tmp_path, monkeypatch, capsys):
    step = StreamSession.step
    calls = []

    def interrupting_step(self, *args, **kwargs):
        calls.append(args[1:3])
        if len(calls) == 4:
            raise KeyboardInterrupt
        return step(self, *args, **kwargs)

    monkeypatch.setattr(StreamSession, "step", interrupting_step)
    vtt, jsonl = tmp_path / "cut.vtt", tmp_path / "cut.jsonl"
    code, _, err = infer(capsys, clips["5.5s"], "--model", tiny_model_dir, *FAST, "--output", vtt, "--jsonl", jsonl)
    assert code == 130
    assert len(calls) == 4
    assert timings(read_vtt(vtt)) == [
        "00:00:00.000 --> 00:00:01.000",
        "00:00:01.000 --> 00:00:02.000",
        "00:00:02.000 --> 00:00:03.000",
    ]
    assert [r["index"] for r in read_jsonl(jsonl)] == [0, 1, 2]
    assert "chunks: 3 (3.0 s of video) - interrupted" in err
    assert "Traceback" not in err


# --------------------------------------------------------------------------------------------------
# options: YAML, flags, windows


def test_yaml_config_with_flags_on_top(tiny_model_dir, clips, tmp_path, capsys):
    flags = [
        "--config",
        INFER_YAML,
        "--model",
        tiny_model_dir,
        "--max-pixels",
        112 * 112,
        "--min-pixels",
        28 * 28,
        "--max-new-tokens",
        3,
        "--temperature",
        0,
        "--vision-window",
        "unlimited",
        "--text-sink",
        8,
    ]
    cfg = config_from_args(build_parser().parse_args(["infer", str(clips["2s"]), *(str(f) for f in flags)]))
    from_yaml = yaml.safe_load(INFER_YAML.read_text(encoding="utf-8"))
    overridden = {
        "model": str(tiny_model_dir),
        "max_pixels": 112 * 112,
        "min_pixels": 28 * 28,
        "max_new_tokens": 3,
        "temperature": 0.0,
        "vision_window": None,
        "text_sink": 8,
    }
    for key, value in overridden.items():  # flags beat the file
        assert getattr(cfg, key) == value, key
        assert from_yaml[key] != value, key
    for key, value in from_yaml.items():  # the rest comes from the file
        if key not in overridden:
            assert getattr(cfg, key) == value, key

    vtt = tmp_path / "yaml.vtt"
    code, _, err = infer(capsys, clips["2s"], *flags, "--quiet", "--output", vtt)
    assert code == 0, err
    assert len(read_vtt(vtt)) == 2


@pytest.mark.parametrize("word", ["unlimited", "none", "None", "inf"])
def test_unlimited_window_parses_to_none(word):
    args = build_parser().parse_args(
        ["infer", "x.mp4", "--vision-window", word, "--text-rounds", word, "--text-sink", word, "--text-window", word]
    )
    cfg = config_from_args(args)
    assert (cfg.vision_window, cfg.text_rounds, cfg.text_sink, cfg.text_window) == (None, None, None, None)


def test_unlimited_flag_beats_a_yaml_window(tmp_path):
    config = tmp_path / "windows.yaml"
    config.write_text("# Launch: streaming-vlm infer VIDEO --config windows.yaml\nvision_window: 4\ntext_rounds: 2\n")
    cfg = config_from_args(
        build_parser().parse_args(["infer", "x.mp4", "--config", str(config), "--vision-window", "unlimited"])
    )
    assert cfg.vision_window is None
    assert cfg.text_rounds == 2


def test_unset_flags_keep_the_defaults():
    cfg = config_from_args(build_parser().parse_args(["infer", "x.mp4"]))
    assert (cfg.vision_window, cfg.text_rounds, cfg.text_sink, cfg.text_window) == (16, 16, 512, 512)
    assert cfg.quiet is False and cfg.top_p is None and cfg.mode == "streaming"


def test_a_max_pixels_alone_lowers_the_default_min_pixels(tmp_path):
    cfg = config_from_args(build_parser().parse_args(["infer", "x.mp4", "--max-pixels", "3136"]))
    assert (cfg.min_pixels, cfg.max_pixels) == (3136, 3136)
    (tmp_path / CHECKPOINT_FILE).write_text(json.dumps({"min_pixels": 784}))
    cfg = infer_module.with_checkpoint_defaults(cfg, str(tmp_path))  # the lowered min_pixels was not given
    assert (cfg.min_pixels, cfg.max_pixels) == (784, 3136)
    too_big = r"--min-pixels \(700000\) is larger than --max-pixels \(602112\)"
    with pytest.raises(infer_module.UsageError, match=too_big):
        config_from_args(build_parser().parse_args(["infer", "x.mp4", "--min-pixels", "700000"]))  # given: an error


def test_the_checkpoint_settings_fill_what_flags_and_yaml_leave(tiny_model_dir, clips, tmp_path, monkeypatch, capsys):
    """Flags > --config YAML > the checkpoint's streaming_vlm.json > defaults. The reader is reopened at the
    checkpoint's fps, and the checkpoint's min_pixels is lowered to a smaller --max-pixels (no error)."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / CHECKPOINT_FILE).write_text(json.dumps({
        "fps": 4.0, "min_pixels": 3136, "max_pixels": 3136, "text_sink": 3, "text_window": 2, "max_new_tokens": 2,
        "temperature": 0.0}))  # fmt: skip
    config = tmp_path / "run.yaml"
    config.write_text("text_window: 5\nmax_new_tokens: 3\n")
    seen = []
    step = StreamSession.step

    def recording_step(self, frames, *args, **kwargs):
        seen.append((len(frames), self.config, self.preprocessor.spec))
        return step(self, frames, *args, **kwargs)

    monkeypatch.setattr(StreamSession, "step", recording_step)
    code, _, err = infer(capsys, clips["2s"], "--model", model, "--config", config, "--quiet", "--max-pixels", 784,
                         "--max-new-tokens", 4, "--output", tmp_path / "out.vtt")
    assert code == 0, err
    assert [frames for frames, _, _ in seen] == [4, 4]  # 4 frames per 1-s chunk: the checkpoint's fps
    _, stream, spec = seen[0]
    assert (spec.min_pixels, spec.max_pixels) == (784, 784)
    assert (stream.fps, stream.text_sink, stream.text_window, stream.vision_window) == (4.0, 3, 5, 16)
    assert (stream.sampling.max_new_tokens, stream.sampling.temperature) == (4, 0.0)


def test_infer_options_are_the_stream_settings_and_the_jobs_own():
    assert issubclass(InferConfig, StreamSettings)
    own = {f.name for f in dataclasses.fields(InferConfig)} - set(SETTING_NAMES)
    assert own == {"video", "model", "output", "jsonl", "mode", "previous_text", "start", "duration", "device",
                   "dtype", "quiet", "explicit"}
    parser = argparse.ArgumentParser(prog="streaming-vlm infer")
    infer_module.add_arguments(parser)
    helptext = " ".join(parser.format_help().split())
    for f in dataclasses.fields(StreamSettings):  # each setting's flag and help text, from settings.py
        flag = "--" + f.name.replace("_", "-")
        shown = f.name not in ("total_pixels", "max_frames")  # clips of known length: not a stream's
        assert (flag in helptext) == shown and (" ".join(f.metadata["help"].split()) in helptext) == shown, f.name


# --------------------------------------------------------------------------------------------------
# the installed entry points


def test_console_script_and_module_help():
    script = Path(sys.executable).with_name("streaming-vlm")
    assert script.exists(), "the package is not installed (pip install -e .)"
    for command in ([str(script), "--help"], [sys.executable, "-m", "streaming_vlm", "infer", "--help"]):
        proc = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        assert "usage: streaming-vlm" in proc.stdout
    assert "--vision-window" in proc.stdout and "unlimited" in proc.stdout
