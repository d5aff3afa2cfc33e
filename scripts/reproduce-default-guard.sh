#!/usr/bin/env bash
# The whole recipe of the shipped default guard from ../shared, in one command: every candidate
# in the order it was trained, each from the previous one's adapter, with its dev evaluations,
# then the last one's `auto` band and its score calibration, chosen and fitted on the
# development splits only (the unseen test sets are run by scripts/eval-default-guard.sh, once,
# for the report).
#   r-sft-1  scripts/train-default-guard.sh: R-SFT of the base on released reasoning traces
#   r-sft-3  scripts/direct-train-default-guard.sh: continued on direct answers of labelled
#            prompts plus released traces (direct and reasoned)
#   r-sft-4  the same script, the records r-sft-3 had not seen
#   r-sft-5  the same script, the records r-sft-4 had not seen (the shipped guard)
# Each stage prints its start and its time; every stage resumes (run it again after a crash).
# About 5 hours on 2 cores (r-sft-1 39 min, r-sft-3 40, r-sft-4 54, r-sft-5 60-85, plus dev
# evaluations).
# Training is not bit-reproducible across thread counts (float sums in another order), so the
# adapter's sha256 is printed beside the shipped one, not required to match.
# Usage: scripts/reproduce-default-guard.sh [WORKDIR]   (default: runs/reproduce)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-runs/reproduce}
mkdir -p "$WORK"
START=$(date +%s)
candidate() { echo "==== $1 ($(date -u +%H:%M:%S) UTC, $(( ($(date +%s) - START) / 60 )) min in)"; }

candidate "r-sft-1"
scripts/train-default-guard.sh "$WORK/r-sft-1"

candidate "r-sft-3"
INIT_ADAPTER="$WORK/r-sft-1/sft/adapter" TAG=r-sft-3 \
  scripts/direct-train-default-guard.sh "$WORK/r-sft-3"

candidate "r-sft-4"
INIT_ADAPTER="$WORK/r-sft-3/sft/adapter" TAG=r-sft-4 LABELS_SKIP=800 RELEASED_SKIP=240 \
  LABELS_DIRECT=1320 RELEASED_DIRECT=140 RELEASED=140 STEPS=200 \
  scripts/direct-train-default-guard.sh "$WORK/r-sft-4"

candidate "r-sft-5"
INIT_ADAPTER="$WORK/r-sft-4/sft/adapter" TAG=r-sft-5 LABELS_SKIP=2120 RELEASED_SKIP=380 \
  LABELS_DIRECT=1320 RELEASED_DIRECT=140 RELEASED=140 STEPS=200 \
  scripts/direct-train-default-guard.sh "$WORK/r-sft-5"

LAST="$WORK/r-sft-5"
BIN=${GUARDREASONER_BIN:-target/release/guardreasoner}
candidate "calibration of $LAST at the band its dev splits chose"
BAND=$(sed -n 's/^chosen band: \([0-9.]*,[0-9.]*\) .*/\1/p' "$LAST/auto-band.md")
# What `auto` answers on both dev splits, as one run per mode (eval output directories).
for mode in none full; do
  mkdir -p "$LAST/cal-$mode"
  cp -r "$LAST/eval-labels-dev-$mode/ToxicChat" "$LAST/eval-dev-$mode"/*/ "$LAST/cal-$mode/"
  cp "$LAST/eval-dev-$mode/eval-settings.json" "$LAST/cal-$mode/"
done
"$BIN" cascade --none "$LAST/cal-none" --full "$LAST/cal-full" --band "$BAND" \
  --fit-calibration "$LAST/calibration.json"
"$BIN" model pack-adapter --weights "$LAST/sft/adapter/adapter_model.safetensors" \
  --config "$LAST/sft/adapter/adapter_config.json" --out "$LAST/packed"

echo "==== done in $(( ($(date +%s) - START) / 60 )) min: band $BAND, calibration $LAST/calibration.json"
echo "adapter (f16): $(sha256sum "$LAST/packed/adapter_model.safetensors" | cut -d' ' -f1)"
echo "shipped:       $(sha256sum crates/guardreasoner-hub/guard/adapter_model.safetensors | cut -d' ' -f1)"
