#!/usr/bin/env bash
# The demo recipe's robustness check: train it from several seeds, stream each run's demo model over the held-out
# set (streaming mode, greedy) and print one row per seed with the targets of issue 17:
#   SEEDS="2 3 4" bash scripts/train_demo_seeds.sh     # per seed on 2 CPU cores: 24-34 min training (see
#                                                        train_demo.sh), ~10 min held out
# Each seed runs scripts/train_demo.sh (CKPT=$ROOT/seed<N>, so a finished stage is skipped and an interrupted one
# resumes), then `streaming-vlm eval synth` over $HELDOUT/heldout_10min and heldout_60min in one report
# ($ROOT/seed<N>/heldout.json; per-chunk records in $ROOT/seed<N>/heldout/, resumable), then
# `python -m streaming_vlm.world.seeds` prints the table from every seed's report.
# Extra arguments go to every training stage of every seed. Env (defaults): SEEDS (2 3 4), DATA (data/world: the
#   training set, written when missing), HELDOUT (data/synth_eval: the held-out set scripts/eval_synth.sh writes,
#   written here the same way when missing), ROOT (checkpoints/seeds).
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS="${SEEDS:-2 3 4}"
[[ -n "${SEEDS// /}" ]] || { echo "train_demo_seeds.sh: error: SEEDS is empty" >&2; exit 2; }
for seed in $SEEDS; do
  [[ "$seed" =~ ^[0-9]+$ ]] || { echo "train_demo_seeds.sh: error: SEEDS: '$seed' is not a seed" >&2; exit 2; }
done
source scripts/_env.sh  # the project's Python (PYTHON; CHECK_ENV=1 prints it)

DATA="${DATA:-data/world}"
HELDOUT="${HELDOUT:-data/synth_eval}"
ROOT="${ROOT:-checkpoints/seeds}"

[ -f "$HELDOUT/heldout_10min/heldout.jsonl" ] || "$PYTHON" -m streaming_vlm synth "$HELDOUT/heldout_10min" \
    --split heldout --streams 20 --minutes 10
[ -f "$HELDOUT/heldout_60min/heldout.jsonl" ] || "$PYTHON" -m streaming_vlm synth "$HELDOUT/heldout_60min" \
    --split heldout --streams 3 --minutes 60 --first 20

REPORTS=()
for seed in $SEEDS; do
  run="$ROOT/seed$seed"
  SECONDS=0
  DATA="$DATA" CKPT="$run" SEED="$seed" SHIP=0 bash scripts/train_demo.sh "$@"
  echo "seed $seed: trained in $((SECONDS / 60)) min $((SECONDS % 60)) s"
  [ -f "$run/heldout.json" ] || "$PYTHON" -m streaming_vlm eval synth --split heldout --modes streaming \
      --data "$HELDOUT/heldout_10min" "$HELDOUT/heldout_60min" --model "$run/demo_best" \
      --report "$run/heldout.json" --figure '' --out "$run/heldout" --quiet
  REPORTS+=("$run/heldout.json")
done
"$PYTHON" -m streaming_vlm.world.seeds "${REPORTS[@]}"
