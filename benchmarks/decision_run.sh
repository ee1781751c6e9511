#!/usr/bin/env bash
# Issue 34's decision run: leave-one-out folds pat0003, pat0002 (every method fresh), then pat0004 (the rows that
# need this run's models fresh: sr_nnunet, its label-free variant and the ensemble with rehrseg_paper, the REHRSeg
# row with the better class mean on pat0003 and pat0002; its LR baseline, interp_nnunet and the oracle come from the
# committed brats_4x_4000.json, both REHRSeg rows from brats_4x_4000_guided.json, where they share one LR start;
# merged by benchmarks/brats_4x_cv.py), at the 4000-iteration protocol, one fold after the other.
# Everything resumes: start it again with the same arguments after any stop. Run it from a worktree of one fixed
# commit with its own virtual environment, detached, e.g.
#   setsid nohup bash benchmarks/decision_run.sh /work/decision/venv/bin/python /work/decision/work \
#       /work/decision/results > /work/decision/run.log 2>&1 < /dev/null &
# RESULTS/<test case>.json is rewritten after every model's prediction (its pending list says what is left; empty
# when the fold is finished): copy it to benchmarks/results/brats_4x_cv/ and commit it, so that a lost work folder
# costs only what was not yet scored.
set -euo pipefail
PYTHON=${1:?python of the virtual environment of the run}
WORK=${2:?work folder (outside the repository)}
RESULTS=${3:?folder of the fold JSONs}
cd "$(dirname "$0")/.."
mkdir -p "$RESULTS"
COMMON=(--device cpu --work "$WORK" --lr-epochs 96 --finetune-epochs 64 --time-training 25)
ENSEMBLES=(ensemble_rehrseg_paper_sr_nnunet ensemble_rehrseg_hrStem_sr_nnunet)
FRESH=(sr_nnunet sr_nnunet_labelFree rehrseg_paper rehrseg_hrStem "${ENSEMBLES[@]}")
for case in pat0003 pat0002; do
    "$PYTHON" benchmarks/brats_4x.py "${COMMON[@]}" --leave-one-out "$case" \
        --methods nnunet_lr_upsampled_sdf interp_nnunet "${FRESH[@]}" \
        --output "$RESULTS/$case.json" --figure "$RESULTS/$case.png"
done
"$PYTHON" benchmarks/brats_4x.py "${COMMON[@]}" --leave-one-out pat0004 \
    --methods sr_nnunet rehrseg_paper ensemble_rehrseg_paper_sr_nnunet sr_nnunet_labelFree \
    --output "$RESULTS/pat0004.json" --figure "$RESULTS/pat0004.png"
echo "decision run: every fold finished"
