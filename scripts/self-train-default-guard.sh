#!/usr/bin/env bash
# The next stage of the default guard: rejection-sampled self-training from labels alone
# (GuardReasoner has a teacher write reasoning; here none can be reached, so the shipped guard
# writes its own and only what ends in the gold label is kept).
#   1. labels: ../shared/data/train-labels (ToxicChat train, GuardReasonerTrain prompts) into
#      `mine sample` inputs, minus the unseen test sets and the development split;
#   2. sample: N_SAMPLES outputs per input from the shipped guard for the first MINE_INPUTS
#      inputs (hash order: a fair mix of sources and labels);
#   3. distil again: the released traces as before plus the samples that parse strictly and
#      end in the gold labels (same dev split);
#   4. R-SFT continued from the shipped adapter (--init-adapter) on that mixture, the kept
#      samples oversampled SELF_REPEAT times (they are the benign, ToxicChat-like part the
#      released traces lack; a short continued run would otherwise see few of them);
#   5. the dev split, to compare with the shipped guard's (scripts/eval-default-guard.sh);
#   6. the train-labels dev split (held-out ToxicChat-train and GuardReasonerTrain prompts, the
#      closest to the unseen prompt sets), a stratified sample of LABELS_DEV_LIMIT, the shipped
#      guard first (once) for the comparison.
# Every stage resumes: run it again after a crash. Needs scripts/train-default-guard.sh's
# stage 1 only for the dev split's benchmark files (written again here).
# Usage: scripts/self-train-default-guard.sh [WORKDIR]   (default: runs/self-train)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-runs/self-train}
BIN=${GUARDREASONER_BIN:-target/release/guardreasoner}
SHARED=${GUARDREASONER_SHARED:-../shared}
PRED=$SHARED/data/reference-predictions
MINE_INPUTS=${MINE_INPUTS:-1000}
N_SAMPLES=${N_SAMPLES:-2}
STEPS=${STEPS:-60}
SELF_REPEAT=${SELF_REPEAT:-2}
LABELS_DEV_LIMIT=${LABELS_DEV_LIMIT:-300}
mkdir -p "$WORK"
[ -x "$BIN" ] || cargo build --release -p guardreasoner-cli
stage() { echo "== $1 ($(date -u +%H:%M:%S) UTC)"; STAGE_START=$(date +%s); }
done_stage() { echo "== $1 took $(( $(date +%s) - STAGE_START )) s"; }

stage "1. labels"
"$BIN" data labels --labels "$SHARED/data/train-labels/toxicchat0124_train_human.json" \
  --labels "$SHARED/data/train-labels/guardreasonertrain_prompts_5k.json" \
  --benchmarks-dir "$SHARED/data/benchmarks" --dev-fraction 0.1 --out "$WORK/gold.json" \
  --dev-prompts "$WORK/labels-dev/0_8_toxic_chat.json"
done_stage "1. labels"

stage "2. sample ($MINE_INPUTS inputs x $N_SAMPLES, T 0.7, top-p 0.95, 512 tokens)"
"$BIN" mine sample --gold "$WORK/gold.json" --model default --name r-sft-1 \
  --n "$N_SAMPLES" --max-new-tokens 512 --concurrency 8 --seed 1 --limit "$MINE_INPUTS" \
  --output "$WORK/samples-r-sft-1.jsonl"
done_stage "2. sample"

stage "3. distil with the kept samples"
"$BIN" data distill \
  --predictions "$PRED/paper-v1/8B" --predictions "$PRED/paper-v1/3B" \
  --predictions "$PRED/rerun/8B" --predictions "$PRED/rerun/3B" \
  --predictions "$PRED/paper-v1/1B" --predictions "$PRED/rerun/1B" \
  --extra "$SHARED/data/train-reasoning/guardreasonertrain_samples.json" \
  --samples "$WORK/samples-r-sft-1.jsonl" --samples-gold "$WORK/gold.json" \
  --benchmarks-dir "$SHARED/data/benchmarks" \
  --max-traces 1 --max-traces-unharmful 3 \
  --dev-fraction 0.1 --dev-dir "$WORK/dev" --out "$WORK/distill.json"
# The mixture: released traces once, the model's own kept samples SELF_REPEAT times.
${GUARDREASONER_PYTHON:-python3} - "$WORK/distill.json" "$WORK/released.json" "$WORK/self.json" <<'PY'
import json, sys
records = json.load(open(sys.argv[1]))
own = [r for r in records if r["source"].startswith("self/")]
json.dump([r for r in records if not r["source"].startswith("self/")], open(sys.argv[2], "w"))
json.dump(own, open(sys.argv[3], "w"))
print(f"mixture: {len(records) - len(own)} released records, {len(own)} own samples")
PY
DATA=(--data "$WORK/released.json")
for _ in $(seq "$SELF_REPEAT"); do DATA+=(--data "$WORK/self.json"); done
done_stage "3. distil"

stage "4. R-SFT from the shipped adapter ($STEPS steps of 8, own samples x$SELF_REPEAT)"
RESUME=()
ls -d "$WORK"/sft/checkpoint-* >/dev/null 2>&1 && RESUME=(--resume)
"$BIN" train sft --model smollm2-base "${DATA[@]}" --output "$WORK/sft" \
  --init-adapter crates/guardreasoner-hub/guard \
  --preset none --grad-accum 8 --learning-rate 2e-4 --warmup-ratio 0.05 \
  --max-steps "$STEPS" --save-steps 10 --cutoff-len 768 \
  --lora-rank 32 --lora-alpha 32 "${RESUME[@]}"
done_stage "4. R-SFT"

stage "5. dev split"
"$BIN" model merge --base "$WORK/sft/base" --adapter "$WORK/sft/adapter" \
  --output "$WORK/rsft" --gguf f16
"$BIN" eval --model "$WORK/rsft/model.gguf" --data-dir "$WORK/dev" \
  --benchmarks AegisSafetyTest,HarmBenchPrompt,SimpleSafetyTests,HarmBenchResponse,XSTestResponseHarmful,XSTestResponseRefusal \
  --max-new-tokens 1024 --label r-sft-2-dev --out "$WORK/eval-dev"
done_stage "5. dev split"

stage "6. train-labels dev split ($LABELS_DEV_LIMIT prompts, stratified, seed 1)"
labels_dev() {
  "$BIN" eval --model "$1" --data-dir "$WORK/labels-dev" --benchmarks ToxicChat \
    --limit "$LABELS_DEV_LIMIT" --seed 1 --max-new-tokens 1024 --label "$2" --out "$3"
}
labels_dev default r-sft-1-labels-dev "$WORK/eval-labels-dev-shipped"
labels_dev "$WORK/rsft/model.gguf" r-sft-2-labels-dev "$WORK/eval-labels-dev"
done_stage "6. train-labels dev split"
