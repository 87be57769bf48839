#!/usr/bin/env bash
# Nielsen, "Neural Networks and Deep Learning", chapter 6: sigmoid, tanh and ReLU units
# in the two-ConvPool net, several seeds each, and the book's open question of whether
# sigmoid can keep up with tanh (experiments/activations.py has the whole story).
#
#   launch/activations.sh              quick: 5,000 images, 8 epochs, 2 seeds (two CPU cores, minutes)
#   launch/activations.sh full         the book's study: 60 epochs, 5 seeds (a GPU; 3 h on two CPU cores)
#   launch/activations.sh full --variants=sigmoid,tanh --seeds=3   (other flags go to the module)
#
# The results go to $WORKDIR (default runs/activations-<preset>): table.md, summary.json,
# activations.png and sigmoid_vs_tanh.png. A stopped study resumes: run the same command.
# PYTHON picks the interpreter (default: python).
set -euo pipefail
cd "$(dirname "$0")/.."

preset=quick
if [[ $# -gt 0 && $1 != -* ]]; then
  preset=$1
  shift
fi
case $preset in
  quick | full) ;;
  *)
    echo "activations.sh: error: the preset is quick or full, not '$preset'" >&2
    exit 2
    ;;
esac
workdir=${WORKDIR:-runs/activations-$preset}

exec "${PYTHON:-python}" -m experiments.activations --preset="$preset" --workdir="$workdir" "$@"
