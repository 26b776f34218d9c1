"""The shell scripts find the project's Python without an activated environment (scripts/_env.sh).

Each test runs a copy of ``scripts/`` in a temporary repository whose ``.venv`` (and other environments) hold
small stand-in executables, with a PATH whose ``python``/``python3`` cannot import torch, as on a machine where
the virtual environment is not activated. One test runs the real check with this interpreter.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# every script that launches the project's Python, with the settings it needs to get as far as that
SCRIPTS = {
    "sft_stage_1.sh": {},
    "sft_stage_2.sh": {},
    "train_demo.sh": {},
    "train_demo_seeds.sh": {},
    "eval_synth.sh": {},
    "eval_efficiency.sh": {"VIDEO": "scripts/_env.sh"},  # any existing file
    "eval_Inf-Stream-Eval.sh": {"EVAL_DATASET_PATH": "/nonexistent"},
    "eval_LiveSports3k-cc.sh": {"LIVESPORTS3K_PATH": "/nonexistent", "BASELINE": "captions.jsonl"},
    "eval_OVOBench.sh": {"DATA_DIR": "/nonexistent"},
    "eval_VQA.sh": {},
}


def executable(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def environment(bin_dir: Path, works: bool = True) -> Path:
    """A stand-in environment: ``python`` answers the import check with its own folder as the console-script
    folder (or fails like a Python without torch), ``torchrun`` records how it was called."""
    if works:
        executable(bin_dir / "python", 'echo "$(dirname "$0")"')
    else:
        executable(bin_dir / "python", "echo \"ModuleNotFoundError: No module named 'torch'\" >&2; exit 1")
    executable(bin_dir / "torchrun", 'echo "$*" > "$(dirname "$0")/torchrun.args"')
    return bin_dir / "python"


@pytest.fixture
def repo(tmp_path) -> Path:
    """A repository copy with its scripts and a PATH folder whose python and python3 lack torch."""
    root = tmp_path / "repo"
    shutil.copytree(REPO / "scripts", root / "scripts")
    (root / "configs").mkdir()
    for name in ("python", "python3"):
        executable(tmp_path / "system" / name, "echo \"ModuleNotFoundError: No module named 'torch'\" >&2; exit 1")
    return root


def run(repo: Path, script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    base = {"PATH": f"{repo.parent / 'system'}:/usr/bin:/bin", "HOME": str(repo.parent)}  # no VIRTUAL_ENV
    return subprocess.run(["bash", str(repo / "scripts" / script), *args], cwd=repo.parent, env={**base, **env},
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_scripts_find_the_repository_venv_when_nothing_is_activated(repo, script):
    text = (REPO / "scripts" / script).read_text()
    assert "set -euo pipefail" in text and "source scripts/_env.sh" in text
    venv_python = environment(repo / ".venv" / "bin")
    proc = run(repo, script, CHECK_ENV="1", **SCRIPTS[script])
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"{venv_python}\n", "")


def test_training_launches_the_environments_torchrun(repo):
    environment(repo / ".venv" / "bin")
    proc = run(repo, "sft_stage_1.sh", "--max_steps", "1", NPROC="2")
    assert proc.returncode == 0, proc.stderr
    assert (repo / ".venv" / "bin" / "torchrun.args").read_text().split() == [
        "--standalone", "--nproc_per_node=2", "-m", "streaming_vlm.train", "--config", "configs/sft_stage1.yaml",
        "--pretrained_model_name_or_path", "Qwen/Qwen2.5-VL-7B-Instruct", "--output_dir", "checkpoints/sft_stage1",
        "--max_steps", "1",
    ]


def test_choice_order_python_then_active_venv_then_dot_venv_then_python3(repo, tmp_path):
    explicit = environment(tmp_path / "explicit" / "bin")
    active = environment(tmp_path / "active" / "bin")
    dot_venv = environment(repo / ".venv" / "bin")
    assert run(repo, "sft_stage_1.sh", CHECK_ENV="1").stdout == f"{dot_venv}\n"
    assert run(repo, "sft_stage_1.sh", CHECK_ENV="1", VIRTUAL_ENV=str(tmp_path / "active")).stdout == f"{active}\n"
    assert run(repo, "sft_stage_1.sh", CHECK_ENV="1", VIRTUAL_ENV=str(tmp_path / "active"),
               PYTHON=str(explicit)).stdout == f"{explicit}\n"
    shutil.rmtree(repo / ".venv")
    system = environment(tmp_path / "other" / "bin")
    (system.parent / "python3").symlink_to(system)
    proc = run(repo, "sft_stage_1.sh", CHECK_ENV="1", PATH=f"{system.parent}:/usr/bin:/bin")
    assert proc.stdout == f"{system.parent / 'python3'}\n"


@pytest.mark.parametrize("where", [".venv", "python3", "VIRTUAL_ENV"])
def test_a_python_without_torch_stops_with_one_line(repo, tmp_path, where):
    env = {"CHECK_ENV": "1"}
    if where == ".venv":
        python = environment(repo / ".venv" / "bin", works=False)
    elif where == "VIRTUAL_ENV":
        python = environment(tmp_path / "active" / "bin", works=False)
        env["VIRTUAL_ENV"] = str(tmp_path / "active")
    else:
        python = tmp_path / "system" / "python3"  # nothing else found: python3 on PATH, which lacks torch
    proc = run(repo, "sft_stage_1.sh", **env)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"sft_stage_1.sh: error: {python} cannot import")
    assert "bash scripts/setup.sh" in proc.stderr


def test_the_real_check_accepts_this_interpreter(repo):
    # .venv/bin/python runs this interpreter: the import check really imports torch and streaming_vlm
    python = executable(repo / ".venv" / "bin" / "python", f'exec "{sys.executable}" "$@"')
    proc = run(repo, "sft_stage_1.sh", CHECK_ENV="1", OMP_NUM_THREADS="1")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"{python}\n", "")


def test_train_demo_refuses_unknown_stages_or_select_by_before_anything_runs(repo):
    environment(repo / ".venv" / "bin")
    for stages in ("2", "one"):
        proc = run(repo, "train_demo.sh", STAGES=stages)
        assert (proc.returncode, proc.stdout) == (2, "")
        assert proc.stderr == f"train_demo.sh: error: STAGES={stages}: use 1 or all\n"
    proc = run(repo, "train_demo.sh", SELECT_BY="best")
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == "train_demo.sh: error: SELECT_BY=best: use teacher-forced or streamed\n"
    assert not (repo / "checkpoints").exists() and not (repo / "data").exists()
    for by in ("teacher-forced", "streamed"):
        assert run(repo, "train_demo.sh", SELECT_BY=by, CHECK_ENV="1").returncode == 0
    for repeat in ("x", "-1", "2.5"):
        proc = run(repo, "train_demo.sh", REPAIR_REPEAT=repeat)
        assert (proc.returncode, proc.stdout) == (2, "")
        assert proc.stderr == f"train_demo.sh: error: REPAIR_REPEAT={repeat}: use a whole number >= 0\n"
    assert not (repo / "checkpoints").exists() and not (repo / "data").exists()


def test_train_demo_gives_each_stage_its_own_extra_arguments(repo):
    """STAGE1_ARGS reach stage 1 only and STAGE2_ARGS stage 2 only, after the arguments every stage gets (so they
    win); the stages run as the script names them; the repair stage reads the chosen model's hard calls and trains
    on its config's windows plus those, REPAIR_REPEAT times, from the chosen model; its result is the demo model."""
    bin_dir = repo / ".venv" / "bin"
    executable(bin_dir / "python", 'echo "$*" >> "$(dirname "$0")/calls"; echo "$(dirname "$0")"')
    for made in ("data/world/select.jsonl", "data/world/pool.jsonl", "checkpoints/demo_init/model.safetensors",
                 "checkpoints/demo_chosen/model.safetensors"):  # skip the training set, the init and the choice
        (repo / made).parent.mkdir(parents=True, exist_ok=True)
        (repo / made).write_text("")
    proc = run(repo, "train_demo.sh", "--logging_steps", "5", STAGE1_ARGS="--max_steps 3600  --learning_rate 2e-3",
               STAGE2_ARGS="--warmup_ratio 0.1", REPAIR_REPEAT="3", STAGES="all")
    assert proc.returncode == 0, proc.stderr
    calls = [line.split() for line in (bin_dir / "calls").read_text().splitlines()]
    stages = [call for call in calls if "streaming_vlm.train" in call]
    assert [call[call.index("--config") + 1] for call in stages] == ["configs/demo_stage1.yaml",
                                                                      "configs/demo_stage2.yaml",
                                                                      "configs/demo_repair.yaml"]
    one, two, three = stages
    assert one[one.index("--output_dir") + 2:] == ["--logging_steps", "5", "--max_steps", "3600", "--learning_rate",
                                                   "2e-3"]
    assert two[two.index("--output_dir") + 2:] == ["--logging_steps", "5", "--warmup_ratio", "0.1"]
    assert three[three.index("--pretrained_model_name_or_path") + 1] == "checkpoints/demo_chosen"
    assert three[three.index("--output_dir") + 1] == "checkpoints/demo_repair"
    paths = three[three.index("--train_annotation_paths") + 1:three.index("--logging_steps")]
    # the stand-in prints one line for the config's list; then the hard calls' windows, 3 times, by absolute path
    assert paths[1:] == [str(repo / "checkpoints" / "repair_windows.jsonl")] * 3 and three[-2:] == ["--logging_steps",
                                                                                                   "5"]
    assert ["-m", "streaming_vlm.world.repair", "data/world", "checkpoints/demo_chosen", "--out",
            "checkpoints/repair_windows.jsonl"] in calls
    assert calls[-1] == ["-m", "streaming_vlm.world.ship", "checkpoints/demo_repair", "checkpoints/demo_best"]
    assert not any("synth" in call for call in calls)
    # a training set written before the repair stage (no pool) is written again
    (repo / "data/world/pool.jsonl").unlink()
    (bin_dir / "calls").unlink()
    assert run(repo, "train_demo.sh", STAGES="all").returncode == 0
    synth = "-m streaming_vlm synth data/world --training-set --minutes 6"
    assert (bin_dir / "calls").read_text().splitlines()[1] == synth


def test_train_demo_by_default_trains_stage_1_alone_and_ships_it(repo):
    """The default recipe (STAGES=1): stage 1 with its own arguments, whose result is the demo model; no stage 2,
    choice or repair stage runs (their settings change nothing); SHIP=1 copies it into the package."""
    bin_dir = repo / ".venv" / "bin"
    executable(bin_dir / "python", 'echo "$*" >> "$(dirname "$0")/calls"; echo "$(dirname "$0")"')
    for made in ("data/world/select.jsonl", "data/world/pool.jsonl", "checkpoints/demo_init/model.safetensors"):
        (repo / made).parent.mkdir(parents=True, exist_ok=True)
        (repo / made).write_text("")
    proc = run(repo, "train_demo.sh", "--logging_steps", "5", STAGE1_ARGS="--max_steps 10", STAGE2_ARGS="--x 1",
               SELECT_BY="streamed", SHIP="1")
    assert proc.returncode == 0, proc.stderr
    calls = [line.split() for line in (bin_dir / "calls").read_text().splitlines()]
    calls = [call for call in calls if call[:1] != ["-c"]]  # the import check and the device probe
    assert [call[:4] for call in calls] == [["-m", "streaming_vlm.train", "--config", "configs/demo_stage1.yaml"],
                                            ["-m", "streaming_vlm.world.ship", "checkpoints/demo_stage1",
                                             "checkpoints/demo_best"],
                                            ["-m", "streaming_vlm.world.ship", "checkpoints/demo_best",
                                             "streaming_vlm/assets/demo_model"]]
    assert calls[0][calls[0].index("--output_dir") + 1:] == ["checkpoints/demo_stage1", "--logging_steps", "5",
                                                             "--max_steps", "10"]
    assert "trained stage 1 in " in proc.stdout


def test_train_demo_seeds_refuses_a_bad_seed_before_anything_runs(repo):
    environment(repo / ".venv" / "bin")
    proc = run(repo, "train_demo_seeds.sh", SEEDS="2 x3")
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == "train_demo_seeds.sh: error: SEEDS: 'x3' is not a seed\n"
    assert run(repo, "train_demo_seeds.sh", SEEDS=" ").stderr == "train_demo_seeds.sh: error: SEEDS is empty\n"
    assert not (repo / "checkpoints").exists() and not (repo / "data").exists()
