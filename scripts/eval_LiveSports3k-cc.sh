#!/usr/bin/env bash
# LiveSports-3K-CC (LiveCC's closed-caption track): streaming commentary per event, then LiveCC's pairwise judge
# against a baseline's captions (both orders, win rate over 2N). Data-parallel over the GPUs with torchrun.
#   LIVESPORTS3K_PATH=/data/LiveSports-3K BASELINE=captions/GPT-4o.jsonl OPENAI_API_KEY=... \
#       bash scripts/eval_LiveSports3k-cc.sh [--limit 50 --judge-base-url http://localhost:8000/v1 ...]
# Env (defaults): LIVESPORTS3K_PATH (required: a local copy of stdKonjac/LiveSports-3K with videos/ extracted),
#   BASELINE (required: LiveCC-format captions), MODEL (mit-han-lab/StreamingVLM), NPROC (GPUs visible, else 1),
#   OUT (results/livesports3k), JUDGE_MODEL (gpt-4o-2024-08-06, LiveCC's judge). Extra arguments go to the command.
# Stream settings: the checkpoint's streaming_vlm.json, else the defaults; a flag among the extra arguments wins.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${LIVESPORTS3K_PATH:-}" ]]; then
    echo "eval_LiveSports3k-cc.sh: error: set LIVESPORTS3K_PATH to a local copy of stdKonjac/LiveSports-3K" \
        "(see docs/eval_livesports.md)" >&2
    exit 2
fi
if [[ -z "${BASELINE:-}" ]]; then
    echo "eval_LiveSports3k-cc.sh: error: set BASELINE to the baseline's captions (LiveCC JSONL)," \
        "e.g. BASELINE=captions/GPT-4o.jsonl" >&2
    exit 2
fi
source scripts/_env.sh  # the project's Python (PYTHON; CHECK_ENV=1 prints it)
MODEL="${MODEL:-mit-han-lab/StreamingVLM}"
OUT="${OUT:-results/livesports3k}"
JUDGE_MODEL="${JUDGE_MODEL:-gpt-4o-2024-08-06}"
NPROC="${NPROC:-$( (nvidia-smi -L 2>/dev/null || true) | grep -c "^GPU" || true)}"
NPROC="$(( NPROC > 0 ? NPROC : 1 ))"

# Generation on every GPU (events sharded by rank), then judging in one process; both phases resume.
torchrun --standalone --nproc-per-node "$NPROC" -m streaming_vlm.eval.livesports --phase generate \
    --model "$MODEL" --output-dir "$OUT" "$@"
exec streaming-vlm eval livesports --phase judge --model "$MODEL" --output-dir "$OUT" \
    --baseline "$BASELINE" --judge-model "$JUDGE_MODEL" "$@"
