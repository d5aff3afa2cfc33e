#!/usr/bin/env bash
# Evaluates the shipped default guard (`--model default`: the base GGUF with the adapter in
# crates/guardreasoner-hub/guard merged in, Q8_0) as the model card reports it:
#   1. the development split (held-out prompts of the six seen benchmarks, written by
#      scripts/train-default-guard.sh), where choices are made;
#   2. the unseen test sets, once per shipped candidate: a seeded sample stratified by gold label
#      of LIMIT rows per benchmark (the whole file with LIMIT=0), F1 with a bootstrap 95% interval.
# Both resume: run it again after a crash.
# Usage: scripts/eval-default-guard.sh [WORKDIR] (default runs/default-guard; LIMIT=1000 SEED=1)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-runs/default-guard}
BIN=${GUARDREASONER_BIN:-target/release/guardreasoner}
SHARED=${GUARDREASONER_SHARED:-../shared}
LIMIT=${LIMIT:-1000}
SEED=${SEED:-1}
[ -x "$BIN" ] || cargo build --release -p guardreasoner-cli
[ -d "$WORK/dev" ] || { echo "no dev split in $WORK/dev: run scripts/train-default-guard.sh first" >&2; exit 1; }
LIMIT_ARGS=()
[ "$LIMIT" != 0 ] && LIMIT_ARGS=(--limit "$LIMIT" --seed "$SEED")

echo "== dev split ($(date -u +%H:%M:%S) UTC)"
"$BIN" eval --model default --data-dir "$WORK/dev" \
  --benchmarks AegisSafetyTest,HarmBenchPrompt,SimpleSafetyTests,HarmBenchResponse,XSTestResponseHarmful,XSTestResponseRefusal \
  --max-new-tokens 1024 --label "GuardReasoner-SmolLM2-135M (dev)" --out "$WORK/eval-dev-default"

echo "== unseen test sets ($(date -u +%H:%M:%S) UTC)"
"$BIN" eval --model default --data-dir "$SHARED/data/benchmarks" \
  --benchmarks ToxicChat,OpenAIModeration,SafeRLHF,BeaverTails "${LIMIT_ARGS[@]}" \
  --max-new-tokens 1024 --label "GuardReasoner-SmolLM2-135M" --out "$WORK/eval-unseen"
echo "== done ($(date -u +%H:%M:%S) UTC)"
