#!/usr/bin/env bash
# Long-stream quality on the synthetic world, in the four modes (streaming, full, sliding w/o overlap, recompute):
# event F1 per minute, the running score (never drawn), empty/garbled chunks, chunk latency and memory.
#   bash scripts/eval_synth.sh [--max-wall-s 1800 --device cuda ...]   # extra arguments go to the command
# Writes the held-out test streams when missing: 3 x 10 min in $DATA/test_10min and 1 x 60 min in $DATA/test_60min
# (two folders: both start at the test split's first seed, so their video names would clash in one).
# Env (defaults): MODEL (demo), DATA (data/synth_eval), MODES (streaming,full,sliding,recompute),
#   SHORT_STREAMS (3), SHORT_MIN (10), LONG_STREAMS (1), LONG_MIN (60),
#   REPORT (figures/synth_quality.json; the figure goes beside it as .png), OUT (results/synth/<model>: per-chunk
#   records, resumable), MAX_WALL_S (none: a bound in seconds per (mode, stream); full attention on the 60-min
#   stream is the slow one, and where it stops is in the report).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_env.sh  # the project's Python (PYTHON; CHECK_ENV=1 prints it)

MODEL="${MODEL:-demo}"
DATA="${DATA:-data/synth_eval}"
MODES="${MODES:-streaming,full,sliding,recompute}"
REPORT="${REPORT:-figures/synth_quality.json}"
SHORT="$DATA/test_${SHORT_MIN:-10}min"
LONG="$DATA/test_${LONG_MIN:-60}min"

[ -f "$SHORT/test.jsonl" ] ||
    "$PYTHON" -m streaming_vlm synth "$SHORT" --split test --streams "${SHORT_STREAMS:-3}" --minutes "${SHORT_MIN:-10}"
[ -f "$LONG/test.jsonl" ] ||
    "$PYTHON" -m streaming_vlm synth "$LONG" --split test --streams "${LONG_STREAMS:-1}" --minutes "${LONG_MIN:-60}"

exec "$PYTHON" -m streaming_vlm eval synth --data "$SHORT" "$LONG" --model "$MODEL" --modes "$MODES" \
    --report "$REPORT" ${OUT:+--out "$OUT"} ${MAX_WALL_S:+--max-wall-s "$MAX_WALL_S"} "$@"
