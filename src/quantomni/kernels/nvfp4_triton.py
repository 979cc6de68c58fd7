"""NVFP4 on CUDA GPUs without FP4 tensor cores: E2M1 + E4M3 scales decoded in registers (Triton),
BF16 tensor-core math. Per call: M <= 16 -> fused decode-GEMV (weights read once, packed);
larger M -> one-pass dequantization to bf16 + cuBLAS GEMM.

W4A4 checkpoints run here as W4A16 (activations stay bf16): that is the weight-dequantizing path
the spec asks for on GPUs without FP4 tensor cores; the plan record says so, and the torch
backend (``nvfp4=torch``) keeps the exact W4A4 emulation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from quantomni.kernels.base import KernelSpec, LinearKernel

SMALL_M = 16


class TritonNvfp4Kernel(LinearKernel):
    name = "triton"
    format = "nvfp4"

    @classmethod
    def is_supported(cls, device):
        from quantomni.kernels.triton.support import is_supported

        ok, why = is_supported("nvfp4_w4a16_mm", device)
        if ok and torch.cuda.get_device_capability(device) < (8, 9):
            return False, "decodes E4M3 scales with the sm_89+ fp8 conversion"
        return ok, why or "Triton NVFP4 decode"

    @classmethod
    def can_implement(cls, spec: KernelSpec):
        if spec.in_features % 64:
            return False, f"needs in_features divisible by 64, layer has {spec.in_features}"
        if spec.dtype not in (torch.bfloat16, torch.float16):
            return False, f"outputs bf16/fp16, model dtype is {spec.dtype}"
        weight_only = getattr(spec.scheme, "weight_only", True)
        how = "W4A16" if weight_only else "W4A4 checkpoint run as W4A16 (no FP4 tensor cores; activations bf16)"
        return True, f"Triton NVFP4 decode: {how}"

    @staticmethod
    def apply(layer, x):
        from quantomni.kernels.triton.nvfp4_fast import nvfp4_dequantize_bf16, nvfp4_gemv

        if x.shape[0] <= SMALL_M:
            return nvfp4_gemv(x, layer.weight, layer.weight_scale, layer.weight_scale_2, layer.bias)
        w = nvfp4_dequantize_bf16(layer.weight, layer.weight_scale, layer.weight_scale_2, x.dtype)
        return F.linear(x, w, layer.bias)


def nvfp4_w4a16_linear(x, weight, weight_scale, weight_scale_2, bias=None):
    """Function form of the backend (benchmarks plug it in): x [M, K] bf16; weight uint8 [N, K/2];
    weight_scale e4m3 [N, K/16]; weight_scale_2 f32 []; returns [M, N] in x.dtype."""

    class _Layer:
        pass

    layer = _Layer()
    layer.weight, layer.weight_scale, layer.weight_scale_2, layer.bias = weight, weight_scale, weight_scale_2, bias
    return TritonNvfp4Kernel.apply(layer, x)
