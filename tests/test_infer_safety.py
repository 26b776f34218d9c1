"""``streaming-vlm infer`` never destroys or garbles data.

Every output path is checked before any work (before the video is opened and the model loaded): never the
input video, never the other output, by any name (symlinks, hard links, ``..``); an existing output must be a
writable regular file; a failed check creates and empties nothing. Nonsense numbers are one-line usage errors.
WebVTT cues are valid cue text whatever the model says. A video cut short says so, on stderr and in the summary.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import av
import pytest

import streaming_vlm.models as models
import streaming_vlm.video as video_module
from streaming_vlm import argtypes
from streaming_vlm.cli import main
from streaming_vlm.engine import StreamSession
from streaming_vlm.outputs import VttWriter
from streaming_vlm.synthetic import write_synthetic_video
from tests.test_video import _mdat_payload

FAST = ["--quiet", "--max-pixels", str(112 * 112), "--min-pixels", str(28 * 28), "--max-new-tokens", "4"]


@pytest.fixture(autouse=True)
def _keep_warning_format(monkeypatch):
    """``infer.main`` sets ``warnings.formatwarning`` for the process; put it back after each test."""
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_synthetic_video(tmp_path_factory.mktemp("clip") / "clip.mp4", 2.0, fps=10, width=56, height=56)


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if the video is opened or the model loaded: the outputs are checked before either."""

    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the outputs were checked")

    monkeypatch.setattr(models, "load_model", forbidden)
    monkeypatch.setattr(models, "ensure_tiny_model", forbidden)
    monkeypatch.setattr(video_module, "VideoReader", forbidden)


def infer_error(capsys, *args) -> str:
    """Run ``streaming-vlm infer ARGS``; assert exit status 2 and one error line; return that line."""
    code = main(["infer", *(str(a) for a in args)])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert out == "" and "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("streaming-vlm: error: "), err
    return lines[0]


def copy_of(clip: Path, where: Path, name: str = "match.mp4") -> tuple[Path, bytes]:
    where.mkdir(parents=True, exist_ok=True)
    data = clip.read_bytes()
    path = where / name
    path.write_bytes(data)
    return path, data


# --------------------------------------------------------------------------------------------------
# never the input video


@pytest.mark.parametrize("flag", ["--output", "--jsonl"])
def test_an_output_that_is_the_video_is_refused_and_the_video_kept(flag, clip, tmp_path, no_work, capsys):
    video, data = copy_of(clip, tmp_path)
    other = ["--jsonl", tmp_path / "out.jsonl"] if flag == "--output" else ["--output", tmp_path / "out.vtt"]
    line = infer_error(capsys, video, "--model", tmp_path / "model", flag, video, *other)
    assert f"{flag} {video} is the input video" in line
    assert video.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["match.mp4"]  # nothing created


@pytest.mark.parametrize("link", ["symlink", "hard link", "dotdot", "symlinked folder"])
def test_the_video_by_another_name_is_refused(link, clip, tmp_path, no_work, capsys):
    video, data = copy_of(clip, tmp_path / "videos")
    if link == "symlink":
        output = tmp_path / "subtitles.vtt"
        output.symlink_to(video)
    elif link == "hard link":
        output = tmp_path / "subtitles.vtt"
        os.link(video, output)
    elif link == "dotdot":
        (tmp_path / "elsewhere").mkdir()
        output = Path(f"{tmp_path}/elsewhere/../videos/match.mp4")
    else:
        (tmp_path / "alias").symlink_to(tmp_path / "videos")
        output = tmp_path / "alias" / "match.mp4"
    line = infer_error(capsys, video, "--model", tmp_path / "model", "--output", output)
    assert f"--output {output} is the input video" in line
    assert video.read_bytes() == data


def test_a_video_named_like_its_default_output_is_not_overwritten(clip, tmp_path, no_work, capsys):
    video, data = copy_of(clip, tmp_path, "clip.vtt")  # the default output is <name>.vtt: the video itself
    line = infer_error(capsys, video, "--model", tmp_path / "model")
    assert f"the default output {video} is the input video" in line and "give --output" in line
    assert video.read_bytes() == data


# --------------------------------------------------------------------------------------------------
# never each other


@pytest.mark.parametrize("spelling", ["same", "dotdot", "symlink"])
def test_output_and_jsonl_cannot_be_one_file(spelling, clip, tmp_path, no_work, capsys):
    vtt = tmp_path / "same.txt"
    jsonl = {"same": vtt, "dotdot": Path(f"{tmp_path}/sub/../same.txt"), "symlink": tmp_path / "link.txt"}[spelling]
    (tmp_path / "sub").mkdir()
    if spelling == "symlink":
        vtt.write_text("kept\n")
        jsonl.symlink_to(vtt)
    line = infer_error(capsys, clip, "--model", tmp_path / "model", "--output", vtt, "--jsonl", jsonl)
    assert f"--output and --jsonl are the same file ({jsonl})" in line
    if spelling == "symlink":
        assert vtt.read_text() == "kept\n"
    else:
        assert not vtt.exists()


# --------------------------------------------------------------------------------------------------
# writable, named in the error, checked before any work, nothing created or emptied


def _read_only_file(tmp_path: Path) -> Path:
    path = tmp_path / "locked.vtt"
    path.write_text("kept\n")
    path.chmod(0o444)
    return path


def _directory(tmp_path: Path) -> Path:
    path = tmp_path / "folder.vtt"
    path.mkdir()
    return path


def _fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe.vtt"
    os.mkfifo(path)
    return path


def _dangling_symlink_into_a_file(tmp_path: Path) -> Path:
    (tmp_path / "plain.txt").write_text("kept\n")
    path = tmp_path / "dangling.vtt"
    path.symlink_to(tmp_path / "plain.txt" / "out.vtt")
    return path


UNWRITABLE = {
    "directory": (_directory, "it is a directory"),
    "proc-version": (lambda t: Path("/proc/version"), "the file is read-only"),
    "read-only-file": (_read_only_file, "the file is read-only"),
    "fifo": (_fifo, "not a regular file"),
    "trailing-slash": (lambda t: f"{t}/new/", "it names a directory"),
    "dangling-symlink-under-a-file": (_dangling_symlink_into_a_file, "{tmp}/plain.txt is not a directory"),
}


@pytest.mark.parametrize("flag", ["--output", "--jsonl"])
@pytest.mark.parametrize("case", list(UNWRITABLE))
def test_an_unwritable_output_is_named_before_any_work(case, flag, clip, tmp_path, no_work, capsys):
    if case == "proc-version" and not os.path.isfile("/proc/version"):
        pytest.skip("no /proc/version here")
    make, reason = UNWRITABLE[case]
    bad = make(tmp_path)
    before = Path(bad).read_bytes() if Path(bad).is_file() and case != "proc-version" else None
    # the other output already exists: a failed check must not empty it
    good = tmp_path / ("earlier.jsonl" if flag == "--output" else "earlier.vtt")
    good.write_text("an earlier run\n")
    other = "--jsonl" if flag == "--output" else "--output"
    line = infer_error(capsys, clip, "--model", tmp_path / "model", flag, bad, other, good)
    assert line == f"streaming-vlm: error: cannot write {flag} {bad}: {reason.format(tmp=tmp_path)}"
    assert good.read_text() == "an earlier run\n"
    if before is not None:
        assert Path(bad).read_bytes() == before


def test_a_folder_without_write_permission_is_named_before_any_work(clip, tmp_path, no_work, monkeypatch, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root may write anywhere: stand in for a folder it may not write (a read-only mount)
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != locked and real_access(p, mode, **kw))
    output = locked / "sub" / "out.vtt"
    line = infer_error(capsys, clip, "--model", tmp_path / "model", "--output", output)
    assert line == f"streaming-vlm: error: cannot write --output {output}: no permission to create files in {locked}"
    assert not (locked / "sub").exists()


def test_good_outputs_are_written_only_after_the_checks(clip, tmp_path, tiny_model_dir, capsys):
    """The checks pass for new files in new folders, an existing file, and a symlink to one; the run writes them."""
    existing = tmp_path / "old.jsonl"
    existing.write_text("an earlier run\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(existing)
    vtt = tmp_path / "new" / "deeper" / "out.vtt"
    code = main(["infer", str(clip), "--model", str(tiny_model_dir), *FAST, "--output", str(vtt),
                 "--jsonl", str(link)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert vtt.read_text().startswith("WEBVTT\n\n")
    assert len(existing.read_text().splitlines()) == 2 and link.is_symlink()


# --------------------------------------------------------------------------------------------------
# numbers


@pytest.mark.parametrize(
    "flag,value",
    [("--duration", "nan"), ("--start", "inf"), ("--start", "nan"), ("--start", "-inf"), ("--fps", "inf"),
     ("--chunk-seconds", "nan"), ("--temperature", "nan"), ("--top-p", "nan"), ("--reset-every", "inf"),
     ("--repetition-penalty", "inf")],
)
def test_nan_and_inf_are_one_line_usage_errors(flag, value, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["infer", "x.mp4", f"{flag}={value}"])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    usage, error = err.splitlines()  # the one-line usage, then the error
    assert usage.startswith("usage: streaming-vlm infer VIDEO")
    assert error == f"streaming-vlm infer: error: argument {flag}: must be a finite number, got {value}"


@pytest.mark.parametrize("yaml_value,words", [(".nan", "--start must be a finite number, got nan"),
                                              (".inf", "--start must be a finite number, got inf"),
                                              ("soon", "--start must be a number, got 'soon'")])
def test_nonsense_numbers_from_yaml_are_one_line_errors(yaml_value, words, clip, tmp_path, no_work, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"# Launch: streaming-vlm infer VIDEO --config c.yaml\nstart: {yaml_value}\n")
    line = infer_error(capsys, clip, "--config", config, "--output", tmp_path / "o.vtt")
    assert line == f"streaming-vlm: error: {words}"


def test_shared_number_types_reject_nan_and_inf():
    import argparse

    for parse in (argtypes.finite_float, argtypes.positive_float, argtypes.non_negative_float):
        for text in ("nan", "inf", "-inf", "NaN", "Infinity"):
            with pytest.raises(argparse.ArgumentTypeError, match=f"got {text}"):
                parse(text)
    assert argtypes.finite_float("-2.5") == -2.5 and argtypes.finite_float("1e3") == 1000.0


# --------------------------------------------------------------------------------------------------
# WebVTT cue text


HOSTILE = "<b>red</b> & blue --> 3<4 > 2\n\nWEBVTT\r\n00:00:00.000 --> 00:00:01.000 &amp;"
ESCAPED = ("&lt;b&gt;red&lt;/b&gt; &amp; blue --&gt; 3&lt;4 &gt; 2 WEBVTT 00:00:00.000 --&gt; 00:00:01.000 "
           "&amp;amp;")


def _cues(text: str) -> list[list[str]]:
    assert text.startswith("WEBVTT\n\n") and text.endswith("\n\n")
    return [block.split("\n") for block in text[len("WEBVTT\n\n"):-2].split("\n\n")]


def _valid_cue_text(payload: str) -> bool:
    """WebVTT cue text without markup: no '<', every '&' starts one of the three entities, no '-->'."""
    return ("<" not in payload and "-->" not in payload and "\n" not in payload
            and not re.search(r"&(?!(amp|lt|gt);)", payload))


def test_cue_text_is_escaped_and_cannot_end_the_cue(tmp_path):
    path = tmp_path / "x.vtt"
    with VttWriter(path) as vtt:
        vtt.write(0.0, 1.0, HOSTILE)
        vtt.write(1.0, 2.0, "plain words")
    cues = _cues(path.read_text(encoding="utf-8"))
    assert cues == [["1", "00:00:00.000 --> 00:00:01.000", ESCAPED], ["2", "00:00:01.000 --> 00:00:02.000",
                                                                      "plain words"]]
    assert _valid_cue_text(ESCAPED)


def test_the_cli_writes_valid_cues_whatever_the_model_says(clip, tiny_model_dir, tmp_path, monkeypatch, capsys):
    real_step = StreamSession.step

    def step(self, *args, **kwargs):
        return dataclasses.replace(real_step(self, *args, **kwargs), text=HOSTILE)

    monkeypatch.setattr(StreamSession, "step", step)
    vtt, jsonl = tmp_path / "o.vtt", tmp_path / "o.jsonl"
    code = main(["infer", str(clip), "--model", str(tiny_model_dir), *FAST, "--output", str(vtt), "--jsonl",
                 str(jsonl)])
    assert code == 0, capsys.readouterr().err
    cues = _cues(vtt.read_text(encoding="utf-8"))
    assert [len(c) for c in cues] == [3, 3] and [c[2] for c in cues] == [ESCAPED, ESCAPED]
    assert HOSTILE.replace("\n", "\\n").replace("\r", "\\r") in jsonl.read_text(encoding="utf-8")  # JSON: as said


# --------------------------------------------------------------------------------------------------
# a video cut short


def test_a_video_cut_short_is_reported_once_and_in_the_summary(tiny_model_dir, tmp_path):
    whole = write_synthetic_video(tmp_path / "whole.mp4", 6.0, fps=10, width=56, height=56)
    # move the index to the front (as a streamable "faststart" MP4 has it), then cut the media data in half
    fast = tmp_path / "fast.mp4"
    with av.open(str(whole)) as src, av.open(str(fast), "w", options={"movflags": "+faststart"}) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.size:
                packet.stream = stream
                dst.mux(packet)
    data = fast.read_bytes()
    lo, hi = _mdat_payload(data)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: (lo + hi) // 2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with video_module.VideoReader(cut) as reader:
            ends = [chunk.end for chunk in reader.chunks()]
    end = video_module._fmt_s(ends[-1])
    assert 2.0 < ends[-1] < 4.0

    vtt = tmp_path / "cut.vtt"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    proc = subprocess.run([sys.executable, "-m", "streaming_vlm", "infer", str(cut), "--model", str(tiny_model_dir),
                           *FAST, "--output", str(vtt)], capture_output=True, text=True, env=env, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    said = f"the video stream ends at {end} s of the 6.0 s its container states"
    warned = [line for line in proc.stderr.splitlines() if line.startswith("streaming-vlm: warning:")]
    assert warned == [f"streaming-vlm: warning: {cut}: {said} (file cut short?)"], proc.stderr
    assert f"video cut short: {said}" in proc.stderr.splitlines()
    assert _cues(vtt.read_text())[-1][1].endswith(f"--> 00:00:0{ends[-1]:.3f}")
