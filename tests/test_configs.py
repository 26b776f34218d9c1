"""Every YAML under ``configs/`` loads and says how to launch it; inference configs match ``InferConfig``.

Training and evaluation configs will sit beside the inference ones: for those only the YAML itself and the
leading comment are checked here (their own tests check their keys).
"""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from streaming_vlm.cli import build_parser
from streaming_vlm.infer import InferConfig, config_from_args

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
YAMLS = sorted(p for p in CONFIGS.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
INFER_YAMLS = [p for p in YAMLS if p.name.startswith("infer")]
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
