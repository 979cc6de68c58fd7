"""FP8 linear through ``torch._scaled_mm`` (cuBLASLt FP8 GEMM, CUDA compute capability >= 8.9).

Fast accumulation (``use_fast_accum=True``) is on by default, as in torchao's FP8 inference
configs and vLLM's Hopper FP8 kernels: the tensor cores skip the periodic promotion of the partial
sums to full fp32, which makes the GEMM faster and adds an error far below the FP8 quantization
error itself (measured in tests/kernels/test_linear_kernels.py). ``QUANTOMNI_FP8_FAST_ACCUM=0``
turns it off (read when a layer's kernel is chosen and at every call).
"""

from __future__ import annotations

import functools
import os

import torch

from quantomni.kernels.base import KernelSpec, LinearKernel, cuda_capability
from quantomni.kernels.quant_ops import quantize_act_fp8


def fp8_fast_accum() -> bool:
    """``QUANTOMNI_FP8_FAST_ACCUM`` (default on): "1"/"0" (also true/false, yes/no, on/off).
    Called on every FP8 GEMM: one environment lookup, the parse is cached per value."""
    return _parse_fast_accum(os.environ.get("QUANTOMNI_FP8_FAST_ACCUM", "1"))


@functools.lru_cache(maxsize=8)
def _parse_fast_accum(value: str) -> bool:
    raw = value.strip().lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"QUANTOMNI_FP8_FAST_ACCUM={raw!r}: expected 1 or 0")


def accum_note() -> str:
    return "fast accumulation" if fp8_fast_accum() else "full-precision accumulation (QUANTOMNI_FP8_FAST_ACCUM=0)"


class ScaledMmFp8Kernel(LinearKernel):
    name = "scaled_mm"
    format = "fp8"
    aliases = ("cutlass", "cublas")

    @classmethod
    def is_supported(cls, device):
        cap = cuda_capability(torch.device(device))
        if cap is None:
            return False, f"needs a CUDA device, got {device}"
        if cap < (8, 9):
            return False, f"needs compute capability >= 8.9 (FP8 tensor cores), device has {cap[0]}.{cap[1]}"
        if not hasattr(torch, "_scaled_mm"):
            return False, "this torch build has no torch._scaled_mm"
        return True, f"CUDA sm_{cap[0]}{cap[1]}"

    @classmethod
    def can_implement(cls, spec: KernelSpec):
        if spec.in_features % 16 or spec.out_features % 16:
            return False, f"needs in/out features divisible by 16, layer is {spec.out_features}x{spec.in_features}"
        rowwise = spec.scheme is not None and (
            spec.scheme.weight_granularity == "channel" or spec.scheme.activation == "token"
        )
        if rowwise and spec.dtype != torch.bfloat16:
            return False, f"row-wise scaling needs bfloat16 output, model dtype is {spec.dtype}"
        return True, f"FP8 tensor-core GEMM, {accum_note()}"

    @staticmethod
    def apply(layer, x):
        s = layer.scheme
        x_q, x_scale = quantize_act_fp8(x, s.activation, layer.input_scale)
        w_scale = layer.weight_scale
        rowwise = x_scale.dim() > 0 or w_scale.dim() > 0
        if rowwise:
            m, n = x.shape[0], layer.weight.shape[0]
            x_scale = x_scale.reshape(-1, 1).expand(m, 1).contiguous() if x_scale.dim() else x_scale.expand(m, 1).contiguous()
            w_scale = w_scale.reshape(1, -1).expand(1, n).contiguous() if w_scale.dim() else w_scale.expand(1, n).contiguous()
        return torch._scaled_mm(
            x_q, layer.weight.t(), scale_a=x_scale, scale_b=w_scale, bias=layer.bias, out_dtype=x.dtype,
            use_fast_accum=fp8_fast_accum(),
        )
