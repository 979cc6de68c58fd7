"""Fused per-token activation quantization (FP8 E4M3 and INT8) in one pass over x.

Why: a dynamic W8A8 linear must quantize its input every call; doing the row max, the
scale and the cast in one kernel reads x once (for rows up to MAX_SINGLE_PASS_K wide)
instead of the 4-5 memory passes of the eager torch expression.

Semantics (matching the torch reference used in the tests):
  scale[m] = max(max_k |x[m, k]|, ~0) / QMAX, clamped below at 1e-12 (QMAX = 448 or 127)
  fp8:  x_q = clamp(x / scale, -448, 448).to(float8_e4m3fn)   (round to nearest even)
  int8: x_q = clamp(round_half_to_even(x / scale), -127, 127)  (same as torch.round)
  a row holding a NaN gets scale = NaN (its dequantized values are NaN); other rows are unaffected.
  For int8, the NaN row's x_q is 0 (int8 has no NaN).
"""
from __future__ import annotations

import functools

import torch

from ._common import KernelInputError, check_tensor, interpret_mode, require_triton

FP8_MAX = 448.0
INT8_MAX = 127.0
SCALE_MIN = 1e-12
#: rows up to this many (power-of-two padded) elements are held in registers and read once
MAX_SINGLE_PASS_K = 16384
_INPUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@functools.lru_cache(maxsize=None)
def _build(interpret: bool):
    """Define the jitted kernel; cached per interpreter mode (TRITON_INTERPRET is read when decorating)."""
    triton, tl = require_triton()

    @triton.jit
    def per_token_quant_kernel(
        x_ptr, q_ptr, s_ptr, M, stride_xm, stride_qm, K: tl.constexpr,
        QMAX: tl.constexpr, IS_INT8: tl.constexpr, SINGLE_PASS: tl.constexpr, STORE_F32: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < M
        cols = tl.arange(0, BLOCK_K)
        x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_xm
        q_rows = q_ptr + rows.to(tl.int64)[:, None] * stride_qm
        if SINGLE_PASS:
            mask = row_ok[:, None] & (cols[None, :] < K)
            x = tl.load(x_rows + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            amax = tl.max(tl.abs(x), axis=1)
            n_nan = tl.sum((x != x).to(tl.int32), axis=1)
        else:
            amax = tl.zeros([BLOCK_M], dtype=tl.float32)
            n_nan = tl.zeros([BLOCK_M], dtype=tl.int32)
            for kb in range(0, tl.cdiv(K, BLOCK_K)):
                c = kb * BLOCK_K + cols
                mask = row_ok[:, None] & (c[None, :] < K)
                xb = tl.load(x_rows + c[None, :], mask=mask, other=0.0).to(tl.float32)
                amax = tl.maximum(amax, tl.max(tl.abs(xb), axis=1))
                n_nan += tl.sum((xb != xb).to(tl.int32), axis=1)
        scale = tl.maximum(amax / QMAX, 1e-12)
        scale = tl.where(n_nan > 0, float("nan"), scale)
        tl.store(s_ptr + rows, scale, mask=row_ok)
        # single pass: BLOCK_K >= K, so this loop runs once on the x held in registers
        for kb in range(0, tl.cdiv(K, BLOCK_K)):
            c = kb * BLOCK_K + cols
            mask = row_ok[:, None] & (c[None, :] < K)
            if SINGLE_PASS:
                xb = x  # still in registers: x is read from memory once
            else:
                xb = tl.load(x_rows + c[None, :], mask=mask, other=0.0).to(tl.float32)
            raw = xb / scale[:, None]
            is_nan = raw != raw
            v = tl.minimum(tl.maximum(raw, -QMAX), QMAX)
            if IS_INT8:
                # fp32 round-half-to-even via the 1.5*2^23 trick (exact for |v| <= 2^22);
                # libdevice.rint is not available under the interpreter.
                v = (v + 12582912.0) - 12582912.0
                v = tl.where(is_nan, 0.0, v)
                tl.store(q_rows + c[None, :], v.to(tl.int8), mask=mask)
            else:
                v = tl.where(is_nan, raw, v)
                if STORE_F32:
                    tl.store(q_rows + c[None, :], v, mask=mask)
                else:
                    tl.store(q_rows + c[None, :], v.to(tl.float8e4nv), mask=mask)

    return triton, per_token_quant_kernel


def _per_token_quant(x: torch.Tensor, out_dtype: torch.dtype, qmax: float):
    check_tensor("x", x, _INPUT_DTYPES, 2)
    if x.stride(1) != 1:
        x = x.contiguous()
    M, K = x.shape
    if M == 0 or K == 0:
        raise KernelInputError(f"x has shape {tuple(x.shape)}; M and K must be at least 1")
    interpret = interpret_mode()
    triton, kernel = _build(interpret)
    # Triton 3.6's interpreter rounds float32 -> float8 wrongly (e.g. 124.3 -> 64), so under the
    # interpreter the kernel stores the clamped float32 values and torch does the final cast.
    store_f32 = interpret and out_dtype != torch.int8
    q = torch.empty((M, K), dtype=torch.float32 if store_f32 else out_dtype, device=x.device)
    s = torch.empty((M, 1), dtype=torch.float32, device=x.device)
    k_pow2 = triton.next_power_of_2(K)
    single = k_pow2 <= MAX_SINGLE_PASS_K
    block_k = k_pow2 if single else 4096
    block_m = max(1, min(16, 2048 // block_k)) if single else 1
    elems = block_k * block_m
    num_warps = 16 if elems >= 16384 else 8 if elems >= 4096 else 4
    grid = (triton.cdiv(M, block_m),)
    kernel[grid](
        x, q, s, M, x.stride(0), q.stride(0), K=K,
        QMAX=qmax, IS_INT8=out_dtype == torch.int8, SINGLE_PASS=single, STORE_F32=store_f32,
        BLOCK_M=block_m, BLOCK_K=block_k, num_warps=num_warps,
    )
    if store_f32:
        q = q.to(out_dtype)
    return q, s


def per_token_quant_fp8(x: torch.Tensor):
    """Quantize each row of x to FP8 E4M3 with its own scale, in one kernel.

    x:       [M, K] bfloat16 / float16 / float32, CUDA (or CPU under TRITON_INTERPRET=1)
    returns: (x_q [M, K] float8_e4m3fn, scale [M, 1] float32) with x ~= x_q * scale
    """
    return _per_token_quant(x, torch.float8_e4m3fn, FP8_MAX)


def per_token_quant_int8(x: torch.Tensor):
    """Quantize each row of x to symmetric INT8 (round half to even) with its own scale.

    x:       [M, K] bfloat16 / float16 / float32, CUDA (or CPU under TRITON_INTERPRET=1)
    returns: (x_q [M, K] int8 in [-127, 127], scale [M, 1] float32) with x ~= x_q * scale
    """
    return _per_token_quant(x, torch.int8, INT8_MAX)
