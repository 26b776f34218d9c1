#!/usr/bin/env bash
# Inf-Streams-Eval: our commentary on long videos vs an OpenAI-compatible baseline, judged pairwise by an LLM.
#   EVAL_DATASET_PATH=/data/inf_streams_eval OPENAI_API_KEY=... bash scripts/eval_Inf-Stream-Eval.sh [PHASE ...]
# PHASE: generate, baseline, score (default: all three, in this order). Every phase resumes where it stopped.
# Env (defaults): EVAL_DATASET_PATH (required: eval_all_metadata.jsonl, score_all_clips.jsonl, videos),
#   MODEL (mit-han-lab/StreamingVLM), NGPUS (all visible GPUs), START_OFFSET (1000 s),
#   BASELINE_MODEL (gpt-4o-mini), BASELINE_URL (the client's default), BASELINE_FPS (2, as our model sees),
#   JUDGE_MODEL (gpt-4o), JUDGE_URL (the client's default), API_PROCS (8 parallel API workers),
#   RESULTS (results/inf_stream); GENERATE_ARGS / BASELINE_ARGS / SCORE_ARGS: extra flags for one phase.
# The API key is read from OPENAI_API_KEY (see `streaming-vlm eval inf-stream PHASE --help`). Stream settings of
# generate: the checkpoint's streaming_vlm.json, else the defaults; a flag in GENERATE_ARGS wins.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${EVAL_DATASET_PATH:-}" ]]; then
    echo "eval_Inf-Stream-Eval.sh: error: set EVAL_DATASET_PATH to the Inf-Streams-Eval folder" >&2
    exit 2
fi
export EVAL_DATASET_PATH
source scripts/_env.sh  # the project's Python (PYTHON; CHECK_ENV=1 prints it)
MODEL="${MODEL:-mit-han-lab/StreamingVLM}"
NGPUS="${NGPUS:-$("$PYTHON" -c 'import torch; print(max(torch.cuda.device_count(), 1))')}"
START_OFFSET="${START_OFFSET:-1000}"
BASELINE_MODEL="${BASELINE_MODEL:-gpt-4o-mini}"
BASELINE_FPS="${BASELINE_FPS:-2}"
JUDGE_MODEL="${JUDGE_MODEL:-gpt-4o}"
API_PROCS="${API_PROCS:-8}"
RESULTS="${RESULTS:-results/inf_stream}"
OURS="$RESULTS/answers/${MODEL//\//_}"
BASE="$RESULTS/answers/${BASELINE_MODEL//\//_}"
PHASES=("$@")
[[ ${#PHASES[@]} -gt 0 ]] || PHASES=(generate baseline score)
for phase in "${PHASES[@]}"; do
    if [[ ! "$phase" =~ ^(generate|baseline|score)$ ]]; then
        echo "eval_Inf-Stream-Eval.sh: error: unknown phase '$phase' (generate, baseline, score)" >&2
        exit 2
    fi
done

launch() {  # launch NPROC PHASE ARGS...: one process per GPU (or API worker), items sharded by rank
    local nproc="$1"; shift
    torchrun --standalone --nproc_per_node "$nproc" -m streaming_vlm.eval.inf_stream "$@"
}

for phase in "${PHASES[@]}"; do
    case "$phase" in
        generate)
            # shellcheck disable=SC2086
            launch "$NGPUS" generate --model "$MODEL" --out "$OURS" --start-offset "$START_OFFSET" ${GENERATE_ARGS:-} ;;
        baseline)
            # shellcheck disable=SC2086
            launch "$API_PROCS" baseline --model "$BASELINE_MODEL" ${BASELINE_URL:+--base-url "$BASELINE_URL"} \
                --fps "$BASELINE_FPS" --out "$BASE" --start-offset "$START_OFFSET" ${BASELINE_ARGS:-} ;;
        score)
            # shellcheck disable=SC2086
            launch "$API_PROCS" score --a "$OURS" --b "$BASE" --label-a "${MODEL//\//_}" \
                --label-b "${BASELINE_MODEL//\//_}" --judge-model "$JUDGE_MODEL" ${JUDGE_URL:+--judge-base-url "$JUDGE_URL"} \
                --out "$RESULTS/scores/${MODEL//\//_}_VS_${BASELINE_MODEL//\//_}" ${SCORE_ARGS:-} ;;
    esac
done
