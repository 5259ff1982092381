#!/usr/bin/env bash
# Concurrent A/B of whole benchmark cells: two checkouts of the repository (say a worktree at 3d00d25 = bundles
# 0.3.3, and main = 0.3.4) run the same cells at the same time, one thread each (the --jobs 2 condition), so both
# see the same machine load. Usage, from the repository root with its .venv active:
#   git worktree add /tmp/old 3d00d25 && bash benchmarks/results/speed_0.3.4/ab_cells.sh /tmp/old . runs/ab
set -euo pipefail
old=$(cd "$1" && pwd); new=$(cd "$2" && pwd); out=$(mkdir -p "$3" && cd "$3" && pwd)
data=${DATA_DIR:-$new/../shared/data/glas}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
run() { (cd "$1" && python -m mdm_med.benchmark --config benchmarks/glas_cpu.yaml --data-dir "$data" --out "$2" \
         --methods scratch random_features --fractions 0.1 --seeds 0 > "$2.log" 2>&1); }
run "$old" "$out/old" & run "$new" "$out/new" & wait
grep -h "done in" "$out/old.log" "$out/new.log"
