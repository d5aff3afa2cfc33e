#!/usr/bin/env bash
# Fits the shipped guard's score calibration and decision thresholds on the development splits
# (never on a test file), then applies them once to the unseen runs for the report.
#   1. the development splits again (`data labels --dev-prompts`, `data distill --dev-dir`:
#      the same 10%-by-prompt-hash rule as training, so none of it was trained on);
#   2. the shipped guard under `--reasoning none` and `full` over both whole splits (the
#      train-labels split: held-out ToxicChat-train and GuardReasonerTrain prompts; the seen
#      split: held-out prompts of the six seen benchmarks);
#   3. `calibrate fit`: what `auto` with the card's band would have answered on every dev row
#      (`none`'s verdict outside the band, `full`'s inside), a Platt map per task and per stage
#      (answered at once, reasoned), and per task the F1-best threshold on the calibrated
#      scores; written to calibration.json.
# Every stage resumes: run it again after a crash.
# Usage: scripts/calibrate-default-guard.sh [WORKDIR]   (default: runs/calibrate)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-runs/calibrate}
BIN=${GUARDREASONER_BIN:-target/release/guardreasoner}
SHARED=${GUARDREASONER_SHARED:-../shared}
PRED=$SHARED/data/reference-predictions
MODEL=${MODEL:-default}
mkdir -p "$WORK"
[ -x "$BIN" ] || cargo build --release -p guardreasoner-cli
stage() { echo "== $1 ($(date -u +%H:%M:%S) UTC)"; STAGE_START=$(date +%s); }
done_stage() { echo "== $1 took $(( $(date +%s) - STAGE_START )) s"; }

stage "1. development splits"
"$BIN" data labels --labels "$SHARED/data/train-labels/toxicchat0124_train_human.json" \
  --labels "$SHARED/data/train-labels/guardreasonertrain_prompts_5k.json" \
  --benchmarks-dir "$SHARED/data/benchmarks" --dev-fraction 0.1 --out "$WORK/gold.json" \
  --dev-prompts "$WORK/labels-dev/0_8_toxic_chat.json"
"$BIN" data distill \
  --predictions "$PRED/paper-v1/8B" --predictions "$PRED/paper-v1/3B" \
  --predictions "$PRED/rerun/8B" --predictions "$PRED/rerun/3B" \
  --predictions "$PRED/paper-v1/1B" --predictions "$PRED/rerun/1B" \
  --extra "$SHARED/data/train-reasoning/guardreasonertrain_samples.json" \
  --benchmarks-dir "$SHARED/data/benchmarks" \
  --max-traces 1 --max-traces-unharmful 3 \
  --dev-fraction 0.1 --dev-dir "$WORK/dev" --out "$WORK/released.json"
done_stage "1. development splits"

for mode in none full; do
  stage "2. $mode over the development splits"
  "$BIN" eval --model "$MODEL" --reasoning "$mode" --data-dir "$WORK/labels-dev" \
    --benchmarks ToxicChat --max-new-tokens 1024 --label "labels-dev-$mode" \
    --out "$WORK/labels-dev-$mode"
  "$BIN" eval --model "$MODEL" --reasoning "$mode" --data-dir "$WORK/dev" \
    --benchmarks AegisSafetyTest,HarmBenchPrompt,SimpleSafetyTests,HarmBenchResponse,XSTestResponseHarmful,XSTestResponseRefusal \
    --max-new-tokens 1024 --label "seen-dev-$mode" --out "$WORK/seen-dev-$mode"
  done_stage "2. $mode"
done
echo "== done ($(date -u +%H:%M:%S) UTC)"
