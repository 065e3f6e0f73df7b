#!/usr/bin/env bash
# The seeds evidence run: ./run.sh [OUT] [DATA_DIR] (defaults: ./out next to this file, ../shared/data).
# Resumable (finished experts, checks, analysis and every evaluated candidate of each seed's sweep are
# kept). Then the small tables (seeds.csv, the report, each seed's results, comparisons and decisions)
# are copied into results/; no model weights.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/out}"
data="${2:-$here/../../../shared/data}"
layerswap demo --config "$here/config.yaml" --data-dir "$data" --out "$out"
mkdir -p "$here/results"
cp "$out/seeds.csv" "$out/report.md" "$out/demo.yaml" "$here/results/"
for sweep in "$out"/sweep "$out"/sweep-s*; do
  name="$(basename "$sweep")"
  mkdir -p "$here/results/$name"
  cp "$sweep"/results.csv "$sweep"/comparisons.csv "$sweep"/decisions.csv "$sweep"/report.md "$here/results/$name/"
done
