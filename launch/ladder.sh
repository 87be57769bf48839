#!/usr/bin/env bash
# The chapter-6 ladder of Nielsen's "Neural Networks and Deep Learning", every rung
# with the book's hyperparameters, then its table (runs/ladder/ladder.md).
#
# Meant for one GPU: the expanded rungs train on 250,000 images for 40-60 epochs.
# Re-running skips finished rungs and resumes an interrupted one. Each finished run's
# small files are copied to $RESULTS/<rung>/seed=<seed> (default results/ladder), from
# which the README's table comes. Further flags go to launch.ladder, after the script's
# own, so they win; PYTHON picks the interpreter (default: python).
#
#   bash launch/ladder.sh                 # one seed
#   SEEDS=0,1,2 bash launch/ladder.sh     # mean and spread over three seeds
#   bash launch/ladder.sh --nets=dropout --seeds=0,1,2,3,4   # the ensemble's five members
set -euo pipefail
cd "$(dirname "$0")/.."

WORKDIR=${WORKDIR:-runs/ladder}
SEEDS=${SEEDS:-0}

"${PYTHON:-python}" -m launch.ladder \
  --nets=shallow,conv1,conv2,relu,expanded,fc2,dropout,ensemble \
  --seeds="$SEEDS" \
  --workdir="$WORKDIR" \
  --results="${RESULTS:-results/ladder}" \
  "$@"

# A quick CPU version of the cheap rungs (about 15 minutes on two cores):
#   python -m launch.ladder --nets=shallow,conv1,conv2,relu --epochs=5 --workdir=runs/ladder-cpu
