#!/usr/bin/env bash
# The blind-spot studies of the README: four rungs of the ladder attacked, and the main
# job's net trained plainly, on FGSM images and on PGD images, then attacked. Each
# study's small files (config.json, summary.json, table.md) are copied to
# results/adversarial/<study>/, from which the README's tables come, and the trained
# nets' own (config.json, summary.json, metrics.jsonl) to results/adversarial/training/
# and results/adversarial/rungs/nets/.
#
# All of it runs on a CPU (about 1.5 core-hours on the 2-core machine); a GPU makes
# every part minutes. Re-running skips finished nets and attacks, and resumes an
# interrupted one.
#
#   bash launch/adversarial.sh            # both studies
#   STUDY=rungs bash launch/adversarial.sh
set -euo pipefail
cd "$(dirname "$0")/.."

WORKDIR=${WORKDIR:-runs/adversarial}
PYTHON=${PYTHON:-python}
STUDY=${STUDY:-training,rungs}
EPOCHS=${EPOCHS:-8}
# The quick recipe (experiments.adversarial.QUICK_RECIPE; tests/cli/test_launch_scripts.py
# checks the two agree), for every rung (the ladder's own runs keep the book's).
RECIPE=(--max_shift=1 --batch_size=100 --optimizer=nesterov --learning_rate=0.05
  --l2=0.02 --schedule=cosine)

keep() {  # keep a study's small files under results/
  mkdir -p "results/adversarial/$1"
  cp "$WORKDIR/$1"/{config.json,summary.json,table.md} "results/adversarial/$1/"
}

keep_net() {  # keep a trained net's own run (its clean accuracy, time) in folder $2
  mkdir -p "$2"
  cp "$1"/{config.json,summary.json,metrics.jsonl} "$2/"
}

if [[ ,$STUDY, == *,training,* ]]; then
  # The relu net trained plainly, on FGSM images, and on PGD images with 3 steps of
  # 2.5 eps / 3 (Madry et al. take 40 of 0.01), a CPU-sized run, its budget growing from
  # 0 over the first 2 epochs (from the full budget at once the book's small ReLU net
  # stays at chance); then the three attacked, Szegedy's search cut to 20 images.
  T=$WORKDIR/training
  "$PYTHON" -m experiments.adversarial --train=none,fgsm,pgd --target_epochs="$EPOCHS" \
    --adversarial_steps=3 --adversarial_warmup=2 --workdir="$T"
  "$PYTHON" -m experiments.adversarial --targets="$T/target,$T/target-fgsm,$T/target-pgd" \
    --distortion_size=20 --lbfgs_iterations=20 --workdir="$WORKDIR/trained"
  keep trained
  for net in target target-fgsm target-pgd; do
    keep_net "$T/$net" "results/adversarial/training/$net"
  done
fi

if [[ ,$STUDY, == *,rungs,* ]]; then
  targets=()
  for net in shallow conv2 relu dropout; do
    workdir=$WORKDIR/nets/$net
    # The relu rung with this recipe is the training study's plain net: kept, not redone.
    [[ $net == relu && -f $WORKDIR/training/target/summary.json ]] && workdir=$WORKDIR/training/target
    # The dropout rung trains on the book's 5x expanded set: a fifth of the epochs.
    epochs=$EPOCHS
    [[ $net == dropout ]] && epochs=$(((EPOCHS + 4) / 5))
    "$PYTHON" -m experiments.mnist_convnet --net="$net" --epochs="$epochs" "${RECIPE[@]}" \
      --workdir="$workdir"
    keep_net "$workdir" "results/adversarial/rungs/nets/$net"
    targets+=("$workdir")
  done
  "$PYTHON" -m experiments.adversarial --targets="$(IFS=,; echo "${targets[*]}")" \
    --workdir="$WORKDIR/rungs"
  keep rungs
fi
