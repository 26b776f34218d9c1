#!/usr/bin/env bash
# VQA benchmarks of the paper: Video-MME (1 fps), MVBench (64 frames), LongVideoBench (1 fps), answered at the end
# of a stream (streaming: the StreamingVLM cache) and with nothing evicted (offline), with VLMEvalKit and/or
# lmms-eval. The model adapters are streaming_vlm/eval/{vlmevalkit,lmms_eval_plugin}.py; see docs/eval_vqa.md.
#   VLMEVALKIT_ROOT=~/VLMEvalKit LMUData=~/LMUData bash scripts/eval_VQA.sh
#   TOOLKIT=lmms-eval HF_HOME=/data/hf bash scripts/eval_VQA.sh
# Env (defaults): TOOLKIT (vlmevalkit; or lmms-eval, both), MODEL (mit-han-lab/StreamingVLM),
#   MODES ("streaming offline"), NPROC (the visible GPUs, else 1), WORK_DIR (results/vqa), PYTHON (scripts/_env.sh),
#   OFFLINE_MAX_FRAMES (256: offline keeps every frame, so long videos are sampled at most this densely).
#   VLMEvalKit: VLMEVALKIT_ROOT (the checkout with run.py, installed with pip install -e), LMUData (its data folder),
#   VLMEVAL_DATASETS ("Video-MME_1fps MVBench_64frame LongVideoBench_1fps").
#   lmms-eval: HF_HOME (where its datasets are cached), LMMS_TASKS ("videomme:fps=1 mvbench:nframe=64
#   longvideobench_val_v:fps=1", task:sampling).
#   SETTINGS: stream settings over the checkpoint's streaming_vlm.json (which gives the others), for both toolkits,
#   e.g. "max_pixels=200704,vision_window=16" (values without commas or spaces; default: none).
# Extra arguments go to every run.py / lmms-eval command.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLKIT="${TOOLKIT:-vlmevalkit}"
MODEL="${MODEL:-mit-han-lab/StreamingVLM}"
MODES="${MODES:-streaming offline}"
WORK_DIR="${WORK_DIR:-results/vqa}"
OFFLINE_MAX_FRAMES="${OFFLINE_MAX_FRAMES:-256}"
VLMEVAL_DATASETS="${VLMEVAL_DATASETS:-Video-MME_1fps MVBench_64frame LongVideoBench_1fps}"
LMMS_TASKS="${LMMS_TASKS:-videomme:fps=1 mvbench:nframe=64 longvideobench_val_v:fps=1}"

fail() {
    echo "eval_VQA.sh: error: $*" >&2
    exit 2
}

case "$TOOLKIT" in
    vlmevalkit | lmms-eval | both) ;;
    *) fail "TOOLKIT must be vlmevalkit, lmms-eval or both, got '$TOOLKIT'" ;;
esac
for mode in $MODES; do
    [[ "$mode" == streaming || "$mode" == offline ]] || fail "MODES are streaming and offline, got '$mode'"
done
SETTINGS="${SETTINGS:-}"
setting_flags=()  # the launcher's flags for SETTINGS: max_pixels=200704 -> --max-pixels 200704
for kv in ${SETTINGS//,/ }; do
    [[ "$kv" =~ ^[a-z_]+=.+$ ]] || fail "SETTINGS is name=value[,name=value...], got '$kv'"
    key="${kv%%=*}"
    setting_flags+=("--${key//_/-}" "${kv#*=}")
done
source scripts/_env.sh  # the project's Python (PYTHON; CHECK_ENV=1 prints it)
if [[ "$TOOLKIT" != lmms-eval ]]; then
    [[ -n "${VLMEVALKIT_ROOT:-}" ]] || fail "set VLMEVALKIT_ROOT to a VLMEvalKit checkout (the folder with run.py)"
    [[ -f "$VLMEVALKIT_ROOT/run.py" ]] || fail "no run.py in VLMEVALKIT_ROOT=$VLMEVALKIT_ROOT"
    "$PYTHON" -c "import vlmeval" 2>/dev/null || fail "VLMEvalKit is not importable: pip install -e $VLMEVALKIT_ROOT"
    [[ -n "${LMUData:-}" ]] || fail "set LMUData to VLMEvalKit's data folder (the datasets are prepared there)"
fi
if [[ "$TOOLKIT" != vlmevalkit ]]; then
    "$PYTHON" -c "import lmms_eval" 2>/dev/null || fail "lmms-eval is not importable: pip install lmms-eval"
    [[ -n "${HF_HOME:-}" ]] || fail "set HF_HOME to the Hugging Face cache that holds (or will hold) the lmms-eval datasets"
fi

if [[ -z "${NPROC:-}" ]]; then
    NPROC="$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)"
    [[ "$NPROC" -ge 1 ]] || NPROC=1
fi
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
launch=("$PYTHON" -m torch.distributed.run --nproc-per-node="$NPROC")

if [[ "$TOOLKIT" != lmms-eval ]]; then
    for mode in $MODES; do
        name=StreamingVLM
        [[ "$mode" == offline ]] && name=StreamingVLM-offline
        for data in $VLMEVAL_DATASETS; do
            "${launch[@]}" -m streaming_vlm.eval.vlmevalkit --vlmevalkit-root "$VLMEVALKIT_ROOT" \
                --model-path "$MODEL" --offline-max-frames "$OFFLINE_MAX_FRAMES" \
                ${setting_flags[@]+"${setting_flags[@]}"} -- \
                --data "$data" --model "$name" --work-dir "$WORK_DIR/vlmevalkit" --judge exact_matching \
                --reuse --verbose "$@"
        done
    done
fi

if [[ "$TOOLKIT" != vlmevalkit ]]; then
    for mode in $MODES; do
        extra="${SETTINGS:+,$SETTINGS}"
        [[ "$mode" == offline ]] && extra+=",max_frames=$OFFLINE_MAX_FRAMES"
        for spec in $LMMS_TASKS; do
            task="${spec%%:*}"
            sampling="${spec#*:}"
            "${launch[@]}" -m streaming_vlm.eval.lmms_eval_plugin --model streaming_vlm \
                --model_args "pretrained=$MODEL,answer_mode=$mode,$sampling$extra" --tasks "$task" --batch_size 1 \
                --output_path "$WORK_DIR/lmms-eval/$mode" --log_samples "$@"
        done
    done
fi
