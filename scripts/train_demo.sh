#!/usr/bin/env bash
# Train the demo model from scratch on the synthetic world (about 26 min on 2 CPU cores):
#   bash scripts/train_demo.sh            # then: streaming-vlm infer demo --model checkpoints/demo_stage2
# Env (defaults): DATA (data/world), CKPT (checkpoints), SHIP=1 copies the result into the package
# (streaming_vlm/assets/demo_model, the default model of `streaming-vlm infer`).
# Each step is skipped when its output exists (a finished stage: train_results.json); a stage cut short
# resumes from its newest checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_env.sh  # the project's Python (PYTHON; CHECK_ENV=1 prints it)

DATA="${DATA:-data/world}"
CKPT="${CKPT:-checkpoints}"
export DATASET_PATH="$DATA"
export TOKENIZERS_PARALLELISM=false

[ -f "$DATA/stage2_windows_seeks.jsonl" ] || "$PYTHON" -m streaming_vlm synth "$DATA" --training-set --minutes 6
[ -f "$CKPT/demo_init/model.safetensors" ] || "$PYTHON" -c \
  "from streaming_vlm.world.demo import build_demo_init; build_demo_init('$CKPT/demo_init')"

# bf16 mixed precision runs as CPU autocast when there is no GPU
DEVICE=()
"$PYTHON" -c "import torch, sys; sys.exit(torch.cuda.is_available())" && DEVICE=(--use_cpu true)

SECONDS=0
[ -f "$CKPT/demo_stage1/train_results.json" ] || "$PYTHON" -m streaming_vlm.train --config configs/demo_stage1.yaml \
  "${DEVICE[@]}" --pretrained_model_name_or_path "$CKPT/demo_init" --output_dir "$CKPT/demo_stage1" "$@"
[ -f "$CKPT/demo_stage2/train_results.json" ] || "$PYTHON" -m streaming_vlm.train --config configs/demo_stage2.yaml \
  "${DEVICE[@]}" --pretrained_model_name_or_path "$CKPT/demo_stage1" --output_dir "$CKPT/demo_stage2" "$@"
echo "trained both stages in $((SECONDS / 60)) min $((SECONDS % 60)) s"

if [ "${SHIP:-0}" = 1 ]; then
  "$PYTHON" -m streaming_vlm.world.ship "$CKPT/demo_stage2" streaming_vlm/assets/demo_model
fi
