#!/usr/bin/env bash
# The autoencoder study at the papers' settings, one workdir per model under
# runs/autoencoders/ (WORKDIR overrides the root). Each run resumes from its checkpoints
# (during pretraining at the right RBM and step), and a finished one (its summary.json
# says so) is skipped, so running this again goes on from wherever it stopped. Each
# finished run's small files (config.json, summary.json, metrics.jsonl) are copied to
# results/autoencoders/<name>/.
#
# On one core of the 2-core CPU machine the whole study takes about 4 hours, measured
# per epoch (the three deep autoencoders dominate: 200 fine-tuning epochs of about 13 s
# each, and for two of them some 25 minutes of RBM pretraining); a GPU should make it
# well under an hour.
#
#   bash launch/autoencoders.sh                   # everything
#   MODELS="pca vae vae2d" bash launch/autoencoders.sh
set -euo pipefail
cd "$(dirname "$0")/.."

WORKDIR=${WORKDIR:-runs/autoencoders}
MODELS=${MODELS:-"pca logistic_pca deep deep_random codes2d denoising vae vae2d dbn_classifier random_classifier"}
PYTHON=${PYTHON:-python}

keep() {  # a finished run's small files, for the README's table
  mkdir -p "results/autoencoders/$1"
  cp "$WORKDIR/$1"/{config.json,summary.json} "results/autoencoders/$1/"
  if [[ -f $WORKDIR/$1/metrics.jsonl ]]; then cp "$WORKDIR/$1/metrics.jsonl" "results/autoencoders/$1/"; fi
}

for name in $MODELS; do
  case $name in
    vae2d) args=(--model=vae --layers=500,2) ;;  # the 2-d latent manifold
    *) args=(--model="$name") ;;
  esac
  if "$PYTHON" -m launch.finished "$WORKDIR/$name"; then
    echo "== $name: done ($WORKDIR/$name/summary.json)"
  else
    echo "== $name: ${args[*]}"
    "$PYTHON" -m experiments.autoencoders "${args[@]}" --workdir="$WORKDIR/$name"
  fi
  keep "$name"
done
