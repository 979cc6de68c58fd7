"""LayerNorm + AdaLN modulation + per-token FP8/INT8 quantization in one kernel.

Why: in DiT blocks (FLUX, SD3, Wan) the input of the QKV and MLP-in linears is
    y = LayerNorm(x, no affine) * (1 + scale) + shift
and a dynamic W8A8 linear then quantizes y per token. Producing the quantized y (and its per-row
scale) directly from x reads x once and writes 1 byte per element, removing both the normalized
bf16 intermediate and the separate activation-quant pass; the same (y_q, y_scale) feeds every
linear that consumes y (to_q, to_k, to_v).

Rows are tokens; token m belongs to batch m // tokens_per_batch, whose shift/scale rows are used.
Quantization semantics match act_quant (scale = rowmax|y| / QMAX clamped at 1e-12, fp8 saturating,
int8 round-half-even); a row with a NaN gets a NaN scale.
"""
from __future__ import annotations

import functools

import torch

from ._common import KernelInputError, check_tensor, interpret_mode, require_triton

_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
MAX_K = 32768  # the row is held in registers


@functools.lru_cache(maxsize=None)
def _build(interpret: bool):
    """Define the jitted kernel; cached per interpreter mode."""
    triton, tl = require_triton()

    @triton.jit
    def norm_mod_quant_kernel(
        x_ptr, shift_ptr, scale_ptr, q_ptr, s_ptr, M, tokens_per_batch,
        stride_xm, stride_mod, stride_qm, eps,
        K: tl.constexpr, QMAX: tl.constexpr, IS_INT8: tl.constexpr, STORE_F32: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK_K)
        ok = cols < K
        x = tl.load(x_ptr + row.to(tl.int64) * stride_xm + cols, mask=ok, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=0) / K
        diff = tl.where(ok, x - mean, 0.0)
        var = tl.sum(diff * diff, axis=0) / K
        rstd = 1.0 / tl.sqrt(var + eps)
        b = row // tokens_per_batch
        shift = tl.load(shift_ptr + b * stride_mod + cols, mask=ok, other=0.0).to(tl.float32)
        scale = tl.load(scale_ptr + b * stride_mod + cols, mask=ok, other=0.0).to(tl.float32)
        y = diff * rstd * (1.0 + scale) + shift
        y = tl.where(ok, y, 0.0)
        n_nan = tl.sum((y != y).to(tl.int32), axis=0)
        s = tl.maximum(tl.max(tl.abs(y), axis=0) / QMAX, 1e-12)
        s = tl.where(n_nan > 0, float("nan"), s)
        tl.store(s_ptr + row, s)
        raw = y / s
        is_nan = raw != raw
        v = tl.minimum(tl.maximum(raw, -QMAX), QMAX)
        q_row = q_ptr + row.to(tl.int64) * stride_qm + cols
        if IS_INT8:
            v = (v + 12582912.0) - 12582912.0  # round half to even (see act_quant)
            v = tl.where(is_nan, 0.0, v)
            tl.store(q_row, v.to(tl.int8), mask=ok)
        else:
            v = tl.where(is_nan, raw, v)
            if STORE_F32:
                tl.store(q_row, v, mask=ok)
            else:
                tl.store(q_row, v.to(tl.float8e4nv), mask=ok)

    return triton, norm_mod_quant_kernel


def layernorm_modulate_quant(x, shift, scale, out_dtype=torch.float8_e4m3fn, eps=1e-6):
    """y = LayerNorm(x) * (1 + scale) + shift, quantized per token, in one pass over x.

    x:         [M, K] bf16/fp16/fp32, rows = tokens of B batches (M % B == 0), K <= 32768
    shift:     [K] or [B, K] bf16/fp16/fp32 (AdaLN shift per batch)
    scale:     [K] or [B, K], same dtype family as shift (AdaLN scale per batch)
    out_dtype: torch.float8_e4m3fn (default) or torch.int8
    eps:       LayerNorm epsilon (FLUX uses 1e-6)
    returns:   (y_q [M, K] out_dtype, y_scale [M, 1] float32) with y ~= y_q * y_scale
    """
    check_tensor("x", x, _DTYPES, 2)
    M, K = x.shape
    if M == 0 or K == 0 or K > MAX_K:
        raise KernelInputError(f"x has shape {tuple(x.shape)}; need M >= 1 and 1 <= K <= {MAX_K}")
    if out_dtype not in (torch.float8_e4m3fn, torch.int8):
        raise KernelInputError(f"out_dtype is {out_dtype}; allowed: torch.float8_e4m3fn, torch.int8")
    mods = []
    for name, t in (("shift", shift), ("scale", scale)):
        if not isinstance(t, torch.Tensor) or t.dtype not in _DTYPES or t.dim() not in (1, 2) or t.shape[-1] != K:
            got = f"{tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise KernelInputError(f"{name} is {got}; expected a float tensor [{K}] or [B, {K}]")
        if t.device != x.device:
            raise KernelInputError(f"{name} is on {t.device}; x is on {x.device}")
        mods.append(t.reshape(-1, K).contiguous())
    shift2, scale2 = mods
    if shift2.shape != scale2.shape:
        raise KernelInputError(f"shift {tuple(shift2.shape)} and scale {tuple(scale2.shape)} differ in shape")
    batches = shift2.shape[0]
    if M % batches:
        raise KernelInputError(f"x has {M} rows, not a multiple of the {batches} batches of shift/scale")
    if x.stride(1) != 1:
        x = x.contiguous()
    interpret = interpret_mode()
    triton, kernel = _build(interpret)
    store_f32 = interpret and out_dtype == torch.float8_e4m3fn  # see act_quant: interpreter fp8 rounding
    q = torch.empty((M, K), dtype=torch.float32 if store_f32 else out_dtype, device=x.device)
    s = torch.empty((M, 1), dtype=torch.float32, device=x.device)
    block_k = triton.next_power_of_2(K)
    kernel[(M,)](
        x, shift2, scale2, q, s, M, M // batches, x.stride(0), shift2.stride(0), q.stride(0), float(eps),
        K=K, QMAX=127.0 if out_dtype == torch.int8 else 448.0, IS_INT8=out_dtype == torch.int8,
        STORE_F32=store_f32, BLOCK_K=block_k, num_warps=16 if block_k >= 8192 else 8 if block_k >= 2048 else 4,
    )
    return (q.to(out_dtype) if store_f32 else q), s
