"""Every YAML under ``configs/`` loads and says how to launch it, and its stream settings load strictly into the
settings object (``streaming_vlm/settings.py``): inference configs match ``InferConfig``, training configs'
keys are training arguments, and their stream keys are settings. Every shipped checkpoint's
``streaming_vlm.json`` (and the one the demo writes) loads strictly too. An unknown key fails, naming it.
"""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from streaming_vlm import settings
from streaming_vlm.cli import build_parser
from streaming_vlm.infer import InferConfig, config_from_args
from streaming_vlm.settings import CHECKPOINT_FILE, SETTING_NAMES, SettingsError
from streaming_vlm.train.args import TRAINING_ALIASES

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
YAMLS = sorted(p for p in CONFIGS.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
INFER_YAMLS = [p for p in YAMLS if p.name.startswith("infer")]
TRAINING_YAMLS = [p for p in YAMLS if p not in INFER_YAMLS]
CHECKPOINT_JSONS = sorted((REPO / "streaming_vlm" / "assets").rglob(CHECKPOINT_FILE))
DEMO_CHECKPOINT = REPO / "streaming_vlm" / "assets" / "demo_model" / CHECKPOINT_FILE
# a line of the leading comment that shows how to run the file
LAUNCH = re.compile(r"Launch:|^#\s*\$?\s*(streaming-vlm|python3?|torchrun|deepspeed|accelerate|bash|sh)\s")


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(CONFIGS)) for p in paths]


def leading_comment(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    block = []
    for line in lines:
        if not line.startswith("#"):
            break
        block.append(line)
    return block


def test_the_inference_config_is_there():
    assert CONFIGS / "infer.yaml" in INFER_YAMLS


@pytest.mark.parametrize("path", YAMLS, ids=_ids(YAMLS))
def test_loads_and_starts_with_a_launch_comment(path):
    yaml.safe_load(path.read_text(encoding="utf-8"))  # raises on malformed YAML
    comment = leading_comment(path)
    assert comment and comment[0].startswith("# ") and comment[0][2:].strip(), (
        f"{path}: the first line must be a '# ' comment saying what the file is for"
    )
    assert any(LAUNCH.search(line) for line in comment[1:]), (
        f"{path}: the leading comment needs a 'Launch:' line (or a command) showing how to run it"
    )


@pytest.mark.parametrize("path", INFER_YAMLS, ids=_ids(INFER_YAMLS))
def test_infer_config_keys_are_infer_config_fields(path):
    values = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(values, dict) and values, f"{path}: expected a mapping of option names to values"
    known = {f.name for f in fields(InferConfig)}
    assert set(values) <= known, f"{path}: not InferConfig fields: {sorted(set(values) - known)}"
    cfg = InferConfig(**values)
    for key, value in values.items():
        assert getattr(cfg, key) == value, key


@pytest.mark.parametrize("path", INFER_YAMLS, ids=_ids(INFER_YAMLS))
def test_infer_config_works_through_the_command_line(path):
    launch = " ".join(line for line in leading_comment(path) if "streaming-vlm infer" in line)
    assert "streaming-vlm infer" in launch, f"{path}: the launch line should show 'streaming-vlm infer'"
    named = re.search(r"--config\s+(\S+)", launch)
    assert named and (REPO / named.group(1)).resolve() == path.resolve(), f"{path}: the launch line names it"
    args = build_parser().parse_args(["infer", "clip.mp4", "--config", str(path)])
    cfg = config_from_args(args)
    values = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert {key: getattr(cfg, key) for key in values} == values
    assert cfg.video == "clip.mp4"


# --------------------------------------------------------------------------------------------------
# stream settings: strictly through the settings object


def infer_stream_settings(path: Path) -> dict:
    """The stream settings of an inference YAML: every key an ``InferConfig`` option, the settings strict."""
    values = settings.load_config(path, known=[f.name for f in fields(InferConfig)])
    return {key: value for key, value in values.items() if key in SETTING_NAMES}


def training_stream_settings(path: Path) -> dict:
    """The stream settings of a training YAML: every key a training argument, the data arguments that are
    settings (under their training names) renamed to settings."""
    import dataclasses

    from transformers import TrainingArguments

    from streaming_vlm.train.args import RENAMED_ARGUMENTS, RETIRED_ARGUMENTS, DataArguments, ModelArguments

    known = {f.name for kind in (ModelArguments, DataArguments, TrainingArguments) for f in dataclasses.fields(kind)}
    values = settings.load_config(path, known=known | set(RETIRED_ARGUMENTS) | set(RENAMED_ARGUMENTS))
    data = {f.name for f in dataclasses.fields(DataArguments)}
    stream = {TRAINING_ALIASES.get(key, key): value for key, value in values.items() if key in data}
    return {key: value for key, value in stream.items() if key in SETTING_NAMES}


@pytest.mark.parametrize("path", INFER_YAMLS, ids=_ids(INFER_YAMLS))
def test_infer_config_settings_load_strictly(path):
    values = infer_stream_settings(path)
    assert values, f"{path}: no stream settings"
    got, sources = settings.resolve({}, config=values)
    assert {key: getattr(got, key) for key in values} == values
    assert {key for key, source in sources.items() if source == "config"} == set(values)


@pytest.mark.parametrize("path", TRAINING_YAMLS, ids=_ids(TRAINING_YAMLS))
def test_training_config_settings_load_strictly(path):
    values = training_stream_settings(path)
    assert {"text_sink", "text_window", "fps", "min_pixels", "max_pixels"} <= set(values), path
    got, _ = settings.resolve({}, config=values)
    assert {key: getattr(got, key) for key in values} == values


@pytest.mark.parametrize("path", [p for p in TRAINING_YAMLS if p.name.startswith("demo")],
                         ids=_ids([p for p in TRAINING_YAMLS if p.name.startswith("demo")]))
def test_demo_training_configs_train_what_the_demo_checkpoint_streams_with(path):
    trained = training_stream_settings(path)
    shipped = settings.from_checkpoint(DEMO_CHECKPOINT.parent)
    shared = set(trained) & set(shipped)
    assert {"text_sink", "text_window", "min_pixels", "max_pixels", "fps"} <= shared
    assert {key: trained[key] for key in shared} == {key: shipped[key] for key in shared}


def test_the_shipped_checkpoint_settings_are_found():
    assert DEMO_CHECKPOINT in CHECKPOINT_JSONS


@pytest.mark.parametrize("path", CHECKPOINT_JSONS, ids=[str(p.relative_to(REPO)) for p in CHECKPOINT_JSONS])
def test_shipped_checkpoint_settings_load_strictly(path):
    values = settings.from_checkpoint(path.parent)
    assert values == json.loads(path.read_text(encoding="utf-8"))
    got, sources = settings.resolve({}, checkpoint=values)
    assert {key: getattr(got, key) for key in values} == values
    assert {key for key, source in sources.items() if source == "checkpoint"} == set(values)


def test_the_demo_writes_checkpoint_settings_that_load_strictly(tmp_path):
    from streaming_vlm.world.demo import demo_stream_defaults

    values = demo_stream_defaults()
    (tmp_path / CHECKPOINT_FILE).write_text(json.dumps(values), encoding="utf-8")
    assert settings.from_checkpoint(tmp_path) == values
    got, _ = settings.resolve({}, checkpoint=values)
    assert {key: getattr(got, key) for key in values} == values
    assert values == json.loads(DEMO_CHECKPOINT.read_text(encoding="utf-8"))  # the shipped one is what it writes


def test_the_demo_checkpoint_record_is_the_demos_settings():
    from streaming_vlm.world.demo import DEMO_LEFT_TO_THE_RUN, demo_settings, demo_stream_defaults

    got, sources = settings.resolve({}, checkpoint=demo_stream_defaults())
    assert got == demo_settings()  # what the json leaves out is the default
    assert {key for key, source in sources.items() if source == "default"} >= set(DEMO_LEFT_TO_THE_RUN)


def _with_unknown_key(source: Path, target: Path) -> Path:
    target.write_text(source.read_text(encoding="utf-8") + "\nvison_window: 4\n", encoding="utf-8")
    return target


def test_an_unknown_key_fails_in_every_kind(tmp_path):
    with pytest.raises(SettingsError, match="unknown option.s. vison_window"):
        infer_stream_settings(_with_unknown_key(CONFIGS / "infer.yaml", tmp_path / "infer.yaml"))
    with pytest.raises(SettingsError, match="unknown option.s. vison_window"):
        training_stream_settings(_with_unknown_key(TRAINING_YAMLS[0], tmp_path / "train.yaml"))
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    values = json.loads(DEMO_CHECKPOINT.read_text(encoding="utf-8")) | {"vison_window": 4}
    (checkpoint / CHECKPOINT_FILE).write_text(json.dumps(values), encoding="utf-8")
    with pytest.raises(SettingsError, match=f"{CHECKPOINT_FILE}: unknown stream setting.s. vison_window"):
        settings.from_checkpoint(checkpoint)
    with pytest.raises(SettingsError, match="config: unknown stream setting.s. vison_window"):
        settings.resolve({}, config={"vison_window": 4})
