#!/usr/bin/env bash
# One device call for the omni/MoE work: GPU tests, then the decode benchmark (default kernels and
# the Triton NVFP4 expert dequantizer). Usage (device machine, repo root): bash benchmarks/omni_gpu_check.sh
# Writes under $OUT: omni_gpu_tests.txt, omni_decode.json, omni_decode_triton.json. Budget: ~4 min on an H100.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-src} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
SHA=${COMMIT:-unknown}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/omni_gpu.txt"
python3 -m pytest -q -m gpu -p no:cacheprovider tests/multistage tests/kernels/test_moe_quant_experts.py \
  tests/kernels/test_moe_nvfp4_triton.py 2>&1 | tail -15 | tee "$OUT/omni_gpu_tests.txt"
timeout 240 python3 benchmarks/bench_omni_decode.py --out "$OUT/omni_decode.json" --commit "$SHA" 2>&1 | tail -12
timeout 180 python3 benchmarks/bench_omni_decode.py --modes bf16,nvfp4 --nvfp4-expert-dequant triton \
  --nvfp4-linear quantomni.kernels.nvfp4_triton:nvfp4_w4a16_linear \
  --out "$OUT/omni_decode_triton.json" --commit "$SHA" 2>&1 | tail -8
