#!/usr/bin/env bash
# Expanding the training data (Nielsen, chapters 3 and 6; Simard, Steinkraus & Platt 2003):
# accuracy against the number of training images, with and without the book's one-pixel
# shifts and random shifts, rotations, skews and elastic distortions, all made on the
# device per mini-batch (experiments/expanded_data.py has the whole story).
#
#   launch/expanded.sh                    quick: 500-5,000 images, none/fixed/elastic (CPU, minutes)
#   launch/expanded.sh full               1,000-50,000 images, every expansion, 3 seeds, 60 epochs (a GPU)
#   launch/expanded.sh dropout_elastic    the book's dropout net + elastic distortions, aiming
#                                         above 99.65% test accuracy as one net (a GPU)
#   launch/expanded.sh full --expansions=none,fixed,fixed+elastic --elastic_alpha=30
#                                         (other flags go to the module)
#
# The results go to $WORKDIR (default runs/expanded-<preset>): table.md, summary.json and
# more_data.png. A stopped study resumes: run the same command. PYTHON picks the
# interpreter (default: python).
set -euo pipefail
cd "$(dirname "$0")/.."

preset=quick
if [[ $# -gt 0 && $1 != -* ]]; then
  preset=$1
  shift
fi
case $preset in
  quick | full | dropout_elastic) ;;
  *)
    echo "expanded.sh: error: the preset is quick, full or dropout_elastic, not '$preset'" >&2
    exit 2
    ;;
esac
workdir=${WORKDIR:-runs/expanded-$preset}

exec "${PYTHON:-python}" -m experiments.expanded_data --preset="$preset" --workdir="$workdir" "$@"
