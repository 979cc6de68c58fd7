"""FP8 (E4M3) W8A8 GEMM in Triton with scales, bias and output cast fused into the epilogue.

Why: an alternative to cuBLAS torch._scaled_mm whose epilogue takes per-token x scales, per-channel
w scales and bias in one kernel. On Hopper Triton accumulates fp8 products in the tensor core's
fast (reduced-precision) mode, like _scaled_mm(use_fast_accum=True).
"""
from __future__ import annotations

import torch

from ._common import KernelInputError, check_bias, check_out_dtype, scale_vector
from .act_quant import per_token_quant_fp8
from .int8_gemm import _check_operands
from ._scaled_mm_core import launch_scaled_mm


def fp8_scaled_mm(x_q, w_q, x_scale, w_scale, bias=None, out_dtype=torch.bfloat16):
    """out = (x_q @ w_q.T) * x_scale * w_scale + bias with fp32 accumulation, fused epilogue.

    x_q:       [M, K] float8_e4m3fn, K % 16 == 0
    w_q:       [N, K] float8_e4m3fn, row-major as stored
    x_scale:   float32 [M, 1] or [M] (per token), or a single value (per tensor)
    w_scale:   float32 [N] or [N, 1] (per channel), or a single value (per tensor)
    bias:      [N] bf16/fp16/fp32 or None
    out_dtype: torch.bfloat16 (default), torch.float16 or torch.float32
    returns:   [M, N] out_dtype
    """
    x_q, w_q = _check_operands(x_q, w_q, torch.float8_e4m3fn)
    if x_q.shape[1] % 16 != 0:
        raise KernelInputError(f"x_q has K={x_q.shape[1]}; the FP8 GEMM needs K % 16 == 0 (as cuBLAS does)")
    check_out_dtype(out_dtype)
    M, N = x_q.shape[0], w_q.shape[0]
    xs = scale_vector("x_scale", x_scale, M, x_q.device)
    ws = scale_vector("w_scale", w_scale, N, x_q.device)
    check_bias(bias, N, x_q.device)
    return launch_scaled_mm(x_q, w_q, xs, ws, bias, out_dtype, acc_int32=False)


def fp8_linear(x, w_q, w_scale, bias=None, out_dtype=None):
    """Dynamic FP8 linear: fused per-token quant of x (one pass), then fp8_scaled_mm.

    x:         [M, K] bf16/fp16/fp32
    w_q:       [N, K] float8_e4m3fn
    w_scale:   float32 [N] (or a single value)
    bias:      [N] or None
    out_dtype: defaults to x.dtype
    returns:   [M, N]
    """
    x_q, x_scale = per_token_quant_fp8(x)
    return fp8_scaled_mm(x_q, w_q, x_scale, w_scale, bias, out_dtype or x.dtype)
