#!/usr/bin/env bash
# Efficiency test (paper Fig.: latency per token vs processed video length) of the four modes:
# (a) full attention, (b) sliding window w/o overlap, (c) sliding window w/ overlap, (d) StreamingVLM.
#   VIDEO=/data/match.mp4 bash scripts/eval_efficiency.sh [--modes streaming,full --reset-every 100 ...]
# Env (defaults): VIDEO (required), MODEL (mit-han-lab/StreamingVLM), DURATION (1000 s, as in the paper),
#   OUT (results/efficiency.json), FIGURE (figures/efficiency.png). Extra arguments go to the command.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL="${MODEL:-mit-han-lab/StreamingVLM}"
DURATION="${DURATION:-1000}"
OUT="${OUT:-results/efficiency.json}"
FIGURE="${FIGURE:-figures/efficiency.png}"
if [[ -z "${VIDEO:-}" ]]; then
    echo "eval_efficiency.sh: error: set VIDEO to the video to stream, e.g. VIDEO=/data/match.mp4" >&2
    exit 2
fi
if [[ ! -f "$VIDEO" ]]; then
    echo "eval_efficiency.sh: error: VIDEO not found: $VIDEO" >&2
    exit 2
fi
source scripts/_env.sh  # the project's Python (PYTHON; CHECK_ENV=1 prints it)

exec streaming-vlm eval efficiency --model "$MODEL" --video "$VIDEO" --duration "$DURATION" \
    --out "$OUT" --figure "$FIGURE" "$@"
