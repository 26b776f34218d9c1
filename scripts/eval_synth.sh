#!/usr/bin/env bash
# Long-stream quality on the synthetic world, in the four modes (streaming, full, sliding w/o overlap, recompute):
# event F1 per minute, the running score (never drawn) per stream with the worst stream and its errors by cause,
# empty/garbled chunks, chunk latency and memory.
#   bash scripts/eval_synth.sh [--max-wall-s 1800 --device cuda ...]   # extra arguments go to the command
# Writes the held-out evaluation set when missing (the `heldout` split: seeds no training, validation or test
# stream uses): 20 x 10 min in $DATA/heldout_10min and 3 x 60 min in $DATA/heldout_60min (split indexes 20-22).
# Env (defaults): MODEL (demo), DATA (data/synth_eval), MODES (streaming,full,sliding,recompute),
#   SHORT_STREAMS (20), SHORT_MIN (10), LONG_STREAMS (3), LONG_MIN (60),
#   REPORT (figures/synth_quality.json; the figure goes beside it as .png), OUT (results/synth/<model>: per-chunk
#   records, resumable), MAX_WALL_S (none: a bound in seconds per (mode, stream); full attention on the 60-min
#   streams is the slow one, and where it stops is in the report).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_env.sh  # the project's Python (PYTHON; CHECK_ENV=1 prints it)

MODEL="${MODEL:-demo}"
DATA="${DATA:-data/synth_eval}"
MODES="${MODES:-streaming,full,sliding,recompute}"
REPORT="${REPORT:-figures/synth_quality.json}"
SHORT_STREAMS="${SHORT_STREAMS:-20}"
SHORT="$DATA/heldout_${SHORT_MIN:-10}min"
LONG="$DATA/heldout_${LONG_MIN:-60}min"

[ -f "$SHORT/heldout.jsonl" ] || "$PYTHON" -m streaming_vlm synth "$SHORT" --split heldout \
    --streams "$SHORT_STREAMS" --minutes "${SHORT_MIN:-10}"
[ -f "$LONG/heldout.jsonl" ] || "$PYTHON" -m streaming_vlm synth "$LONG" --split heldout \
    --streams "${LONG_STREAMS:-3}" --minutes "${LONG_MIN:-60}" --first "$SHORT_STREAMS"

exec "$PYTHON" -m streaming_vlm eval synth --data "$SHORT" "$LONG" --split heldout --model "$MODEL" \
    --modes "$MODES" --report "$REPORT" ${OUT:+--out "$OUT"} ${MAX_WALL_S:+--max-wall-s "$MAX_WALL_S"} "$@"
