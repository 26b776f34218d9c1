#!/usr/bin/env bash
# Install streaming-vlm with its test tools on a fresh machine (Python >= 3.10; no GPU or model hub needed).
#   bash scripts/setup.sh            # into the active virtual environment, else into ./.venv
#   EXTRAS=dev bash scripts/setup.sh          # without the training, evaluation and server extras
# torch goes in first so nothing later pulls a CUDA build: a working torch already installed (e.g. a GPU
# build) is kept; otherwise torch==$TORCH_VERSION is installed. Later installs are constrained to it.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${EXTRAS:-dev,train,eval,serve}"
export DS_BUILD_OPS="${DS_BUILD_OPS:-0}"  # DeepSpeed compiles the ops it needs on first use
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"

if [ -n "${VIRTUAL_ENV:-}" ]; then
  PY="$VIRTUAL_ENV/bin/python"
else
  [ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
  PY=.venv/bin/python
fi
pip() { "$PY" -m pip --disable-pip-version-check -q "$@"; }

pip install --upgrade pip
"$PY" -c "import torch" 2>/dev/null || pip install "torch==$TORCH_VERSION"
installed_torch=$("$PY" -c "import torch; print(torch.__version__.split('+')[0])")
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "torch==$installed_torch" >"$constraints"
pip install -c "$constraints" -e ".[$EXTRAS]"

# Tests compare our preprocessing with transformers' video processor, which needs torchvision. Where no
# working torchvision exists (CPU-only torch), a matching build goes *beside* the environment: importable
# there, it would break `import transformers` models. Only the reference test's child process loads it.
if [[ ",$EXTRAS," == *",dev,"* ]] && ! "$PY" -c "import torchvision" 2>/dev/null; then
  minor=$(echo "$installed_torch" | cut -d. -f2)
  target=$("$PY" -c "import sys; print(sys.prefix)")/hf-reference-torchvision
  pip install --no-deps --target "$target" "torchvision==0.$((minor + 15)).*" \
    || echo "setup: no torchvision for torch $installed_torch; the HF-processor reference test will skip" >&2
fi
# The serve page's browser test drives Debian's Chromium (Playwright's own browser download is blocked here).
if [[ ",$EXTRAS," == *",dev,"* ]] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
      || echo "setup: could not install chromium; tests/test_serve_page.py will fail" >&2
  else
    echo "setup: tests/test_serve_page.py needs Chromium: sudo apt-get install -y chromium (Debian)" >&2
  fi
fi
"$PY" -m streaming_vlm --help >/dev/null
echo "setup: streaming-vlm installed into $("$PY" -c 'import sys; print(sys.prefix)') (torch $installed_torch)"
