#!/usr/bin/env bash
# OVO-Bench: per-task accuracy and the three category means, answered offline (the reference protocol) or
# while streaming. Data: $EVAL_DATASET_PATH/ovobench (or DATA_DIR) holding ovo_bench_new.json and the videos.
#   EVAL_DATASET_PATH=/data/eval bash scripts/eval_OVOBench.sh [--answer-mode streaming --tasks REC,SSR ...]
#   NPROC=8 EVAL_DATASET_PATH=/data/eval bash scripts/eval_OVOBench.sh     # one process per GPU (torchrun)
# Env (defaults): DATA_DIR ($EVAL_DATASET_PATH/ovobench), MODEL (mit-han-lab/StreamingVLM),
#   ANSWER_MODE (offline), NPROC (1), OUT (results/ovobench/<model>-<mode>). Extra arguments go to the command.
# Stream settings: the checkpoint's streaming_vlm.json, else the defaults; a flag overrides either (e.g.
# --max-pixels 200704, --vision-window 16, --config FILE.yaml); results.json records each and its source.
# A rerun with the same OUT resumes: finished items are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${DATA_DIR:-}" ]]; then
    if [[ -z "${EVAL_DATASET_PATH:-}" ]]; then
        echo "eval_OVOBench.sh: error: set EVAL_DATASET_PATH (data in \$EVAL_DATASET_PATH/ovobench) or DATA_DIR" >&2
        exit 2
    fi
    DATA_DIR="$EVAL_DATASET_PATH/ovobench"
fi
source scripts/_env.sh  # the project's Python (PYTHON; CHECK_ENV=1 prints it)
MODEL="${MODEL:-mit-han-lab/StreamingVLM}"
ANSWER_MODE="${ANSWER_MODE:-offline}"
NPROC="${NPROC:-1}"
ARGS=(--model "$MODEL" --data-dir "$DATA_DIR" --answer-mode "$ANSWER_MODE")
if [[ -n "${OUT:-}" ]]; then
    ARGS+=(--out "$OUT")
fi

if [[ "$NPROC" -gt 1 ]]; then
    exec torchrun --standalone --nproc_per_node "$NPROC" -m streaming_vlm eval ovobench "${ARGS[@]}" "$@"
fi
exec streaming-vlm eval ovobench "${ARGS[@]}" "$@"
