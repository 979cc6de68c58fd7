#!/usr/bin/env bash
# One device call: install carried wheels, run the GPU tests, the linear benchmark and the demo on CUDA.
# Usage (device machine, repo root): bash benchmarks/gpu_check.sh  (writes under $OUT)
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:src
else
  export PYTHONPATH=src
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -m pytest -q -m gpu tests -p no:cacheprovider 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"
python3 benchmarks/bench_linear.py --out "$OUT/bench_linear.json" 2>&1 | tail -14
python3 -m quantomni.cli.main demo --out /tmp/demo --device cuda 2>&1 | tail -8 | tee "$OUT/demo_cuda.txt"
