"""The benchmark harness (``eval/harness.py``) on a toy benchmark without a model: parsing, the settings layers (with a
checkpoint's ``streaming_vlm.json``) and their sources in the results, ``--config``, the lazy model (loaded once, not
at all when everything is done), the resume check, one-line errors, sharding through the runner, sub-commands and
plain commands, and that library code imports no entry module."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from streaming_vlm.eval import generate, harness, runner
from streaming_vlm.eval.harness import NO_MODEL, Benchmark, Command, SettingsUse
from streaming_vlm.settings import DEFAULTS, SETTING_NAMES

PROG = "streaming-vlm eval toy"


class ToyError(Exception):
    pass


class Toy(Benchmark):
    """Items i0..iN-1 squared; the model is touched by every item."""

    name = "toy"
    description = "a toy benchmark"
    help = "square numbers"
    settings_use = SettingsUse(exclude=("total_pixels", "max_frames"), protocol={"query": "toy protocol"},
                               preset={"temperature": 0.0, "reset_every": 7.0})
    errors = (ToyError,)

    def add_arguments(self, parser):
        parser.add_argument("--out", required=True)
        parser.add_argument("--items", type=int, default=3)
        parser.add_argument("--fail", default=None)

    def items(self, run):
        if run.args.fail == "data":
            raise ToyError("bad data\non two lines")
        if run.args.fail == "bug":
            raise RuntimeError("a bug")
        if run.args.fail == "judge":
            raise KeyError("judge down")
        return {"toy": [{"id": f"i{k}", "k": k} for k in range(run.args.items)]}

    def resume_record(self, run):
        return {"model": run.args.model, "seed": run.settings.seed}

    def run_item(self, run, group, item):
        return {"square": item["k"] ** 2, "rank": run.rank, "model": run.model.name}

    def score(self, run, records):
        rows = records["toy"]
        return {"total": sum(r["square"] for r in rows), "ranks": [r["rank"] for r in rows], "meta": {"n": len(rows)}}

    def results_path(self, run):
        return Path(run.args.out) / "results.json"

    def table(self, results):
        return f"total {results['total']}"

    def error_exit(self, exc):
        return (1, f"judging stopped: {exc.args[0]} (rerun to resume)") if isinstance(exc, KeyError) else None


@pytest.fixture
def loads(monkeypatch):
    """generate.load_eval_model replaced by a fake model; the list of (path, settings, device, dtype) it was asked."""
    calls = []

    def fake(path, settings, *, device, dtype):
        calls.append((path, settings, device, dtype))
        return SimpleNamespace(name=Path(path).name, loaded=SimpleNamespace(generation_defaults={"top_k": 5}))

    monkeypatch.setattr(generate, "load_eval_model", fake)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    return calls


def checkpoint(tmp_path, values) -> Path:
    model = tmp_path / "ckpt"
    model.mkdir(exist_ok=True)
    (model / "streaming_vlm.json").write_text(json.dumps(values), encoding="utf-8")
    return model


def call(bench, argv, capsys, **kwargs):
    rc = harness.run(bench, [str(a) for a in argv], **kwargs)
    out, err = capsys.readouterr()
    return rc, out, err.strip()


def test_settings_layers_and_their_sources_reach_the_results(tmp_path, loads, capsys):
    model = checkpoint(tmp_path, {"max_pixels": 3136, "temperature": 0.5, "query": "from the checkpoint"})
    config = tmp_path / "toy.yaml"
    config.write_text("vision_window: 4\nitems: 2\nseed: 1\ndevice: cpu\n", encoding="utf-8")
    out = tmp_path / "out"
    rc, printed, _ = call(Toy(), ["--model", model, "--out", out, "--seed", "3", "--text-sink", "unlimited",
                                  "--config", config, "--quiet"], capsys)
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert printed.splitlines() == [f"wrote {out / 'results.json'}", "total 1"]  # 2 items from the YAML
    settings, sources = results["meta"]["stream_settings"], results["meta"]["stream_settings_sources"]
    used = [k for k in SETTING_NAMES if k not in ("total_pixels", "max_frames")]  # the excluded ones left out
    assert results["meta"]["n"] == 2 and list(settings) == used == list(sources)
    expected = {
        "max_pixels": (3136, "checkpoint"), "min_pixels": (3136, "checkpoint"),  # clamped to the checkpoint's max
        "temperature": (0.5, "checkpoint"),  # the checkpoint beats the preset (0.0)
        "query": ("toy protocol", "protocol"),  # the protocol beats the checkpoint
        "reset_every": (7.0, "preset"), "vision_window": (4, "config"), "seed": (3, "flag"),  # flag beats YAML
        "text_sink": (None, "flag"), "fps": (2.0, "default"),
    }  # fmt: skip
    assert {k: (settings[k], sources[k]) for k in expected} == expected
    ((path, loaded_with, device, dtype),) = loads  # the non-setting YAML key became --device's default
    assert (path, device, dtype) == (str(model), "cpu", "auto")
    assert {k: v for k, v in loaded_with.as_record().items() if k in settings} == settings
    assert (loaded_with.total_pixels, loaded_with.max_frames) == (DEFAULTS.total_pixels, DEFAULTS.max_frames)


class Excluding(Toy):
    """Excludes fps and max_new_tokens (its own rate and answer length) and the query (pinned by its protocol);
    ``--commentary`` uses max_new_tokens after all."""

    settings_use = SettingsUse(exclude=("fps", "max_new_tokens", "query"), protocol={"query": "toy protocol"},
                               fixed_chunks=False)

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--fps", type=float, default=1.0)
        parser.add_argument("--commentary", action="store_true")

    def items(self, run):
        if run.args.commentary:
            run.unused.discard("max_new_tokens")
        return super().items(run)

    def run_item(self, run, group, item):
        return {**super().run_item(run, group, item), "fps": run.settings.fps,
                "max_new_tokens": run.settings.max_new_tokens}


@pytest.mark.parametrize("commentary", [False, True])
def test_excluded_settings_are_not_taken_from_the_checkpoint_nor_recorded(tmp_path, loads, capsys, commentary):
    model = checkpoint(tmp_path, {"fps": 4.0, "max_new_tokens": 3, "query": "from the checkpoint", "text_sink": 9})
    out = tmp_path / "out"
    argv = ["--model", model, "--out", out, "--fps", "0.5", "--items", 1, *(["--commentary"] if commentary else [])]
    assert call(Excluding(), argv, capsys)[0] == 0
    (record,) = runner.read_jsonl(out / "toy.jsonl")
    assert (record["fps"], record["max_new_tokens"]) == (DEFAULTS.fps, DEFAULTS.max_new_tokens)  # not the ckpt's
    meta = json.loads((out / "results.json").read_text())["meta"]
    settings, sources = meta["stream_settings"], meta["stream_settings_sources"]
    assert "fps" not in settings and "fps" not in sources  # the benchmark's own --fps is no setting
    assert (settings["query"], sources["query"]) == ("toy protocol", "protocol")  # pinned: recorded
    assert (settings["text_sink"], sources["text_sink"]) == (9, "checkpoint")
    if commentary:  # used after all: recorded, with its default
        assert (settings["max_new_tokens"], sources["max_new_tokens"]) == (DEFAULTS.max_new_tokens, "default")
    else:
        assert "max_new_tokens" not in settings and list(settings) == list(sources)


def test_config_may_give_required_options_and_flags_still_win(tmp_path, loads, capsys):
    config = tmp_path / "toy.yaml"
    config.write_text(f"out: {tmp_path / 'from_yaml'}\nmodel: {tmp_path / 'm'}\nitems: 4\n", encoding="utf-8")
    assert call(Toy(), ["--config", config, "--items", "2"], capsys)[0] == 0
    assert json.loads((tmp_path / "from_yaml" / "results.json").read_text())["total"] == 1  # 2 items: the flag


def test_model_loads_lazily_once_and_not_at_all_when_every_item_is_done(tmp_path, loads, capsys):
    argv = ["--model", tmp_path / "m", "--out", tmp_path / "out", "--items", 5]
    assert call(Toy(), argv, capsys)[0] == 0
    assert len(loads) == 1  # five items, one load
    first = (tmp_path / "out" / "results.json").read_text()
    assert call(Toy(), argv, capsys)[0] == 0
    assert len(loads) == 1 and (tmp_path / "out" / "results.json").read_text() == first  # rescored, no load
    assert json.loads(first)["total"] == 0 + 1 + 4 + 9 + 16


def test_run_builds_stream_configs_with_the_checkpoints_generation_defaults(tmp_path, loads):
    from streaming_vlm.settings import resolve

    settings, sources = resolve({"top_p": 0.8}, protocol={"query": "q"})
    run = harness.Run(args=SimpleNamespace(device="cpu", dtype="fp32"), settings=settings, sources=sources,
                      model_path=str(tmp_path))
    config = run.stream_config("sliding", previous_text="before", query="per stream")
    assert (config.mode, config.previous_text, config.query, config.sampling.top_p, config.sampling.top_k) == (
        "sliding", "before", "per stream", 0.8, 5)
    assert run.stream_config().query == "q" and len(loads) == 1
    with pytest.raises(RuntimeError, match="loads no model"):
        _ = harness.Run(args=SimpleNamespace(), settings=settings, sources=sources).model


def test_resume_with_other_settings_is_refused_in_one_line(tmp_path, loads, capsys):
    argv = ["--model", tmp_path / "m", "--out", tmp_path / "out", "--seed", "3"]
    assert call(Toy(), argv, capsys)[0] == 0
    saved = json.loads((tmp_path / "out" / "settings.json").read_text())
    assert saved == {"model": str(tmp_path / "m"), "seed": 3}
    before = (tmp_path / "out" / "toy.jsonl").read_text()
    rc, printed, err = call(Toy(), [*argv, "--seed", "4", "--items", "4"], capsys)
    assert rc == 2 and printed == "" and len(loads) == 1
    assert err == (f"{PROG}: error: {tmp_path / 'out'} holds results made with other settings (seed); before: "
                   f"seed=3; now: seed=4; use another --out or delete it")
    assert (tmp_path / "out" / "toy.jsonl").read_text() == before  # nothing run, nothing written


def test_resume_records_older_than_a_setting_hold_its_default(tmp_path):
    """A settings file written before ``refresh_every`` existed resumes when it is 0 now, and is refused otherwise."""
    path = tmp_path / "out" / "settings.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"model": "m", "seed": 3}), encoding="utf-8")
    harness.check_resume(path, {"model": "m", "seed": 3, "refresh_every": 0})
    with pytest.raises(harness.ResumeError, match=r"\(refresh_every\); before: refresh_every=0; now: refresh_every=8"):
        harness.check_resume(path, {"model": "m", "seed": 3, "refresh_every": 8})
    harness.check_resume(path, {"model": "m", "seed": 3})  # a benchmark that does not record it


@pytest.mark.parametrize("case, argv, message", [
    ("benchmark error", ["--fail", "data"], "bad data on two lines"),
    ("settings", ["--min-pixels", "5000", "--max-pixels", "4000"], "--min-pixels (5000) is larger than --max-pixels"),
    ("frames per chunk", ["--fps", "3"], "--fps * --chunk-seconds must be an even whole number of frames per chunk"),
    ("config key", ["--config", "{bad_yaml}"], "unknown option(s) bogus, total_pixels"),
    ("config file", ["--config", "{missing}"], "cannot read config"),
    ("checkpoint", ["--model", "{bad_ckpt}"], "unknown stream setting(s) seed"),
    ("mapped by the benchmark", ["--fail", "judge"], "judging stopped: judge down (rerun to resume)"),
])  # fmt: skip
def test_known_errors_are_one_line(case, argv, message, tmp_path, loads, capsys):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("bogus: 1\ntotal_pixels: 5\n", encoding="utf-8")  # total_pixels: excluded, so no option
    bad_ckpt = checkpoint(tmp_path, {"seed": 1})  # not a checkpoint key
    names = {"bad_yaml": bad_yaml, "missing": tmp_path / "missing.yaml", "bad_ckpt": bad_ckpt}
    argv = [str(a).format(**names) for a in argv]
    rc, printed, err = call(Toy(), ["--model", tmp_path / "m", "--out", tmp_path / "out", *argv], capsys)
    assert (rc, printed) == (1 if case == "mapped by the benchmark" else 2, "")
    assert len(err.splitlines()) == 1 and err.startswith(f"{PROG}: error: ") and message in err
    assert loads == [] and not (tmp_path / "out" / "results.json").exists()


def test_unknown_errors_propagate_and_usage_errors_exit_2(tmp_path, loads, capsys):
    with pytest.raises(RuntimeError, match="a bug"):
        harness.run(Toy(), ["--model", str(tmp_path), "--out", str(tmp_path / "o"), "--fail", "bug"])
    with pytest.raises(SystemExit) as usage:
        harness.run(Toy(), ["--model", str(tmp_path)])  # --out is required
    assert usage.value.code == 2 and "--out" in capsys.readouterr().err


def test_help_shows_the_benchmarks_values_and_only_its_settings(capsys):
    with pytest.raises(SystemExit):
        harness.run(Toy(), ["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 'toy protocol')" in text and "sampling temperature; 0 = greedy (default: 0.0)" in text
    assert "--model MODEL" in text and "--threads" in text and "--config YAML" in text
    assert "--total-pixels" not in text and "--max-frames" not in text


def test_items_are_sharded_through_the_runner(tmp_path, loads, capsys, monkeypatch):
    monkeypatch.setattr(runner, "_barrier", lambda world: None)
    monkeypatch.setenv("WORLD_SIZE", "2")
    argv = ["--model", tmp_path / "m", "--out", tmp_path / "out", "--items", 5]
    monkeypatch.setenv("RANK", "1")
    assert call(Toy(), argv, capsys)[:2] == (0, "")  # rank 1: its shard only, no results
    assert [r["id"] for r in runner.read_jsonl(tmp_path / "out" / "toy.rank1.jsonl")] == ["i1", "i3"]
    assert not (tmp_path / "out" / "settings.json").exists()  # only rank 0 writes it
    monkeypatch.setenv("RANK", "0")
    rc, printed, _ = call(Toy(), argv, capsys)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert rc == 0 and results["ranks"] == [0, 1, 0, 1, 0] and results["total"] == 30
    assert len(loads) == 2  # one per rank


def test_the_process_group_is_torn_down_at_the_end(tmp_path, loads, capsys, monkeypatch):
    from tests.test_eval_runner import fake_process_group

    state: dict = {}
    calls = fake_process_group(monkeypatch, state)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert call(Toy(), ["--model", tmp_path / "m", "--out", tmp_path / "out"], capsys)[0] == 0
    assert len(calls) == 1 and not state["up"]


class ToyScore(Toy):
    """A phase without a model (an API judge): no --model, --device or --threads."""

    model_default = NO_MODEL
    settings_use = SettingsUse(exclude=tuple(n for n in SETTING_NAMES if n != "query"), protocol={"query": "judge"})
    help = "score the squares"
    resumable = False

    def run_item(self, run, group, item):
        return {"square": item["k"] ** 2, "rank": run.rank, "model_path": run.model_path}


def test_phases_and_plain_commands(tmp_path, loads, capsys):
    merged = []
    merge = Command(help="merge files", add_arguments=lambda p: p.add_argument("inputs", nargs="+"),
                    main=lambda args: merged.append(args.inputs) or 0, errors=(ToyError,))
    phases = {"generate": Toy(), "score": ToyScore()}
    rc, printed, _ = call(phases, ["score", "--out", tmp_path / "s", "--query", "asked"], capsys, commands={
        "merge": merge})
    results = json.loads((tmp_path / "s" / "results.json").read_text())
    assert rc == 0 and loads == [] and results["total"] == 5 and results["ranks"] == [0, 0, 0]
    assert results["meta"]["stream_settings_sources"]["query"] == "flag"
    assert not list((tmp_path / "s").glob("*.jsonl"))  # not resumable: nothing recorded per item
    with pytest.raises(SystemExit) as no_model_flag:
        harness.run(phases, ["score", "--out", str(tmp_path / "s"), "--model", "x"], commands={"merge": merge})
    assert no_model_flag.value.code == 2
    assert call(phases, ["generate", "--model", tmp_path / "m", "--out", tmp_path / "g"], capsys)[0] == 0
    assert len(loads) == 1
    assert call(phases, ["merge", "a", "b"], capsys, commands={"merge": merge})[0] == 0 and merged == [["a", "b"]]
    failing = Command(help="x", add_arguments=lambda p: None, main=lambda args: (_ for _ in ()).throw(ToyError("no")),
                      errors=(ToyError,))
    assert call(phases, ["merge"], capsys, commands={"merge": failing})[::2] == (2, f"{PROG}: error: no")
    with pytest.raises(SystemExit) as help_:
        harness.run(phases, ["--help"], commands={"merge": merge}, description="toy phases")
    assert help_.value.code == 0
    listing = " ".join(capsys.readouterr().out.split())
    assert "square numbers" in listing and "score the squares" in listing and "merge files" in listing
    with pytest.raises(SystemExit) as missing:
        harness.run(phases, [])
    assert missing.value.code == 2


ENTRY_MODULES = {"streaming_vlm.infer", "streaming_vlm.bench", "streaming_vlm.cli", "streaming_vlm.__main__",
                 "streaming_vlm.serve.cli"}
ALLOWED = {"streaming_vlm/cli.py", "streaming_vlm/infer.py", "streaming_vlm/bench.py", "streaming_vlm/__main__.py",
           "streaming_vlm/serve/cli.py"}
"""Entry modules themselves (``streaming-vlm serve`` is serve/cli.py)."""


def test_library_code_imports_no_entry_module():
    root = Path(__file__).resolve().parents[1]
    offenders = []
    for path in sorted((root / "streaming_vlm").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel in ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            offenders += [f"{rel}:{node.lineno} {n}" for n in names if n in ENTRY_MODULES]
    assert offenders == []


def test_importing_the_harness_loads_no_framework():
    import subprocess
    import sys

    code = ("import sys, streaming_vlm.eval.harness; "
            "print(sorted(m for m in ('torch', 'transformers', 'yaml') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
