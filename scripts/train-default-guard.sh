#!/usr/bin/env bash
# Reproduces the default guard (GuardReasoner-SmolLM2-135M) from ../shared on this CPU:
#   1. distil R-SFT records from the released GuardReasoner predictions (seen benchmarks only;
#      the unseen test sets' prompts are removed), holding out 10% of prompts as the dev split;
#   2. R-SFT: LoRA on the untrained base, SmolLM2-135M-Instruct GGUF (dequantised to f32);
#   3. evaluate the dev split (choices are made here, never on the unseen test sets).
# Every stage resumes: run the script again after a crash and it continues where it stopped.
# Usage: scripts/train-default-guard.sh [WORKDIR]   (default: runs/default-guard)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-runs/default-guard}
BIN=${GUARDREASONER_BIN:-target/release/guardreasoner}
SHARED=${GUARDREASONER_SHARED:-../shared}
PRED=$SHARED/data/reference-predictions
# The compute budget of stage 2 (tokens ~ steps x 8 records x ~600 tokens at cutoff 768).
SFT_STEPS=${SFT_STEPS:-130}
mkdir -p "$WORK"
[ -x "$BIN" ] || cargo build --release -p guardreasoner-cli
stage() { echo "== $1 ($(date -u +%H:%M:%S) UTC)"; STAGE_START=$(date +%s); }
done_stage() { echo "== $1 took $(( $(date +%s) - STAGE_START )) s"; }

stage "1. distil"
"$BIN" data distill \
  --predictions "$PRED/paper-v1/8B" --predictions "$PRED/paper-v1/3B" \
  --predictions "$PRED/rerun/8B" --predictions "$PRED/rerun/3B" \
  --predictions "$PRED/paper-v1/1B" --predictions "$PRED/rerun/1B" \
  --extra "$SHARED/data/train-reasoning/guardreasonertrain_samples.json" \
  --benchmarks-dir "$SHARED/data/benchmarks" \
  --max-traces 1 --max-traces-unharmful 3 \
  --dev-fraction 0.1 --dev-dir "$WORK/dev" --out "$WORK/distill.json"
done_stage "1. distil"

stage "2. R-SFT (LoRA r32, $SFT_STEPS steps of 8)"
RESUME=()
ls -d "$WORK"/sft/checkpoint-* >/dev/null 2>&1 && RESUME=(--resume)
"$BIN" train sft --model smollm2-base --data "$WORK/distill.json" --output "$WORK/sft" \
  --preset none --grad-accum 8 --learning-rate 5e-4 --warmup-ratio 0.05 \
  --max-steps "$SFT_STEPS" --save-steps 10 --cutoff-len 768 \
  --lora-rank 32 --lora-alpha 32 "${RESUME[@]}"
done_stage "2. R-SFT"

stage "3. dev split"
"$BIN" model merge --base "$WORK/sft/base" --adapter "$WORK/sft/adapter" \
  --output "$WORK/rsft" --gguf f16
"$BIN" eval --model "$WORK/rsft/model.gguf" --data-dir "$WORK/dev" \
  --benchmarks AegisSafetyTest,HarmBenchPrompt,SimpleSafetyTests,HarmBenchResponse,XSTestResponseHarmful,XSTestResponseRefusal \
  --max-new-tokens 1024 --label rsft-dev --out "$WORK/eval-dev"
done_stage "3. dev split"

# To ship the result as the default guard:
#   target/release/guardreasoner model pack-adapter --weights "$WORK/sft/adapter/adapter_model.safetensors" \
#       --config "$WORK/sft/adapter/adapter_config.json"
# then pin the printed sha256 in crates/guardreasoner-hub/src/guard.rs (ADAPTER_SHA256) and
# guard/guard.json, and evaluate it with scripts/eval-default-guard.sh.
