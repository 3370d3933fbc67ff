#!/usr/bin/env bash
# Re-run the toy-v5 results table in the order docs/experiments.md §1 ("Re-run") fixes, committing each
# finished run's summary to results/toy-v5/ as it lands. Restartable: a run whose summary exists is
# skipped, an interrupted one resumes. OUT (default runs/table) holds the run folders, RESULTS (default
# results/toy-v5) the summaries.
#   bash scripts/toy_v5_rerun.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
rt() { python3 scripts/results_table.py --out "${OUT:-runs/table}" --results "${RESULTS:-results/toy-v5}" --commit "$@"; }
PROTECTED=("UPFT (N=1)" "SFT" "UPFT control (T=1, no top-p)" "UPFT, no instruction and no EOS" "RFT (16 samples)")
OTHERS=("EM-FT" "UPFT + voting (N=8)" "UPFT, no instruction" "UPFT, no EOS" "UPFT, prefix part only (p = 0)"
        "UPFT, full-trace part only" "UPFT, random targets" "UPFT, per-sample loss (official)" "majority vote (16 samples)")
# 1-5: the 31 runs of the table as first published (its cuts included), in the order it ran them
rt --seeds 0                                                   # 1. seed 0 of every arm
rt --seeds 1 2 --rows "${PROTECTED[@]}"                       # 2. seeds 1 and 2 of the protected arms
rt --seeds 0 --rows "UPFT (N=1) (LR 3e-5)" "SFT (LR 3e-5)"    # 3. the LR check at 3e-5
rt --seeds 1 --rows "${OTHERS[@]:0:5}"                        # 4. seed 1 of the arms that kept it
rt --seeds 2 --rows "EM-FT" "UPFT + voting (N=8)"             # 5. seed 2 of EM-FT and UPFT + voting
# 6-8: the runs the first table cut for time, completing the pre-registered design
rt --seeds 1 --rows "${OTHERS[@]:5:4}"                        # 6. seed 1 of the four single-seed arms
rt --seeds 2 --rows "${OTHERS[@]:2:7}"                        # 7. seed 2 of the other controls and majority vote
rt --seeds 0 --rows "UPFT (N=1) (LR 3e-6)" "SFT (LR 3e-6)"    # 8. the LR check at 3e-6
