# Sourced by the training and evaluation scripts (from the repository root) to find the project's Python, so
# that they work without activating anything. Picks $PYTHON if set, else the active virtual environment
# ($VIRTUAL_ENV), else the repository's .venv, else python3; exports it as PYTHON and puts its environment's
# console scripts (torchrun, streaming-vlm) first on PATH, as activating it would. If it cannot import torch and
# streaming_vlm the script stops with one line saying how to fix it (exit 2).
# CHECK_ENV=1 prints the chosen Python and exits 0 (scripts source this after checking their own settings,
# before running anything).
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -n "${VIRTUAL_ENV:-}" ]]; then
    PYTHON="$VIRTUAL_ENV/bin/python"
  elif [[ -x .venv/bin/python ]]; then
    PYTHON="$PWD/.venv/bin/python"
  else
    PYTHON=python3
  fi
fi
[[ "$PYTHON" == */* ]] || PYTHON="$(command -v "$PYTHON" || echo "$PYTHON")"
if ! _env_bin="$("$PYTHON" -c 'import sysconfig, torch, streaming_vlm; print(sysconfig.get_path("scripts"))' \
  2>/dev/null)"; then
  echo "$(basename "$0"): error: $PYTHON cannot import torch and streaming_vlm: run 'bash scripts/setup.sh'" \
    "(installs into .venv), or activate the environment that has them, or set PYTHON" >&2
  exit 2
fi
export PYTHON PATH="$_env_bin:$PATH"
unset _env_bin
if [[ "${CHECK_ENV:-0}" == 1 ]]; then
  echo "$PYTHON"
  exit 0
fi
