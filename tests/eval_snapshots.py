"""Snapshots of every benchmark's output, recorded before a refactor and compared after it (issue 14, design §6.3-6.4).

Usage (from the repository root; CPU only, about 35 s on 2 cores)::

    .venv/bin/python -m tests.eval_snapshots record tests/snapshots/eval
    .venv/bin/python -m tests.eval_snapshots compare tests/snapshots/eval            # V2: the code as it is
    .venv/bin/python -m tests.eval_snapshots compare tests/snapshots/eval --legacy   # V1: + each case's legacy_flags
    .venv/bin/python -m tests.eval_snapshots compare tests/snapshots/eval --case ovobench/ --case vqa/cli

``record`` runs every case of :data:`CASES` in one process and writes ``DIR/<benchmark>/<case>.json`` (what the
case ran, its exit status, its normalised stdout and every results / per-item / resume-settings file it wrote) and
``DIR/manifest.json`` (the commit recorded from). ``compare`` reruns the cases on the current code and diffs them
against the snapshots: numbers with ``abs_tol`` :data:`ATOL` (logprobs are rounded to 5 decimals and may flip at
the boundary), everything else exactly. It prints one line per case, ``identical`` or ``differs`` with the count of
keys only the new output has (``added``) and of the others (``changed or removed``), then the first differences,
changes first (``--all``: every one), and exits 0 only when every case is identical. ``--case PREFIX``
(repeatable) runs a subset (cases another one needs run too, unreported). Record from a clean checkout so that no
edit in flight leaks in::

    git worktree add /tmp/i14-base HEAD
    (cd /tmp/i14-base && PYTHONPATH=/tmp/i14-base /work/main/.venv/bin/python -m tests.eval_snapshots record OUT)

A case runs a benchmark through ``streaming_vlm.cli.main`` in-process (the adapters' ``VideoQA.answer_prompt``
path through the Python API) on the test suite's own fixtures, built by the test modules' fixture functions and
argv helpers (imported, not copied), with the tiny model ``T`` (``build_tiny_model(seed=0)``) and the bundled demo
checkpoint ``D``. ``D`` cases pass no pixel, sampling or window flags, so that the checkpoint's
``streaming_vlm.json`` can show through once the benchmarks honour it. The fixtures' videos are stored with the
snapshots (``DIR/fixtures/``, about 130 kB) and put back when comparing, because libx264 does not always encode the
same frames to the same bytes (see :class:`Context`). Each snapshot keeps a digest of its fixtures' files: if a test
module's data changes, ``compare`` says so next to the case.

Normalised before storing or comparing: timings, memory and their ratios (:func:`volatile`: ``*latency*``,
``*decode*``, ``*rss*``, ``*memory*``, ``wall_s``, ``elapsed_s``, ``real_time_factor``, efficiency's ``summary.fps``,
...) become ``"<volatile>"`` (None stays None); dates, versions, platform and thread counts likewise; the scratch
folder becomes ``<tmp>``, the repository root ``<repo>`` and the local judge stub's URL ``<stub>``. In stdout,
tables of ``runner.format_table`` are re-rendered as ``a | b | c`` rows with timing columns masked (widths depend
on timings), and ``bench``'s own table keeps only its mode and cache columns. Rank shards
(``*.rank<r>.jsonl``), judge reply caches and figures are not stored.

**Legacy flags (§6.4 V1).** Once a benchmark honours the checkpoint's settings, its ``D`` results change by design.
Each :class:`Case` carries ``legacy_flags``: the flags that reproduce the *old effective* settings on the new code
(e.g. ``--min-pixels 78400 --max-pixels 602112 --top-k 0``); ``compare --legacy`` appends them to the case's argv
(the last occurrence of a flag wins in argparse). They are empty until the engineer migrating a benchmark fills
them in. The ``vqa/api`` cases read ``--min-pixels``/``--max-pixels`` from them as ``VideoQA.load`` keywords.

This module is a dev tool: pytest does not collect it (no ``test_`` prefix) and nothing runs at import.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT = 1
"""Version of the snapshot file layout."""
ATOL = 2e-5
VOLATILE = "<volatile>"
MAX_REPORTED = 12
"""Differences listed per case (the rest are counted)."""

REPO = Path(__file__).resolve().parents[1]

# Keys whose values are measurements of this machine and moment, not behaviour.
VOLATILE_KEYS = frozenset({
    "date", "torch", "transformers", "python", "platform", "cpu_count", "torch_threads", "threads", "elapsed_s",
    "real_time_factor", "video_read_s",
})  # fmt: skip
VOLATILE_RE = re.compile(
    r"latency|decode|rss|memory|gpu|(^|_)wall_s$|_ms(_|$)|^ms_|realtime_(chunk|token)_fraction|^\w+_vs_streaming_"
)
VOLATILE_COLUMN_RE = re.compile(r"\bms\b|ms/|s/item|\bMB\b|^fps$|\bRSS\b|\bwall\b|\bRTF\b|latency")
# Value-taking flags a D case leaves out (pixels, sampling, windows), so the checkpoint's settings can apply.
SETTING_FLAGS = frozenset({
    "--min-pixels", "--max-pixels", "--total-pixels", "--pixels", "--max-new-tokens", "--temperature", "--top-p",
    "--top-k", "--repetition-penalty", "--vision-window", "--text-rounds", "--text-sink", "--text-window",
})  # fmt: skip
# Environment a benchmark reads defaults from; scrubbed so that the machine's setup cannot leak in.
SCRUBBED_ENV = (
    "EVAL_DATASET_PATH", "LIVESPORTS3K_PATH", "VQA_DATA", "VQA_VIDEO_ROOT", "STREAMING_VLM_MODEL", "JUDGE_MODEL",
    "OPENAI_BASE_URL", "OPENAI_API_KEY", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
    "MASTER_PORT", "STREAMING_VLM_EVAL_BARRIER_TIMEOUT_S", "VLMEVALKIT_ROOT",
)  # fmt: skip
CPU = ["--device", "cpu", "--dtype", "fp32"]


# ------------------------------------------------------------------------------------------------------------
# cases
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One benchmark run: ``run(ctx, extra_flags)`` returns a :func:`Context.cli`-style outcome dict."""

    name: str
    """``<benchmark>/<variant>-<model>``; also the snapshot's path under DIR (``.json`` added)."""
    model: str | None
    """``"T"`` (tiny), ``"D"`` (demo checkpoint) or None (no model: API stubs only)."""
    run: Callable[[Context, list[str]], dict]
    legacy_flags: tuple[str, ...] = ()
    """Flags appended by ``compare --legacy`` to reproduce the pre-refactor effective settings (§6.4 V1)."""
    needs: tuple[str, ...] = ()
    """Cases whose output folder this one reads (run first)."""


class Context:
    """One run's scratch folder, the fixtures built so far (each once) and the output folder of each case.

    Videos are pinned: libx264 (as PyAV 18 bundles it) does not encode the same frames to the same bytes every time
    (its macroblock-tree rate control; ``x264-params=no-mbtree=1`` or ``no-asm=1`` make it repeatable), so the
    fixtures' ``*.mp4`` files are stored with the snapshots (``DIR/fixtures/<fixture>/...``) when recording and put
    back in place of the freshly encoded ones when comparing.
    """

    def __init__(self, root: Path, store: Path, pin: str):
        self.root = root
        self.store = store / "fixtures"
        self.pin = pin
        """``"save"`` (record) or ``"restore"`` (compare) the fixture videos."""
        self.factory = _TmpFactory(root / "fixtures")
        self.fixtures: dict[str, Any] = {}
        self.fixture_dirs: dict[str, list[Path]] = {}
        self.outputs: dict[str, Path] = {}
        self.case: Case | None = None
        self.used: list[str] = []

    def fixture(self, name: str) -> Any:
        """The fixture ``name`` of :data:`FIXTURES`, built on first use (and remembered as used by the case)."""
        if name not in self.fixtures:
            before = len(self.factory.made)
            self.fixtures[name] = FIXTURES[name](self.factory)
            self.fixture_dirs[name] = self.factory.made[before:]
            self._pin_videos(name)
        if name not in self.used:
            self.used.append(name)
        return self.fixtures[name]

    def _pin_videos(self, name: str) -> None:
        import shutil

        for k, d in enumerate(self.fixture_dirs[name]):
            for video in sorted(d.rglob("*.mp4")):
                stored = self.store / name / str(k) / video.relative_to(d)
                if self.pin == "save":
                    stored.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(video, stored)
                elif stored.is_file():
                    shutil.copyfile(stored, video)
                else:
                    print(f"    note: no stored copy of {stored}; using the video encoded now")

    def model(self, which: str) -> str:
        if which == "T":
            return str(self.fixture("tiny"))
        if which == "D":
            import streaming_vlm

            return str(Path(streaming_vlm.__file__).resolve().parent / "assets" / "demo_model")
        raise ValueError(f"model must be T or D, got {which!r}")

    def out(self) -> Path:
        """The current case's (new, empty) output folder."""
        assert self.case is not None
        path = self.root / "out" / self.case.name.replace("/", "__")
        path.mkdir(parents=True)
        self.outputs[self.case.name] = path
        return path

    def cli(self, argv: list[Any], extra: list[str], out: Path, main: Callable[[list[str]], int] | None = None) -> dict:
        """Run ``streaming-vlm ARGV EXTRA`` (or ``main(ARGV + EXTRA)``) in-process; collect what it wrote under
        ``out``."""
        if main is None:
            from streaming_vlm.cli import main
        argv = [str(a) for a in argv]
        rc, stdout, stderr = _call(lambda: main([*argv, *extra]))
        return {"argv": argv, "rc": rc, "stdout": stdout, "stderr": stderr, "files": collect(out)}


class _TmpFactory:
    """What a pytest fixture needs of ``tmp_path_factory``: ``mktemp`` (numbered, like pytest's)."""

    def __init__(self, root: Path):
        self.root = root
        self.made: list[Path] = []

    def mktemp(self, basename: str, numbered: bool = True) -> Path:
        k = 0
        while (path := self.root / (f"{basename}{k}" if numbered else basename)).exists():
            k += 1
        path.mkdir(parents=True)
        self.made.append(path)
        return path


def _test_fixture(module: str, name: str) -> Callable:
    """The plain function behind the pytest fixture ``module.name`` (the tests' own fixture builder)."""
    import importlib

    fixture = getattr(importlib.import_module(module), name)
    unwrap = getattr(fixture, "_get_wrapped_function", None)  # pytest >= 8.4
    return unwrap() if unwrap else getattr(fixture, "__wrapped__", fixture)


FIXTURES: dict[str, Callable[[_TmpFactory], Any]] = {
    "tiny": lambda f: _test_fixture("tests.conftest", "tiny_model_dir")(f),
    "clips": lambda f: _test_fixture("tests.test_cli", "clips")(f),
    "ovobench": lambda f: _test_fixture("tests.test_eval_ovobench", "data_dir")(f),
    "vqa_videos": lambda f: _test_fixture("tests.test_eval_vqa", "videos")(f),
    "livesports": lambda f: _test_fixture("tests.test_eval_livesports", "dataset")(f),
    "inf_stream": lambda f: _test_fixture("tests.test_eval_inf_stream", "dataset")(f),
    "synth": lambda f: _test_fixture("tests.test_eval_synth", "data")(f),
    "efficiency_video": lambda f: _test_fixture("tests.test_eval_efficiency", "video")(f),
    "bench_videos": lambda f: _bench_videos(f),
}


def _bench_videos(factory: _TmpFactory) -> dict[int, Path]:
    """The synthetic videos ``bench`` writes for itself (15 s at 4 fps, seed 0), by side: 56 for ``--pixels 3136``,
    112 for its default; given with ``--video`` so that they can be pinned."""
    from streaming_vlm.synthetic import write_synthetic_video

    root = factory.mktemp("bench")
    return {side: write_synthetic_video(root / f"synthetic{side}.mp4", 15.0, fps=4, width=side, height=side, seed=0)
            for side in (56, 112)}


def _drop(argv: list[Any], flags: frozenset[str] = SETTING_FLAGS) -> list[Any]:
    """``argv`` without the value-taking ``flags`` (and their values)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif str(a) in flags:
            skip = True
        else:
            out.append(a)
    return out


# ---- the cases, benchmark by benchmark --------------------------------------------------------------------


def _infer_demo(ctx: Context, extra: list[str]) -> dict:
    """The README quickstart: the bundled clip through the bundled demo model (its own defaults)."""
    out = ctx.out()
    return ctx.cli(["infer", "demo", "--output", out / "demo.vtt", "--jsonl", out / "demo.jsonl", "--quiet"], extra,
                   out)  # fmt: skip


def _infer_clip(model: str, *mode: str) -> Callable:
    def run(ctx: Context, extra: list[str]) -> dict:
        from tests.test_cli import FAST

        out = ctx.out()
        clip = ctx.fixture("clips")["5.5s"]  # a partial last chunk
        flags = FAST if model == "T" else ["--quiet"]
        argv = ["infer", clip, "--model", ctx.model(model), "--output", out / "clip.vtt", "--jsonl",
                out / "clip.jsonl", *flags, *CPU, *mode]  # fmt: skip
        return ctx.cli(argv, extra, out)

    return run


def _ovobench(model: str, answer_mode: str) -> Callable:
    def run(ctx: Context, extra: list[str]) -> dict:
        from tests.test_eval_ovobench import SMALL

        out = ctx.out()
        flags = SMALL if model == "T" else CPU
        argv = ["eval", "ovobench", "--model", ctx.model(model), "--data-dir", ctx.fixture("ovobench"),
                "--answer-mode", answer_mode, "--out", out, *flags]  # fmt: skip
        return ctx.cli(argv, extra, out)

    return run


# test_eval_vqa.py's CLI items, with fixed answers (the test derives them from a first run)
VQA_ITEMS = [
    {"id": "q1", "video": "a.mp4", "question": "Which shape?", "options": ["square", "circle"], "category": "shape",
     "answer": "A"},
    {"id": "q2", "video": "b.mp4", "question": "Color?", "options": ["A. red", "B. blue", "C. green"],
     "category": "color", "answer": "B"},
    {"id": "q3", "video": "a.mp4", "question": "Count?", "options": ["1", "2", "3", "4"], "category": "count",
     "answer": 2},
]  # fmt: skip
VQA_T_PIXELS = ["--min-pixels", "784", "--max-pixels", "4704"]


def _vqa_cli(model: str) -> Callable:
    def run(ctx: Context, extra: list[str]) -> dict:
        videos = ctx.fixture("vqa_videos")
        out = ctx.out()
        data = ctx.root / "vqa_data" / "vqa.jsonl"
        data.parent.mkdir(exist_ok=True)
        data.write_text("".join(json.dumps(it) + "\n" for it in VQA_ITEMS))
        argv = ["eval", "vqa", "--data", data, "--video-root", videos["4s"].parent, "--model", ctx.model(model),
                "--answer-modes", "streaming,offline", "--fps", "1", *CPU, *(VQA_T_PIXELS if model == "T" else []),
                "--out-dir", out / "results"]  # fmt: skip
        return ctx.cli(argv, extra, out)

    return run


def _vqa_api(model: str) -> Callable:
    """The adapters' path (VLMEvalKit, lmms-eval): ``VideoQA.load(M, VQAConfig(fps=1)).answer_prompt``."""

    def run(ctx: Context, extra: list[str]) -> dict:
        from streaming_vlm.eval.vqa import VideoQA, VQAConfig
        from tests.test_eval_vqa import LMMS_MVBENCH, VLMEVAL_VIDEOMME

        videos = ctx.fixture("vqa_videos")
        p = argparse.ArgumentParser()
        p.add_argument("--min-pixels", type=int)
        p.add_argument("--max-pixels", type=int)
        base = vars(p.parse_args(VQA_T_PIXELS if model == "T" else []))
        given = vars(p.parse_args((VQA_T_PIXELS if model == "T" else []) + extra))
        base, kwargs = ({"device": "cpu", "dtype": "fp32", **{k: v for k, v in d.items() if v is not None}}
                        for d in (base, given))
        prompts = [("4s", VLMEVAL_VIDEOMME), ("6s", LMMS_MVBENCH), ("4s", "Describe the video.")]
        answers = []

        def answer_all() -> int:
            qa = VideoQA.load(ctx.model(model), VQAConfig(fps=1.0), **kwargs)
            for mode in ("streaming", "offline"):
                for video, prompt in prompts:
                    got = qa.with_mode(mode).answer_prompt(videos[video], prompt)
                    answers.append({"mode": mode, "video": video, "prompt": prompt, **dataclasses.asdict(got)})
            return 0

        rc, stdout, stderr = _call(answer_all)
        call = f"VideoQA.load(M, VQAConfig(fps=1.0), **{base}).with_mode(mode).answer_prompt(video, prompt)"
        return {"argv": [call], "rc": rc, "stdout": stdout, "stderr": stderr, "files": {"answers.json": answers}}

    return run


def _livesports(model: str) -> Callable:
    def run(ctx: Context, extra: list[str]) -> dict:
        from tests import test_eval_livesports as t
        from tests.openai_stub import openai_stub

        root, baseline = ctx.fixture("livesports")
        out = ctx.out()
        with openai_stub(t.scripted_judge, lifetime_s=900) as stub, _env(STUB_JUDGE_KEY="sk-stub"):
            argv = t._argv(out, baseline, stub.base_url)
            argv[argv.index("tiny-ckpt")] = ctx.model(model)
            if model == "D":
                argv = _drop(argv)
            name = {"T": "tiny", "D": "demo"}[model]
            return ctx.cli(["eval", "livesports", *argv, "--data-dir", root, "--model-name", name], extra, out)

    return run


def _inf_generate(model: str) -> Callable:
    def run(ctx: Context, extra: list[str]) -> dict:
        from tests.test_eval_inf_stream import gen_argv

        out = ctx.out()
        argv = gen_argv({"model": ctx.model(model), "data": ctx.fixture("inf_stream")}, out / "answers")
        return ctx.cli(["eval", "inf-stream", *(argv if model == "T" else _drop(argv))], extra, out)

    return run


def _inf_baseline(ctx: Context, extra: list[str]) -> dict:
    """The OpenAI baseline phase against the scripted stub (as test_eval_inf_stream.py's ``baseline`` fixture)."""
    from tests.openai_stub import openai_stub
    from tests.test_eval_inf_stream import START, base_reply

    out = ctx.out()
    with openai_stub(base_reply, lifetime_s=900) as stub, _env(STUB_BASELINE_KEY="sk-stub"):
        argv = ["baseline", "--model", "stub-vision", "--dataset", ctx.fixture("inf_stream"), "--out", out / "gpt",
                "--start-offset", str(START), "--fps", "2", "--max-frames-per-request", "2", "--max-height", "32",
                "--quiet", "--base-url", stub.base_url, "--api-key-env", "STUB_BASELINE_KEY"]  # fmt: skip
        return ctx.cli(["eval", "inf-stream", *argv], extra, out)


def _inf_score(model: str) -> Callable:
    def run(ctx: Context, extra: list[str]) -> dict:
        from tests.openai_stub import openai_stub
        from tests.test_eval_inf_stream import judge_reply, score_argv

        out = ctx.out()
        ours = {"out": ctx.outputs[f"inf-stream/generate-{model}"] / "answers"}
        theirs = {"out": ctx.outputs["inf-stream/baseline"] / "gpt"}
        with openai_stub(judge_reply, lifetime_s=900) as stub, _env(STUB_JUDGE_KEY="sk-stub"):
            argv = score_argv(ctx.fixture("inf_stream"), ours, theirs, out / "scores", stub.base_url)
            return ctx.cli(["eval", "inf-stream", *argv], extra, out)

    return run


def _synth(model: str) -> Callable:
    def run(ctx: Context, extra: list[str]) -> dict:
        from tests.test_eval_synth import _argv

        out = ctx.out()
        argv = _argv(ctx.model(model), ctx.fixture("synth"), out, "--modes", "streaming,full,sliding,recompute")
        return ctx.cli(["eval", "synth", *(argv if model == "T" else _drop(argv))], extra, out)

    return run


def _efficiency(model: str) -> Callable:
    def run(ctx: Context, extra: list[str]) -> dict:
        from tests.test_eval_efficiency import _argv

        out = ctx.out()
        argv = _argv(ctx.model(model), ctx.fixture("efficiency_video"), out, "--reset-every", "2")
        return ctx.cli(["eval", "efficiency", *(argv if model == "T" else _drop(argv))], extra, out)

    return run


def _bench(model: str) -> Callable:
    """test_bench.py's run (its argv is inline in the fixture, so it is repeated here) on the synthetic video bench
    would write (pinned, see :class:`Context`), through ``bench.main`` as ``scripts/bench_stream.py`` calls it (as
    recorded: ``streaming-vlm bench`` passed no option on before issue 14)."""

    def run(ctx: Context, extra: list[str]) -> dict:
        from streaming_vlm import bench

        out = ctx.out()
        video = ctx.fixture("bench_videos")[56 if model == "T" else 112]
        argv = ["--model", ctx.model(model), "--minutes", "0.25", "--modes", "streaming,recompute", "--pixels",
                str(56 * 56), "--max-new-tokens", "4", "--threads", "1", "--no-progress", "--video", video,
                "--out", out / "bench.json", "--figure", out / "bench.png"]  # fmt: skip
        return ctx.cli(argv if model == "T" else _drop(argv), extra, out, main=bench.main)

    return run


# legacy_flags: empty until a benchmark is migrated to honour the checkpoint's settings; its engineer then adds
# the flags that reproduce the old effective settings of that case (§6.4 V1), e.g. for a D case
# ("--min-pixels", "78400", "--max-pixels", "602112", "--vision-window", "16", ..., "--top-k", "0").
CASES: tuple[Case, ...] = (
    Case("infer/quickstart-D", "D", _infer_demo),
    Case("infer/clip-T", "T", _infer_clip("T")),
    Case("infer/clip-sliding-T", "T", _infer_clip("T", "--mode", "sliding", "--reset-every", "2")),
    Case("infer/clip-D", "D", _infer_clip("D")),
    Case("ovobench/offline-T", "T", _ovobench("T", "offline")),
    Case("ovobench/streaming-T", "T", _ovobench("T", "streaming")),
    Case("ovobench/offline-D", "D", _ovobench("D", "offline"),
         legacy_flags=("--min-pixels", "78400", "--max-pixels", "602112")),
    Case("ovobench/streaming-D", "D", _ovobench("D", "streaming"),
         legacy_flags=("--min-pixels", "78400", "--max-pixels", "602112", "--vision-window", "16", "--text-rounds",
                       "16", "--text-sink", "512", "--text-window", "512", "--temperature", "0.9",
                       "--repetition-penalty", "1.05")),
    Case("vqa/cli-T", "T", _vqa_cli("T"), legacy_flags=("--top-k", "0")),
    Case("vqa/cli-D", "D", _vqa_cli("D"),
         legacy_flags=("--min-pixels", "78400", "--max-pixels", "602112", "--vision-window", "16", "--text-rounds",
                       "16", "--text-sink", "512", "--text-window", "512", "--temperature", "0.9",
                       "--repetition-penalty", "1.05", "--top-k", "0")),
    Case("vqa/api-T", "T", _vqa_api("T")),
    Case("vqa/api-D", "D", _vqa_api("D"), legacy_flags=("--min-pixels", "78400", "--max-pixels", "602112")),
    Case("livesports/all-T", "T", _livesports("T"), legacy_flags=("--top-k", "0", "--top-p", "1")),
    Case("livesports/all-D", "D", _livesports("D"),
         legacy_flags=("--min-pixels", "78400", "--max-pixels", "602112", "--vision-window", "16", "--text-rounds",
                       "16", "--text-sink", "512", "--text-window", "512", "--max-new-tokens", "20", "--temperature",
                       "0.9", "--repetition-penalty", "1.05", "--top-k", "0", "--top-p", "1")),
    Case("inf-stream/generate-T", "T", _inf_generate("T")),
    Case("inf-stream/generate-D", "D", _inf_generate("D"),
         legacy_flags=("--min-pixels", "78400", "--max-pixels", "602112", "--vision-window", "16", "--text-rounds",
                       "16", "--text-sink", "512", "--text-window", "512", "--max-new-tokens", "20", "--temperature",
                       "0.9", "--repetition-penalty", "1.05")),
    Case("inf-stream/baseline", None, _inf_baseline),
    Case("inf-stream/score-T", "T", _inf_score("T"), needs=("inf-stream/generate-T", "inf-stream/baseline")),
    Case("inf-stream/score-D", "D", _inf_score("D"), needs=("inf-stream/generate-D", "inf-stream/baseline")),
    Case("synth/all-modes-T", "T", _synth("T")),
    Case("synth/all-modes-D", "D", _synth("D")),
    Case("efficiency/all-modes-T", "T", _efficiency("T"), legacy_flags=("--top-k", "0")),
    Case("efficiency/all-modes-D", "D", _efficiency("D"),
         legacy_flags=("--min-pixels", "78400", "--max-pixels", "602112", "--vision-window", "16", "--text-rounds",
                       "16", "--text-sink", "512", "--text-window", "512", "--max-new-tokens", "20", "--temperature",
                       "0.9", "--repetition-penalty", "1.05", "--top-k", "0")),
    Case("bench/streaming-recompute-T", "T", _bench("T"), legacy_flags=("--top-k", "0")),
    Case("bench/streaming-recompute-D", "D", _bench("D"),
         legacy_flags=("--min-pixels", "784", "--max-pixels", "12544", "--vision-window", "16", "--text-rounds", "16",
                       "--text-sink", "512", "--text-window", "512", "--max-new-tokens", "20", "--temperature", "0.9",
                       "--repetition-penalty", "1.05", "--top-k", "0")),
)


# ------------------------------------------------------------------------------------------------------------
# running a case
# ------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _call(fn: Callable[[], int]) -> tuple[int, str, str]:
    """``fn()`` with stdout and stderr captured, logging sent to the captured stderr; (exit status, out, err)."""
    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers = []  # so that a benchmark's logging.basicConfig binds to this call's stderr
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = fn()
            except SystemExit as exc:  # argparse
                rc = exc.code if isinstance(exc.code, int) else 1
            except Exception:
                traceback.print_exc()
                rc = -1
    finally:
        root.handlers, root.level = handlers, level
    return rc, out.getvalue(), err.getvalue()


def _seed() -> None:
    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def run_case(ctx: Context, case: Case, extra: list[str]) -> tuple[dict, str]:
    """(the case's normalised snapshot, its raw stderr)."""
    ctx.case, ctx.used = case, []
    _seed()
    try:
        got = case.run(ctx, list(extra))
    except Exception:  # a case that cannot even start (e.g. a changed API) is a difference, not a crash
        got = {"argv": [], "rc": -1, "stdout": "", "stderr": traceback.format_exc(), "files": {}}
    roots = _roots(ctx)
    snapshot = {
        "format": FORMAT,
        "case": case.name,
        "model": case.model,
        "argv": normalise(got["argv"], roots),
        "extra_flags": list(extra),
        "rc": got["rc"],
        "stdout": normalise_stdout(got["stdout"], roots),
        "files": normalise(got["files"], roots),
        "fixtures": {name: _digest(ctx.fixture_dirs[name]) for name in ctx.used},
    }
    return snapshot, got["stderr"]


def collect(out: Path) -> dict[str, Any]:
    """Every results / per-item / settings file under ``out`` (JSON, JSONL, WebVTT), parsed, by relative path."""
    files: dict[str, Any] = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        name = path.relative_to(out).as_posix()
        if re.search(r"\.rank\d+\.jsonl$", name) or path.name == "judge_cache.jsonl" or ".tmp" in path.name:
            continue
        text = path.read_text(encoding="utf-8") if path.suffix in (".json", ".jsonl", ".vtt") else None
        if path.suffix == ".json":
            files[name] = json.loads(text)
        elif path.suffix == ".jsonl":
            files[name] = [json.loads(line) for line in text.splitlines() if line.strip()]
        elif path.suffix == ".vtt":
            files[name] = text.split("\n")
    return files


def _digest(dirs: list[Path]) -> str:
    """A digest of the files a fixture wrote (inputs changed <=> digest changed)."""
    h = hashlib.sha256()
    for d in dirs:
        for path in sorted(p for p in d.rglob("*") if p.is_file()):
            h.update(path.relative_to(d).as_posix().encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------------------
# normalisation
# ------------------------------------------------------------------------------------------------------------


def _roots(ctx: Context) -> list[tuple[str, str]]:
    """(text, placeholder) replacements, longest first: the scratch folder, the code's repository root."""
    import streaming_vlm

    repo = Path(streaming_vlm.__file__).resolve().parents[1]
    pairs = {str(ctx.root): "<tmp>", str(ctx.root.resolve()): "<tmp>", str(repo): "<repo>"}
    return sorted(pairs.items(), key=lambda kv: -len(kv[0]))


STUB_URL_RE = re.compile(r"http://127\.0\.0\.1:\d+(/v1)?")


def _text(s: str, roots: list[tuple[str, str]]) -> str:
    for old, new in roots:
        s = s.replace(old, new)
    return STUB_URL_RE.sub("<stub>", s)


def volatile(key: str, parent: str | None) -> bool:
    """Whether the value under ``key`` (in a dict under ``parent``) measures time, memory or the machine."""
    return key in VOLATILE_KEYS or bool(VOLATILE_RE.search(key)) or (key == "fps" and parent == "summary")


def normalise(obj: Any, roots: list[tuple[str, str]], parent: str | None = None) -> Any:
    if isinstance(obj, dict):
        return {
            _text(str(k), roots): (VOLATILE if v is not None and volatile(str(k), parent) else normalise(v, roots, k))
            for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        return [normalise(v, roots, parent) for v in obj]
    if isinstance(obj, str):
        return _text(obj, roots)
    if isinstance(obj, float) and not math.isfinite(obj):
        return repr(obj)  # JSON has no nan/inf
    return obj


def normalise_stdout(text: str, roots: list[tuple[str, str]]) -> list[str]:
    """stdout as lines: paths replaced, ``format_table`` tables re-rendered with timing columns masked."""
    lines = text.splitlines()
    out: list[str] = []
    k = 0
    while k < len(lines):
        if k + 1 < len(lines) and _is_bench_header(lines[k]):
            k = _bench_table(lines, k, out)
        elif k + 1 < len(lines) and (spans := _columns(lines[k + 1])) and len(lines[k]) == spans[-1][1]:
            k = _table(lines, k, spans, out, roots)
        else:
            out.append(_text(lines[k].rstrip(), roots))
            k += 1
    return out


def _columns(rule: str) -> list[tuple[int, int]] | None:
    """The column spans of a ``format_table`` rule line (dash runs separated by two spaces), else None."""
    if not re.fullmatch(r"-+(  -+)*", rule):
        return None
    return [m.span() for m in re.finditer(r"-+", rule)]


def _table(lines: list[str], k: int, spans: list[tuple[int, int]], out: list[str],
           roots: list[tuple[str, str]]) -> int:
    """One ``format_table`` table from line ``k``: every line is padded to the full width, cells to their column."""
    ends = [s for s, _ in spans[1:]] + [None]

    def cells(line: str) -> list[str]:
        return [_text(line[s:e].strip(), roots) for (s, _), e in zip(spans, ends, strict=True)]

    def is_row(line: str) -> bool:
        return len(line) == spans[-1][1] and all(line[s - 2 : s] == "  " for s, _ in spans[1:])

    header = cells(lines[k])
    masked = [bool(VOLATILE_COLUMN_RE.search(h)) for h in header]
    out.append("| " + " | ".join(header) + " |")
    k += 2
    while k < len(lines) and is_row(lines[k]):
        row = [VOLATILE if m else c for c, m in zip(cells(lines[k]), masked, strict=True)]
        out.append("| " + " | ".join(row) + " |")
        k += 1
    return k


def _is_bench_header(line: str) -> bool:
    return line.startswith("mode ") and "min1 ms" in line and "cache max" in line


def _bench_table(lines: list[str], k: int, out: list[str]) -> int:
    """bench.py's own table: keep the mode and the two cache columns; comparison ratios are timings."""
    out.append("| mode | cache max | cache last10 |")
    k += 2  # header, rule
    while k < len(lines) and lines[k]:
        line = lines[k]
        if ":" in line and not line.startswith(" "):  # "recompute_vs_streaming_median_latency: 1.23x"
            out.append(f"{line.split(':', 1)[0]}: {VOLATILE}")
        else:
            parts = line.split()
            out.append(f"| {parts[0]} | {' | '.join(parts[7:9])} |" if len(parts) >= 12 else line)
        k += 1
    return k


# ------------------------------------------------------------------------------------------------------------
# comparison
# ------------------------------------------------------------------------------------------------------------


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def diff(old: Any, new: Any, path: str = "") -> list[str]:
    """The differences between two normalised values, one line each (``path: old -> new``)."""
    if _number(old) and _number(new):
        same = old == new if isinstance(old, int) and isinstance(new, int) else math.isclose(old, new, abs_tol=ATOL)
        return [] if same else [f"{path}: {old!r} -> {new!r}"]
    if isinstance(old, dict) and isinstance(new, dict):
        lines = [f"{path}.{k}: removed" for k in old if k not in new]
        lines += [f"{path}.{k}: added ({_short(new[k])})" for k in new if k not in old]
        for k in old:
            if k in new:
                lines += diff(old[k], new[k], f"{path}.{k}" if path else k)
        return lines
    if isinstance(old, list) and isinstance(new, list):
        lines = [] if len(old) == len(new) else [f"{path}: {len(old)} -> {len(new)} entries"]
        for i, (a, b) in enumerate(zip(old, new, strict=False)):
            lines += diff(a, b, f"{path}[{i}]")
        return lines
    return [] if old == new and type(old) is type(new) else [f"{path}: {_short(old)} -> {_short(new)}"]


def _short(x: Any, n: int = 80) -> str:
    s = json.dumps(x, ensure_ascii=False)
    return s if len(s) <= n else s[: n - 3] + "..."


def compare_case(old: dict, new: dict) -> list[str]:
    """Differences in what a case produced (its outputs and the argv it ran; not the fixture digests)."""
    keys = ("argv", "rc", "stdout", "files")
    return diff({k: old.get(k) for k in keys}, {k: new.get(k) for k in keys})


# ------------------------------------------------------------------------------------------------------------
# entry point
# ------------------------------------------------------------------------------------------------------------


def snapshot_path(root: Path, name: str) -> Path:
    return root / f"{name}.json"


def _select(prefixes: list[str] | None) -> tuple[list[Case], set[str]]:
    """(cases to run, in table order; names of those to report)."""
    by_name = {c.name: c for c in CASES}
    chosen = {c.name for c in CASES if not prefixes or any(c.name.startswith(p) for p in prefixes)}
    if not chosen:
        raise SystemExit(f"eval_snapshots: error: no case matches {prefixes}; cases: {', '.join(by_name)}")
    run, todo = set(), list(chosen)
    while todo:
        name = todo.pop()
        if name not in run:
            run.add(name)
            todo += by_name[name].needs
    return [c for c in CASES if c.name in run], chosen


def _setup() -> None:
    """One CPU thread, no torchrun or dataset environment, offline hub: the same conditions on every machine."""
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    for key in SCRUBBED_ENV:
        os.environ.pop(key, None)
    import torch

    torch.set_num_threads(1)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


def _commit(repo: Path) -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True).stdout.strip()

    dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", "streaming_vlm", "tests"))
    return {"commit": git("rev-parse", "HEAD") or None, "dirty": dirty}


def _tail(stderr: str, n: int = 6) -> str:
    return "\n".join("    " + line for line in stderr.strip().splitlines()[-n:])


def record(dest: Path, prefixes: list[str] | None, keep: bool) -> int:
    cases, report = _select(prefixes)
    failed = []
    t0 = time.perf_counter()
    if not prefixes and (dest / "fixtures").is_dir():  # a full recording stores every video afresh
        import shutil

        shutil.rmtree(dest / "fixtures")
    with _scratch(keep) as root:
        ctx = Context(root, dest, pin="save")
        for case in cases:
            t = time.perf_counter()
            snap, stderr = run_case(ctx, case, [])
            if case.name not in report:
                continue
            path = snapshot_path(dest, case.name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(snap, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
            print(f"{case.name:34s} rc={snap['rc']}  {time.perf_counter() - t:5.1f} s  -> {path}", flush=True)
            if snap["rc"] != 0:
                failed.append(case.name)
                print(_tail(stderr))
    import streaming_vlm

    manifest = {"format": FORMAT, "recorded_from": _commit(Path(streaming_vlm.__file__).resolve().parents[1]),
                "cases": [c.name for c in CASES], "atol": ATOL}  # fmt: skip
    if not prefixes:
        (dest / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    print(f"recorded {len(report)} case(s) in {time.perf_counter() - t0:.0f} s" +
          (f"; exit status != 0 in: {', '.join(failed)}" if failed else ""))  # fmt: skip
    return 1 if failed else 0


ADDED_RE = re.compile(r": added \(")
"""A difference line that is a key present only in the new output (:func:`diff`)."""


def compare(src: Path, prefixes: list[str] | None, legacy: bool, keep: bool, show_all: bool = False) -> int:
    cases, report = _select(prefixes)
    manifest = src / "manifest.json"
    if manifest.is_file():
        info = json.loads(manifest.read_text(encoding="utf-8"))
        print(f"snapshots recorded from {info.get('recorded_from')}; legacy flags {'on' if legacy else 'off'}")
    differing = []
    t0 = time.perf_counter()
    with _scratch(keep) as root:
        ctx = Context(root, src, pin="restore")
        for case in cases:
            extra = list(case.legacy_flags) if legacy else []
            new, stderr = run_case(ctx, case, extra)
            if case.name not in report:
                continue
            path = snapshot_path(src, case.name)
            if not path.is_file():
                differing.append(case.name)
                print(f"{case.name:34s} differs: no snapshot {path}")
                continue
            old = json.loads(path.read_text(encoding="utf-8"))
            lines = compare_case(old, new)
            flags = f" (with {' '.join(extra)})" if extra else ""
            if not lines:
                print(f"{case.name:34s} identical{flags}", flush=True)
            else:
                differing.append(case.name)
                added = [line for line in lines if ADDED_RE.search(line)]
                other = [line for line in lines if not ADDED_RE.search(line)]
                print(f"{case.name:34s} differs{flags}: {len(lines)} difference(s): {len(added)} added, "
                      f"{len(other)} changed or removed", flush=True)
                shown = other + added  # changes first: additions are what a refactor may bring
                limit = len(shown) if show_all else MAX_REPORTED
                for line in shown[:limit]:
                    print(f"    {line}")
                if len(shown) > limit:
                    print(f"    ... and {len(shown) - limit} more (--all lists them)")
                if new["rc"] != 0:
                    print(_tail(stderr))
            changed = [k for k, v in new["fixtures"].items() if old.get("fixtures", {}).get(k) not in (None, v)]
            if changed:
                print(f"    note: fixture(s) {', '.join(changed)} differ from the recording (the inputs changed)")
    known = {c.name for c in CASES}
    stale = sorted(name for p in src.rglob("*.json") if p.name != "manifest.json"
                   and (name := p.relative_to(src).with_suffix("").as_posix()) not in known)
    if stale and not prefixes:
        print(f"note: snapshot(s) without a case: {', '.join(stale)}")
    total = len(report)
    print(f"{total - len(differing)} of {total} case(s) identical ({time.perf_counter() - t0:.0f} s)" +
          (f"; differ: {', '.join(differing)}" if differing else ""))  # fmt: skip
    return 1 if differing else 0


@contextlib.contextmanager
def _scratch(keep: bool) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="eval-snapshots-"))
    try:
        yield root
    finally:
        if keep:
            print(f"kept the scratch folder {root}")
        else:
            import shutil

            shutil.rmtree(root, ignore_errors=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.eval_snapshots",
                                description="Record or compare every benchmark's normalised output (issue 14).")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (("record", "run every case and write its snapshot into DIR"),
                        ("compare", "rerun every case and diff it against the snapshots in DIR")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("dir", type=Path, help="snapshot folder (tests/snapshots/eval)")
        s.add_argument("--case", action="append", default=None, metavar="PREFIX",
                       help="only the cases whose name starts with PREFIX (repeatable)")
        s.add_argument("--keep", action="store_true", help="keep the scratch folder (fixtures and raw outputs)")
        if name == "compare":
            s.add_argument("--legacy", action="store_true",
                           help="append each case's legacy_flags (the pre-refactor effective settings)")
            s.add_argument("--all", dest="show_all", action="store_true",
                           help=f"list every difference (default: the first {MAX_REPORTED} of a case, changes first)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "compare" and not args.dir.is_dir():
        print(f"eval_snapshots: error: snapshot folder not found: {args.dir}", file=sys.stderr)
        return 2
    _setup()
    if args.command == "record":
        return record(args.dir, args.case, args.keep)
    return compare(args.dir, args.case, args.legacy, args.keep, args.show_all)


if __name__ == "__main__":
    sys.exit(main())
