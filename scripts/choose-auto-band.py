#!/usr/bin/env python3
"""Choose `--reasoning auto`'s uncertainty band for a candidate on the development splits.

The rule the shipped bands were chosen by: 16 bands (low 0.30-0.45, high 0.55-0.70), and the
best mean of four dev figures: the train-labels dev split's F1 and the seen dev split's prompt,
response and refusal F1 (row-weighted over its files). It reads the `eval --reasoning none` and
`full` runs that scripts/direct-train-default-guard.sh writes into WORKDIR
(`eval-labels-dev-{none,full}` and `eval-dev-{none,full}`) through `guardreasoner cascade --json`.
Usage: scripts/choose-auto-band.py WORKDIR   (GUARDREASONER_BIN: default target/release/guardreasoner)
"""
import json
import os
import subprocess
import sys

BANDS = [(lo, hi) for lo in (0.30, 0.35, 0.40, 0.45) for hi in (0.55, 0.60, 0.65, 0.70)]


def cascade(binary, none, full):
    args = [a for lo, hi in BANDS for a in ("--band", f"{lo},{hi}")]
    out = subprocess.run([binary, "cascade", "--none", none, "--full", full, "--json", *args],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def key(row):
    band = row["band"]
    return row["mode"], None if band is None else (round(band["low"], 2), round(band["high"], 2))


def figures(labels, seen, k):
    lab = next(r for r in labels if key(r) == k)
    rows = [r for r in seen if key(r) == k]
    out = {"labels": lab["f1"]}
    for task in ("prompt", "response", "refusal"):
        of_task = [r for r in rows if r["task"] == task]
        out[task] = sum(r["f1"] * r["rows"] for r in of_task) / sum(r["rows"] for r in of_task)
    n = lab["rows"] + sum(r["rows"] for r in rows)
    out["tokens"] = (lab["mean_tokens"] * lab["rows"]
                     + sum(r["mean_tokens"] * r["rows"] for r in rows)) / n
    out["reasoned"] = (lab["escalated"] + sum(r["escalated"] for r in rows)) / n
    out["mean"] = (out["labels"] + out["prompt"] + out["response"] + out["refusal"]) / 4
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    work = sys.argv[1]
    binary = os.environ.get("GUARDREASONER_BIN", "target/release/guardreasoner")
    labels = cascade(binary, f"{work}/eval-labels-dev-none", f"{work}/eval-labels-dev-full")
    seen = cascade(binary, f"{work}/eval-dev-none", f"{work}/eval-dev-full")
    print("| mode | labels dev | seen prompt | seen response | seen refusal | mean | tokens | reasoned |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    results = []
    for k in [("full", None), ("none", None)] + [("auto", b) for b in BANDS]:
        f = figures(labels, seen, k)
        results.append((k, f))
        name = k[0] if k[1] is None else f"auto [{k[1][0]}, {k[1][1]}]"
        print(f"| {name} | {f['labels']:.2f} | {f['prompt']:.2f} | {f['response']:.2f} | "
              f"{f['refusal']:.2f} | {f['mean']:.2f} | {f['tokens']:.0f} | {100 * f['reasoned']:.0f}% |")
    (_, band), best = max((r for r in results if r[0][0] == "auto"), key=lambda r: r[1]["mean"])
    print(f"\nchosen band: {band[0]},{band[1]} (mean dev F1 {best['mean']:.2f})")


if __name__ == "__main__":
    main()
