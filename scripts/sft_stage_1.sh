#!/usr/bin/env bash
# SFT stage 1 (Qwen2.5-VL-7B-Instruct -> StreamingVLM); hyper-parameters live in configs/sft_stage1.yaml.
#   DATASET_PATH=/data/Inf-Stream-Train bash scripts/sft_stage_1.sh [--key value ...]   # e.g. --max_steps 10
# Env (defaults): DATASET_PATH (data/Inf-Stream-Train), MODEL (Qwen/Qwen2.5-VL-7B-Instruct),
#   OUTPUT_DIR (checkpoints/sft_stage1), NPROC (number of GPUs, 1 without), WANDB_PROJECT.
# Re-running resumes from the newest complete checkpoint in OUTPUT_DIR. W&B logs offline unless
# WANDB_API_KEY is set in your environment (never write it here); WANDB_MODE overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_env.sh  # the project's Python (PYTHON; CHECK_ENV=1 prints it)

export DATASET_PATH="${DATASET_PATH:-data/Inf-Stream-Train}"
export WANDB_PROJECT="${WANDB_PROJECT:-StreamingVLM_SFT_stage_1}"
export TOKENIZERS_PARALLELISM=false
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
export TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC="${TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC:-1800}"
MODEL="${MODEL:-Qwen/Qwen2.5-VL-7B-Instruct}"
OUTPUT_DIR="${OUTPUT_DIR:-checkpoints/sft_stage1}"
NPROC="${NPROC:-$("$PYTHON" -c 'import torch; print(max(torch.cuda.device_count(), 1))')}"

exec torchrun --standalone --nproc_per_node="$NPROC" -m streaming_vlm.train --config configs/sft_stage1.yaml \
  --pretrained_model_name_or_path "$MODEL" --output_dir "$OUTPUT_DIR" "$@"
