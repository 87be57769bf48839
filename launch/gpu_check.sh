#!/usr/bin/env bash
# The GPU measurements the README reports, in one go on one H100/H200 (at most 9 minutes:
# each step has its own time limit, so a slow one cannot starve the rest):
#   1. MNIST ladder speed: the dropout rung on the expanded set, batch 10 and 100,
#      one net and the five-net ensemble as one program (targets: <= 3.3 s and
#      <= 0.65 s per epoch; the ensemble within twice one net's time);
#   2. ImageNet-scale training throughput on synthetic data (target: ResNet-50,
#      bf16, batch 256, above 7,000 images/s);
#   3. the book's dropout rung, its full 40 epochs (book: 99.60%).
# Each step's output goes to $OUT (default runs/gpu), one file per step.
#
# On a lent GPU machine, after ../shared/device/stage.sh here:
#   source .device/gpu_env.sh; bash launch/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
PYTHON=${PYTHON:-python}
mkdir -p "$OUT"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"

timeout 180 "$PYTHON" -m launch.benchmark --nets=dropout --batch_sizes=10,100 --ensemble=1,5 \
  --ensemble_layouts=vmap,unrolled \
  2>&1 | grep -v "^[IW][0-9]" | tee "$OUT/bench_mnist.md"

timeout 120 "$PYTHON" -m launch.bench_imagenet --models=resnet50 --batch_size=256 \
  2>&1 | grep -v "^[IW][0-9]" | tee "$OUT/bench_imagenet.md"

timeout 220 "$PYTHON" -m experiments.mnist_convnet --net=dropout --workdir="$OUT/dropout" \
  2>&1 | grep -v "^[IW][0-9]\|step .*/" | tee "$OUT/dropout.log"
cp "$OUT/dropout/summary.json" "$OUT/dropout_summary.json" 2>/dev/null || true
