#!/usr/bin/env bash
# Evaluates the shipped default guard (`--model default`: the base GGUF with the adapter in
# crates/guardreasoner-hub/guard applied at run time beside it) as the model card reports it:
#   1. the development split (held-out prompts of the six seen benchmarks, written by
#      scripts/train-default-guard.sh), where choices are made;
#   2. the unseen test sets, once per shipped candidate: a seeded sample stratified by gold label
#      of LIMIT rows per prompt benchmark and RLIMIT per response benchmark (0: the whole file),
#      F1 with a bootstrap 95% interval in each report's details.
# Every step resumes: run it again after a crash. r-sft-1 was reported with LIMIT=1000 RLIMIT=1000.
# A candidate before shipping: MODEL=path/to/model.gguf (default: the shipped guard), and the
# reasoning mode chosen on the dev split: REASONING=full|none|auto, BAND=LO,HI (auto only);
# DEV=0 skips the dev split (already measured).
# Usage: scripts/eval-default-guard.sh [WORKDIR] (default runs/default-guard; SEED=1)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-runs/default-guard}
BIN=${GUARDREASONER_BIN:-target/release/guardreasoner}
SHARED=${GUARDREASONER_SHARED:-../shared}
LIMIT=${LIMIT:-1000}
RLIMIT=${RLIMIT:-1000}
SEED=${SEED:-1}
MODEL=${MODEL:-default}
REASONING=${REASONING:-full}
NAME=${NAME:-GuardReasoner-SmolLM2-135M}
MODE=(--reasoning "$REASONING")
[ -n "${BAND:-}" ] && MODE+=(--uncertainty-band "$BAND")
[ -x "$BIN" ] || cargo build --release -p guardreasoner-cli
[ -d "$WORK/dev" ] || { echo "no dev split in $WORK/dev: run scripts/train-default-guard.sh first" >&2; exit 1; }
limit_args() { [ "$1" != 0 ] && echo "--limit $1 --seed $SEED"; }

if [ "${DEV:-1}" != 0 ]; then
echo "== dev split ($(date -u +%H:%M:%S) UTC)"
"$BIN" eval --model "$MODEL" "${MODE[@]}" --data-dir "$WORK/dev" \
  --benchmarks AegisSafetyTest,HarmBenchPrompt,SimpleSafetyTests,HarmBenchResponse,XSTestResponseHarmful,XSTestResponseRefusal \
  --max-new-tokens 1024 --label "$NAME (dev)" --out "$WORK/eval-dev-default"
fi

echo "== unseen prompt sets ($(date -u +%H:%M:%S) UTC)"
# shellcheck disable=SC2046
"$BIN" eval --model "$MODEL" "${MODE[@]}" --data-dir "$SHARED/data/benchmarks" \
  --benchmarks ToxicChat,OpenAIModeration $(limit_args "$LIMIT") \
  --max-new-tokens 1024 --label "$NAME" --out "$WORK/eval-unseen"
echo "== unseen response sets ($(date -u +%H:%M:%S) UTC)"
# shellcheck disable=SC2046
"$BIN" eval --model "$MODEL" "${MODE[@]}" --data-dir "$SHARED/data/benchmarks" \
  --benchmarks SafeRLHF,BeaverTails $(limit_args "$RLIMIT") \
  --max-new-tokens 1024 --label "$NAME" --out "$WORK/eval-unseen-response"
echo "== done ($(date -u +%H:%M:%S) UTC)"
