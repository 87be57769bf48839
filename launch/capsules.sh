#!/usr/bin/env bash
# The ablation of Sabour, Frosst and Hinton, "Dynamic Routing Between Capsules" (NIPS
# 2017), table 1: the baseline CNN, and CapsNet with 1 or 3 routing iterations, each
# with and without the reconstruction decoder. Each run has its own workdir under
# $WORKDIR; re-running skips finished runs (their summary.json) and resumes a stopped
# one from its last checkpoint. Each run's small files (config.json, summary.json,
# metrics.jsonl) are copied to results/capsules/<run>/, from which the README's table
# comes.
#
# Made for a GPU: on one core of the project's 2-core CPU a training step at batch 128
# took 3.0 s for the CapsNet and 29 s for the baseline (its 28x28x256 convolutions:
# about 2 GMAC per image), that is about 21 minutes and 3.3 hours per epoch of 50,000
# images with validation. The paper's numbers come from long training; EPOCHS sets how long.
#
#   bash launch/capsules.sh                   # all five runs
#   EPOCHS=100 RUNS=r3_recon,baseline bash launch/capsules.sh
set -euo pipefail
cd "$(dirname "$0")/.."

WORKDIR=${WORKDIR:-runs/capsules}
EPOCHS=${EPOCHS:-50}
RUNS=${RUNS:-baseline,r1_norecon,r1_recon,r3_norecon,r3_recon}
EXTRA=("$@")  # further flags for every run, e.g. --seed=1
PYTHON=${PYTHON:-python}

declare -A FLAGS=(
  [baseline]="--model=baseline"
  [r1_norecon]="--routing_iterations=1 --noreconstruction"
  [r1_recon]="--routing_iterations=1 --reconstruction"
  [r3_norecon]="--routing_iterations=3 --noreconstruction"
  [r3_recon]="--routing_iterations=3 --reconstruction"
)

for run in ${RUNS//,/ }; do
  [[ -n ${FLAGS[$run]+x} ]] || { echo "unknown run '$run'; choose from ${!FLAGS[*]}" >&2; exit 1; }
  workdir=$WORKDIR/$run
  if "$PYTHON" -m launch.finished "$workdir" --epochs="$EPOCHS"; then
    echo "$run: done ($workdir/summary.json)"
  else
    # shellcheck disable=SC2086  # the flags are words
    "$PYTHON" -m experiments.capsules ${FLAGS[$run]} --epochs="$EPOCHS" --workdir="$workdir" \
      "${EXTRA[@]}"
  fi
  mkdir -p "results/capsules/$run"
  cp "$workdir"/{config.json,summary.json,metrics.jsonl} "results/capsules/$run/"
done

# The table: the paper's test error beside ours, for every finished run under $WORKDIR.
"$PYTHON" -c '
import sys
from pathlib import Path
from launch import readme_tables
print(readme_tables.capsules_table(Path(sys.argv[1])))
' "$WORKDIR"
