#!/usr/bin/env bash
# Candidate hs-dpo-1: HS-DPO (the paper's third stage) on top of the shipped R-SFT guard.
#   1. pool: the records the shipped guard's R-SFT runs did not train on, from an R-SFT workdir
#      of scripts/direct-train-default-guard.sh (SFT_WORK): released conversations with a
#      response (from record RELEASED_SKIP of its shuffled traces, one per conversation; the
#      scarce response-harm labels) interleaved one to one with labelled prompts (from record
#      LABELS_SKIP), then the released prompt-only ones;
#   2. screen: the shipped guard answers the first SCREEN pool records without reasoning
#      (`classify --reasoning none`, cheap) for their label scores;
#   3. hard: the records where some task's score is at least HARD_MARGIN away from its gold
#      label (wrong, or unsure): where sampled reasonings are most likely to disagree, and what
#      `--reasoning auto` escalates to reasoning;
#   4. sample: N_SAMPLES reasonings of the shipped guard for the first MINE_INPUTS hard records
#      (T 0.7, top-p 0.95, 512 tokens);
#   5. pairs: inputs with right and wrong samples, right chosen, wrong rejected, weighted by
#      difficulty (`mine pairs`, gamma 0.2);
#   6. HS-DPO from the shipped adapter (LoRA r32, beta 0.01, ftx 2, the paper's values; lr LR,
#      EPOCHS epochs, effective batch 8);
#   7. the two development splits of SFT_WORK under none and full reasoning, and auto's band
#      (scripts/choose-auto-band.py): compare with SFT_WORK's own figures.
# Every stage resumes: run it again after a crash.
# hs-dpo-1 (2026-12-06): SFT_WORK=runs/r-sft-5 LABELS_SKIP=3440 RELEASED_SKIP=520 SCREEN=800
# (216 hard records, 115 pairs; dev mean 77.89 against r-sft-5's 78.00: not shipped, see
# MODEL_CARD.md's candidates).
# Usage: scripts/hs-dpo-default-guard.sh [WORKDIR]   (default: runs/hs-dpo)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-runs/hs-dpo}
BIN=${GUARDREASONER_BIN:-target/release/guardreasoner}
PY=${GUARDREASONER_PYTHON:-python3}
SFT_WORK=${SFT_WORK:-runs/r-sft-5}
LABELS_SKIP=${LABELS_SKIP:-3440}
RELEASED_SKIP=${RELEASED_SKIP:-520}
SCREEN=${SCREEN:-1200}
HARD_MARGIN=${HARD_MARGIN:-0.25}
MINE_INPUTS=${MINE_INPUTS:-400}
N_SAMPLES=${N_SAMPLES:-4}
LR=${LR:-1e-4}
EPOCHS=${EPOCHS:-2}
TAG=${TAG:-hs-dpo-1}
mkdir -p "$WORK"
[ -x "$BIN" ] || cargo build --release -p guardreasoner-cli
stage() { echo "== $1 ($(date -u +%H:%M:%S) UTC)"; STAGE_START=$(date +%s); }
done_stage() { echo "== $1 took $(( $(date +%s) - STAGE_START )) s"; }

stage "1. pool"
"$PY" - "$SFT_WORK" "$WORK" "$LABELS_SKIP" "$RELEASED_SKIP" <<'PY'
import itertools, json, sys
sft, work, labels_skip, released_skip = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
keys = ["instruction", "input", "prompt_harm_label", "response_refusal_label", "response_harm_label"]
released = json.load(open(f"{sft}/released-shuffled.json"))[released_skip:]
labels = json.load(open(f"{sft}/gold.json"))[labels_skip:]
seen, with_response, prompt_only = set(), [], []
for r in released:
    if r["input"] in seen:
        continue
    seen.add(r["input"])
    (with_response if r["response_harm_label"] is not None else prompt_only).append(
        {k: r[k] for k in keys})
labels = [{k: r[k] for k in keys} for r in labels if r["input"] not in seen]
pool = [r for pair in itertools.zip_longest(with_response, labels) for r in pair if r]
pool += prompt_only
json.dump(pool, open(f"{work}/mine-gold.json", "w"))
# The same conversations as classify input (the prompt contract's "Human user:" layout).
with open(f"{work}/mine-gold-conversations.jsonl", "w") as out:
    for r in pool:
        body = r["input"][len("Human user:\n"):-2]
        prompt, _, response = body.partition("\n\nAI assistant:\n")
        row = {"prompt": prompt}
        if response and response != "None":
            row["response"] = response
        out.write(json.dumps(row) + "\n")
print(f"pool: {len(with_response)} released conversations with a response, {len(labels)} "
      f"labelled prompts, {len(prompt_only)} released prompts")
PY
done_stage "1. pool"

stage "2. screen the first $SCREEN pool records without reasoning"
if [ ! -s "$WORK/none-scores.jsonl" ]; then
  head -n "$SCREEN" "$WORK/mine-gold-conversations.jsonl" > "$WORK/screen.jsonl"
  "$BIN" classify --input "$WORK/screen.jsonl" --model default --reasoning none --json \
    --batch 16 > "$WORK/none-scores.jsonl.part"
  mv "$WORK/none-scores.jsonl.part" "$WORK/none-scores.jsonl"
fi
done_stage "2. screen"

stage "3. hard records (a score at least $HARD_MARGIN from a gold label)"
"$PY" - "$WORK" "$HARD_MARGIN" <<'PY'
import json, sys
work, margin = sys.argv[1], float(sys.argv[2])
pool = json.load(open(f"{work}/mine-gold.json"))
rows = [json.loads(line) for line in open(f"{work}/none-scores.jsonl")]
gold_of = {"request": ("prompt_harm_label", "harmful"),
           "completion": ("response_refusal_label", "refusal"),
           "response": ("response_harm_label", "harmful")}
hard = []
for record, row in zip(pool, rows):
    distance = 0.0
    for task, (field, positive) in gold_of.items():
        label, score = record[field], (row.get("raw_scores") or {}).get(task)
        if label is None:
            continue
        # No score (no valid answer) counts as the farthest.
        distance = max(distance, 1.0 if score is None else abs(score - (label == positive)))
    if distance >= margin:
        hard.append(record)
json.dump(hard, open(f"{work}/hard-gold.json", "w"))
with_response = sum(r["response_harm_label"] is not None for r in hard)
print(f"hard: {len(hard)} of {len(rows)} screened ({with_response} with a response)")
PY
done_stage "3. hard records"

stage "4. sample ($MINE_INPUTS hard records x $N_SAMPLES, T 0.7, top-p 0.95, 512 tokens)"
"$BIN" mine sample --gold "$WORK/hard-gold.json" --model default --name shipped \
  --n "$N_SAMPLES" --max-new-tokens 512 --concurrency 4 --seed 0 --limit "$MINE_INPUTS" \
  --output "$WORK/samples.jsonl"
done_stage "4. sample"

stage "5. pairs"
"$BIN" mine pairs --gold "$WORK/hard-gold.json" --samples "$WORK/samples.jsonl" \
  --output "$WORK/pairs.json"
done_stage "5. pairs"

stage "6. HS-DPO from the shipped adapter ($EPOCHS epochs, lr $LR)"
RESUME=()
ls -d "$WORK"/dpo/checkpoint-* >/dev/null 2>&1 && RESUME=(--resume)
"$BIN" train dpo --model smollm2-base --data "$WORK/pairs.json" --output "$WORK/dpo" \
  --init-adapter crates/guardreasoner-hub/guard \
  --preset none --beta 0.01 --ftx 2 --grad-accum 8 --learning-rate "$LR" --warmup-ratio 0.1 \
  --epochs "$EPOCHS" --save-steps 5 --cutoff-len 1024 \
  --lora-rank 32 --lora-alpha 32 "${RESUME[@]}"
done_stage "6. HS-DPO"

stage "7. development splits (none and full) and auto's band"
[ -f "$WORK/model/model.gguf" ] || "$BIN" model merge --base "$WORK/dpo/base" \
  --adapter "$WORK/dpo/adapter" --output "$WORK/model" --gguf f16
for mode in none full; do
  "$BIN" eval --model "$WORK/model/model.gguf" --data-dir "$SFT_WORK/labels-dev" \
    --benchmarks ToxicChat --limit 300 --seed 1 --max-new-tokens 1024 --reasoning "$mode" \
    --label "$TAG-labels-dev-$mode" --out "$WORK/eval-labels-dev-$mode"
  "$BIN" eval --model "$WORK/model/model.gguf" --data-dir "$SFT_WORK/dev" --reasoning "$mode" \
    --benchmarks AegisSafetyTest,HarmBenchPrompt,SimpleSafetyTests,HarmBenchResponse,XSTestResponseHarmful,XSTestResponseRefusal \
    --max-new-tokens 1024 --label "$TAG-dev-$mode" --out "$WORK/eval-dev-$mode"
done
"$PY" scripts/choose-auto-band.py "$WORK" | tee "$WORK/auto-band.md"
done_stage "7. development splits"
