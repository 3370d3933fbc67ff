#!/usr/bin/env bash
# The decision worlds' study (docs/experiments.md §2): 5 arms x 3 seeds x 2 worlds, in the order §2 fixes,
# committing each finished run's summary to results/toy-v5-decision/ or results/toy-v5-mirror/ as it
# lands. Restartable: a run whose summary exists is skipped, an interrupted one resumes. OUT (default
# runs/decision) holds the run folders, RESULTS (default results) the summaries' parent folder.
#   bash scripts/decision_runs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
ARMS=("UPFT (N=1)" "UPFT control (T=1, no top-p)" "UPFT + voting (N=8)" "UPFT, no instruction and no EOS" "SFT")
for seed in 0 1 2; do
  for world in decision mirror; do
    python3 scripts/results_table.py --world "assets/toy-$world" --out "${OUT:-runs/decision}/$world" \
      --results "${RESULTS:-results}/toy-v5-$world" --eval-limit 1000 --eval-every 0 --commit --seeds "$seed" --rows "${ARMS[@]}"
  done
done
