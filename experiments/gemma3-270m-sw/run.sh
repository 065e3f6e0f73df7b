#!/usr/bin/env bash
# The evidence run: ./run.sh [OUT] [DATA_DIR] (defaults: ./out next to this file, ../shared/data).
# Resumable: rerun the same command and finished stages (experts, checks, analysis, importance,
# every evaluated candidate and halving block) are kept. Then ./collect.py OUT copies the small
# outputs into results/ and writes README.md.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/out}"
data="${2:-$here/../../../shared/data}"
layerswap demo --config "$here/config.yaml" --data-dir "$data" --out "$out"
