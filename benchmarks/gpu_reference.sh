#!/usr/bin/env bash
# Issue 6's reference run, and the GPU figures of issues 3 and 4, in one call on
# a lent GPU machine (the device tool). Prepare here first:
#   mkdir -p .gpu && cp -r ../shared/device/wheels ../shared/data/cifar10-jpeg.npz \
#       ../shared/data/build_cifar10.py .gpu/ && echo /.gpu/ >> .git/info/exclude
# then run `bash benchmarks/gpu_reference.sh` there with carry [".gpu"]. About
# 10 minutes on an H100: the benchmarks (seed vs nbhelpers), then the published reference
# run (python -m nbhelpers.jobs.reference: 01-04 at full size, 05/06 at small). Six files come back in $OUT.
set -euo pipefail
OUT=${OUT:-build/gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/wheels/*.whl
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
python3 .gpu/build_cifar10.py data
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv | tee "$OUT/gpu.txt"
{
    python3 benchmarks/train_step.py --device cuda
    python3 benchmarks/optimizer_model.py --device cuda --width 32
    python3 benchmarks/optimizer_model.py --device cuda --width 1024 --repeats 10
    python3 benchmarks/data_pipeline.py --device cuda
} 2>&1 | tee "$OUT/benchmarks.log"
python3 -m nbhelpers.jobs.reference --size full --name gpu-full 2>&1 | tee "$OUT/series.log"
python3 benchmarks/make_reference.py runs/reference-gpu-full benchmarks/results/train_step_cuda_w1024.json \
    | tee "$OUT/reference.json"
tar czf "$OUT/reference-run.tgz" benchmarks/results figures/*.png reference/gpu-full README.md \
    runs/reference-gpu-full/run/history.csv runs/reference-gpu-full/run/config.json
