#!/usr/bin/env bash
# Runs the end-to-end lab N times (as root) and summarises the JSON
# reports with examples/labstats: BENCHMARKS.md's lab figures come from
# here. Usage: scripts/lab-bench.sh N [lab flags...]
# Run it on an otherwise idle machine: TCG guests on 2 cores are sensitive
# to load (see BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:?usage: scripts/lab-bench.sh N [lab flags...]}
shift
out=${OUT:-out/lab-bench-$(date +%Y%m%dT%H%M%S)}
mkdir -p "$out"
go build -o "$out/lab" ./examples/lab
for i in $(seq 1 "$n"); do
  echo "run $i of $n: lab $*" >&2
  # A run whose verdicts fail exits 1: keep going, labstats counts it.
  "$out/lab" -json "$out/run-$i.json" "$@" > "$out/run-$i.txt" 2>&1 || echo "run $i: a verdict failed (see $out/run-$i.txt)" >&2
done
go run ./examples/labstats "$out"/run-*.json
