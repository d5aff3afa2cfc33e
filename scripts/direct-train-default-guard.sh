#!/usr/bin/env bash
# Candidate r-sft-3: R-SFT continued from the shipped adapter on a mixture that adds direct
# answers (no reasoning) to the released reasoning traces, so the guard can answer under
# `--reasoning none`/`auto` and so the labelled prompts (ToxicChat train, GuardReasonerTrain
# prompts; mostly benign, like the unseen prompt sets) reach training without any reasoning
# having to be sampled for them first.
#   1. labels: ../shared/data/train-labels into gold inputs, minus the unseen test sets and
#      the development split (the same 10% rule as distil), plus that split as an eval file;
#   2. distil: the released traces (as scripts/train-default-guard.sh) and the seen dev split;
#   3. direct: direct-answer variants of the labelled inputs (their gold labels) and of the
#      released traces (their own answers), the traces shuffled (seed 1) first;
#   4. R-SFT from the shipped adapter on LABELS_DIRECT + RELEASED_DIRECT + RELEASED records
#      (each file's first N: the labelled inputs are in hash order, a fair sample);
#   5. the train-labels dev split under none and full reasoning;
#   6. the seen dev split (full reasoning).
# Every stage resumes: run it again after a crash.
# A later candidate continues from another adapter on the records its predecessor did not see.
# r-sft-4 (shipped 2026-12-06) was, from r-sft-3's adapter then in crates/guardreasoner-hub/guard:
# TAG=r-sft-4 LABELS_SKIP=800 RELEASED_SKIP=240 LABELS_DIRECT=1320 RELEASED_DIRECT=140 \
#   RELEASED=140 STEPS=200 scripts/direct-train-default-guard.sh runs/r-sft-4
# r-sft-5 (shipped 2026-12-06) the same from r-sft-4's adapter with LABELS_SKIP=2120
# RELEASED_SKIP=380 (scripts/reproduce-default-guard.sh chains them all).
# r-sft-6 (2026-12-06, measured, not shipped: dev mean 76.88 against r-sft-5's 78.00) the same
# from r-sft-5's adapter with TAG=r-sft-6 LABELS_SKIP=3440 RELEASED_SKIP=520 LABELS_DIRECT=1200
# RELEASED_DIRECT=240 RELEASED=160 STEPS=200.
# r-sft-7 (2026-12-06, measured, not shipped: dev mean 77.26) from r-sft-5's adapter with
# TAG=r-sft-7 LABELS_SKIP=3440 RELEASED_SKIP=520 RELEASED_MIX=responses LABELS_DIRECT=480
# RELEASED_DIRECT=200 RELEASED=280 STEPS=120 CUTOFF=1280; full-ft-7 (dev mean 79.08, the best
# so far, not yet in a shippable form) the same with TAG=full-ft-7 FULL_FT=1 LR=5e-5.
# FULL_FT=1 trains every weight instead of the LoRA adapters (from the base merged with
# INIT_ADAPTER; LR should then be near the paper's 5e-5). With EXTRACT_RANK=R as well, the
# candidate measured (and shippable) is the fine-tuning's difference to the base cut by SVD
# to a rank-R LoRA in $WORK/sft/adapter (`model extract-adapter`; svd-ft-7-r54, measured and
# not shipped, is full-ft-7 with EXTRACT_RANK=54).
# (LABELS_DEV_LIMIT=0: the whole train-labels dev split; 300, the default, is the sample the
# model card compares candidates on). Stage 7 picks the band (scripts/choose-auto-band.py).
# Usage: scripts/direct-train-default-guard.sh [WORKDIR]   (default: runs/direct)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-runs/direct}
BIN=${GUARDREASONER_BIN:-target/release/guardreasoner}
SHARED=${GUARDREASONER_SHARED:-../shared}
PRED=$SHARED/data/reference-predictions
LABELS_DIRECT=${LABELS_DIRECT:-800}
RELEASED_DIRECT=${RELEASED_DIRECT:-240}
RELEASED=${RELEASED:-240}
STEPS=${STEPS:-160}
LR=${LR:-3e-4}
CUTOFF=${CUTOFF:-768}
FULL_FT=${FULL_FT:-0}
EXTRACT_RANK=${EXTRACT_RANK:-0}
LABELS_DEV_LIMIT=${LABELS_DEV_LIMIT:-300}
LABELS_SKIP=${LABELS_SKIP:-0}
RELEASED_SKIP=${RELEASED_SKIP:-0}
INIT_ADAPTER=${INIT_ADAPTER:-crates/guardreasoner-hub/guard}
TAG=${TAG:-r-sft-3}
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

stage "2. distil"
"$BIN" data distill \
  --predictions "$PRED/paper-v1/8B" --predictions "$PRED/paper-v1/3B" \
  --predictions "$PRED/rerun/8B" --predictions "$PRED/rerun/3B" \
  --predictions "$PRED/paper-v1/1B" --predictions "$PRED/rerun/1B" \
  --extra "$SHARED/data/train-reasoning/guardreasonertrain_samples.json" \
  --benchmarks-dir "$SHARED/data/benchmarks" \
  --max-traces 1 --max-traces-unharmful 3 \
  --dev-fraction 0.1 --dev-dir "$WORK/dev" --out "$WORK/released.json"
done_stage "2. distil"

stage "3. direct answers"
"$BIN" data direct --data "$WORK/gold.json" --out "$WORK/labels-direct.json"
# distil writes by source and benchmark; a fixed shuffle makes each file's first N a fair sample.
${GUARDREASONER_PYTHON:-python3} - "$WORK/released.json" "$WORK/released-shuffled.json" <<'PY'
import json, random, sys
records = json.load(open(sys.argv[1]))
random.Random(1).shuffle(records)
json.dump(records, open(sys.argv[2], "w"))
PY
"$BIN" data direct --data "$WORK/released-shuffled.json" --out "$WORK/released-direct.json"
# What an earlier candidate trained on is skipped (each file is in a fixed order).
# RELEASED_MIX=responses keeps, of the released records after the skip, only those with an AI
# response (the scarce response and refusal tasks): every harmful response among them and as
# many unharmful ones, shuffled together (seed 2), first; then the rest in their shuffled order.
# The direct file follows the same selection.
${GUARDREASONER_PYTHON:-python3} - "$WORK" "$LABELS_SKIP" "$RELEASED_SKIP" "${RELEASED_MIX:-all}" <<'PY'
import json, random, sys
work, labels_skip, released_skip, mix = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def answers(record):
    block = record["output"].rsplit("Answers:", 1)[-1]
    return dict(line.split(":", 1) for line in block.strip().splitlines() if ":" in line)
reasoned = json.load(open(f"{work}/released-shuffled.json"))[released_skip:]
order = list(range(len(reasoned)))
if mix == "responses":
    tasks = [{k.strip(): v.strip() for k, v in answers(r).items()} for r in reasoned]
    with_response = [i for i in order if tasks[i].get("Completion", "None") != "None"]
    harmful = [i for i in with_response if tasks[i].get("Response") == "harmful"]
    rest = [i for i in with_response if tasks[i].get("Response") != "harmful"]
    head = harmful + rest[: len(harmful)]
    random.Random(2).shuffle(head)
    order = head + rest[len(harmful):]
    print(f"released records with a response: {len(with_response)} ({len(harmful)} harmful), first")
elif mix != "all":
    sys.exit(f"RELEASED_MIX must be all or responses, not {mix}")
for name, skip in [("labels-direct", labels_skip), ("released-direct", released_skip),
                   ("released-shuffled", released_skip)]:
    records = json.load(open(f"{work}/{name}.json"))[skip:]
    if name != "labels-direct":
        records = [records[i] for i in order]
    json.dump(records, open(f"{work}/{name}-from.json", "w"))
    print(f"{name}: {len(records) + skip} records, training from record {skip} ({len(records)})")
PY
done_stage "3. direct answers"

if [ "$FULL_FT" = 1 ]; then
  # Full fine-tuning (LoRA's comparison, issue 11): every weight of the model INIT_ADAPTER
  # makes of the base, merged in f32, trains; the result is saved in f32 for the GGUF.
  stage "4. full fine-tuning from the base merged with $INIT_ADAPTER ($STEPS steps of 8: $LABELS_DIRECT + $RELEASED_DIRECT direct, $RELEASED reasoning)"
  [ -f "$WORK/base-hf/config.json" ] || "$BIN" model convert smollm2-base --to-hf "$WORK/base-hf"
  [ -f "$WORK/init/model.safetensors" ] || "$BIN" model merge --base "$WORK/base-hf" \
    --adapter "$INIT_ADAPTER" --output "$WORK/init" --save-dtype f32 --gguf none
  TRAIN_FROM=(--model "$WORK/init" --save-dtype f32)
else
  stage "4. R-SFT from $INIT_ADAPTER ($STEPS steps of 8: $LABELS_DIRECT + $RELEASED_DIRECT direct, $RELEASED reasoning)"
  TRAIN_FROM=(--model smollm2-base --init-adapter "$INIT_ADAPTER" --lora-rank 32 --lora-alpha 32)
fi
RESUME=()
ls -d "$WORK"/sft/checkpoint-* >/dev/null 2>&1 && RESUME=(--resume)
"$BIN" train sft "${TRAIN_FROM[@]}" \
  --data "$WORK/labels-direct-from.json:$LABELS_DIRECT" \
  --data "$WORK/released-direct-from.json:$RELEASED_DIRECT" \
  --data "$WORK/released-shuffled-from.json:$RELEASED" \
  --output "$WORK/sft" \
  --preset none --grad-accum 8 --learning-rate "$LR" --warmup-ratio 0.05 \
  --max-steps "$STEPS" --save-steps 20 --cutoff-len "$CUTOFF" "${RESUME[@]}"
done_stage "4. R-SFT"

stage "5. train-labels dev split ($LABELS_DEV_LIMIT prompts, stratified, seed 1; 0: all): none and full"
if [ "$FULL_FT" = 1 ] && [ "$EXTRACT_RANK" != 0 ]; then
  [ -f "$WORK/sft/adapter/adapter_model.safetensors" ] || "$BIN" model extract-adapter \
    --base "$WORK/base-hf" --tuned "$WORK/sft/model" --rank "$EXTRACT_RANK" --output "$WORK/sft/adapter"
  [ -f "$WORK/rsft/model.gguf" ] || "$BIN" model merge --base "$WORK/base-hf" \
    --adapter "$WORK/sft/adapter" --output "$WORK/rsft" --gguf f16
elif [ "$FULL_FT" = 1 ]; then
  mkdir -p "$WORK/rsft"
  [ -f "$WORK/rsft/model.gguf" ] || "$BIN" model convert "$WORK/sft/model" \
    --to-gguf "$WORK/rsft/model.gguf" --gguf-type f16
else
  [ -f "$WORK/rsft/model.gguf" ] || "$BIN" model merge --base "$WORK/sft/base" \
    --adapter "$WORK/sft/adapter" --output "$WORK/rsft" --gguf f16
fi
SAMPLE=()
[ "$LABELS_DEV_LIMIT" != 0 ] && SAMPLE=(--limit "$LABELS_DEV_LIMIT" --seed 1)
labels_dev() {
  "$BIN" eval --model "$WORK/rsft/model.gguf" --data-dir "$WORK/labels-dev" --benchmarks ToxicChat \
    "${SAMPLE[@]}" --max-new-tokens 1024 --reasoning "$1" \
    --label "$TAG-labels-dev-$1" --out "$WORK/eval-labels-dev-$1"
}
labels_dev none
labels_dev full
done_stage "5. train-labels dev split"


stage "6. seen dev split (none and full reasoning)"
for mode in none full; do
  "$BIN" eval --model "$WORK/rsft/model.gguf" --data-dir "$WORK/dev" --reasoning "$mode" \
    --benchmarks AegisSafetyTest,HarmBenchPrompt,SimpleSafetyTests,HarmBenchResponse,XSTestResponseHarmful,XSTestResponseRefusal \
    --max-new-tokens 1024 --label "$TAG-dev-$mode" --out "$WORK/eval-dev-$mode"
done
done_stage "6. seen dev split"

stage "7. auto's band on both dev splits"
${GUARDREASONER_PYTHON:-python3} scripts/choose-auto-band.py "$WORK" | tee "$WORK/auto-band.md"
done_stage "7. auto's band"
