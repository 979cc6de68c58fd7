"""NVFP4 weights on GPUs without FP4 tensor cores (Hopper): decode E2M1 + E4M3 block scales in
registers, then BF16 tensor-core MMA.

* ``nvfp4_gemv``: M <= 16 (decode). Each program owns BLOCK_N output channels and a K slice
  (split-K for parallelism), streams the packed weight once (0.5625 bytes per weight with scales)
  and accumulates ``x @ w.T`` with ``tl.dot`` (M padded to 16). Memory-bound by design.
* ``nvfp4_dequantize_bf16``: one pass writes the dense bf16 weight (value x block scale x global
  scale) for a cuBLAS GEMM at large M, where a fused decode inside the K loop is slower.

E2M1 value x E4M3 block scale has at most 5 significant bits, so it is exact in bf16; the global
scale is applied in fp32 in the GEMV epilogue (exact path) and folded into the bf16 weight in the
dequantizer (one rounding, 2**-9 relative).
"""

from __future__ import annotations

import torch


import triton
import triton.language as tl

# Imported only when the Triton NVFP4 backend runs (kernels/nvfp4_triton.py imports this lazily).


@triton.jit
def _decode(p, s, BN: tl.constexpr, BK: tl.constexpr):
    """p: uint8 [BN, BK/2] packed codes; s: uint8 [BN, BK/16] E4M3 scale bytes -> bf16 [BN, BK].

    E2M1 -> bf16 by bit arithmetic: sign to bit 15; exponent e>0 -> field e+126, mantissa bit -> bit 6;
    e == 0 is 0 or 0.5 (0x3F00). value x block scale has <= 6 significant bits: exact in bf16.
    """
    lo = p & 0xF
    hi = p >> 4
    c = tl.reshape(tl.join(lo, hi), (BN, BK)).to(tl.int32)  # join puts lo first: low nibble = even column
    sign = (c & 8) << 12
    e = (c >> 1) & 3
    m = c & 1
    bits = tl.where(e == 0, sign | (m * 0x3F00), sign | ((e + 126) << 7) | (m << 6))
    val = bits.to(tl.int16).to(tl.bfloat16, bitcast=True)
    scale = s.to(tl.float8e4nv, bitcast=True).to(tl.bfloat16)
    val = tl.reshape(val, (BN, BK // 16, 16)) * tl.reshape(scale, (BN, BK // 16, 1))
    return tl.reshape(val, (BN, BK))


@triton.jit
def gemv_kernel(x_ptr, w_ptr, s_ptr, out_ptr, gscale_ptr, bias_ptr, M, N, K, stride_xm, stride_wn, stride_sn,
                stride_om, K_PER_SPLIT, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                ATOMIC: tl.constexpr, HAS_BIAS: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = tl.arange(0, BLOCK_M)
    nmask = rn < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_start = pid_k * K_PER_SPLIT
    for kk in tl.range(0, K_PER_SPLIT, BLOCK_K, num_stages=3):
        k0 = k_start + kk
        rk = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + rm[:, None] * stride_xm + rk[None, :], mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)
        rb = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        p = tl.load(w_ptr + rn[:, None] * stride_wn + rb[None, :], mask=nmask[:, None] & (rb[None, :] < K // 2), other=0)
        rs = k0 // 16 + tl.arange(0, BLOCK_K // 16)
        s = tl.load(s_ptr + rn[:, None] * stride_sn + rs[None, :], mask=nmask[:, None] & (rs[None, :] < K // 16), other=0)
        w = _decode(p, s, BLOCK_N, BLOCK_K)
        acc += tl.dot(x.to(tl.bfloat16), tl.trans(w))
    acc = acc * tl.load(gscale_ptr)
    omask = (rm[:, None] < M) & nmask[None, :]
    optrs = out_ptr + rm[:, None] * stride_om + rn[None, :]
    if ATOMIC:
        tl.atomic_add(optrs, acc, mask=omask)
    else:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
        tl.store(optrs, acc.to(out_ptr.dtype.element_ty), mask=omask)

@triton.jit
def dequant_kernel(w_ptr, s_ptr, out_ptr, gscale_ptr, N, K, stride_wn, stride_sn, stride_on,
                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k0 = tl.program_id(1) * BLOCK_K
    nmask = rn < N
    rb = k0 // 2 + tl.arange(0, BLOCK_K // 2)
    rs = k0 // 16 + tl.arange(0, BLOCK_K // 16)
    p = tl.load(w_ptr + rn[:, None] * stride_wn + rb[None, :], mask=nmask[:, None] & (rb[None, :] < K // 2), other=0)
    s = tl.load(s_ptr + rn[:, None] * stride_sn + rs[None, :], mask=nmask[:, None] & (rs[None, :] < K // 16), other=0)
    w = _decode(p, s, BLOCK_N, BLOCK_K) * tl.load(gscale_ptr)
    rk = k0 + tl.arange(0, BLOCK_K)
    tl.store(out_ptr + rn[:, None] * stride_on + rk[None, :], w.to(out_ptr.dtype.element_ty),
             mask=nmask[:, None] & (rk[None, :] < K))





def _kernels():
    return triton, gemv_kernel, dequant_kernel


def _check(weight, weight_scale, weight_scale_2):
    if weight.dtype != torch.uint8 or weight.dim() != 2:
        raise ValueError(f"weight: expected uint8 [N, K/2], got {weight.dtype} {tuple(weight.shape)}")
    n, k = weight.shape[0], weight.shape[1] * 2
    if k % 64:
        raise ValueError(f"in_features must be a multiple of 64 for the Triton NVFP4 kernels, got {k}")
    if tuple(weight_scale.shape) != (n, k // 16):
        raise ValueError(f"weight_scale: expected [{n}, {k // 16}], got {tuple(weight_scale.shape)}")
    if weight_scale_2.numel() != 1:
        raise ValueError("weight_scale_2: expected one float32 value")
    return n, k


def nvfp4_gemv(x, weight, weight_scale, weight_scale_2, bias=None):
    """x: [M <= 16, K] bf16/fp16 CUDA; weight: uint8 [N, K/2]; weight_scale: e4m3 (or its uint8
    bytes) [N, K/16]; weight_scale_2: f32 one element; bias: [N] or None. Returns [M, N] in x.dtype."""
    n, k = _check(weight, weight_scale, weight_scale_2)
    m = x.shape[0]
    if m > 16 or x.shape[1] != k:
        raise ValueError(f"x: expected [M <= 16, {k}], got {tuple(x.shape)}")
    triton, gemv, _ = _kernels()
    x = x.contiguous()
    s8 = weight_scale.view(torch.uint8)
    gscale = weight_scale_2.reshape(1).float()
    block_n, block_k = 64, 128
    n_tiles = triton.cdiv(n, block_n)
    # enough programs to cover ~4 waves of 132 SMs; each split must be a whole number of BLOCK_K
    split = 1
    while n_tiles * split < 528 and k % (block_k * split * 2) == 0:
        split *= 2
    if split == 1:  # one pass: bias and the output cast happen in the kernel's epilogue
        out = torch.empty(m, n, device=x.device, dtype=x.dtype)
    else:  # split-K partial sums meet in an fp32 buffer
        out = torch.zeros(m, n, device=x.device, dtype=torch.float32)
    has_bias = bias is not None and split == 1
    gemv[(n_tiles, split)](x, weight, s8, out, gscale, bias if has_bias else gscale, m, n, k, x.stride(0),
                           weight.stride(0), s8.stride(0), out.stride(0), k // split, BLOCK_M=16, BLOCK_N=block_n,
                           BLOCK_K=block_k, ATOMIC=split > 1, HAS_BIAS=has_bias, num_warps=4)
    if split == 1:
        return out
    if bias is not None:
        out += bias.float()
    return out.to(x.dtype)


def nvfp4_dequantize_bf16(weight, weight_scale, weight_scale_2, dtype=torch.bfloat16):
    """weight: uint8 [N, K/2]; weight_scale: e4m3 [N, K/16]; weight_scale_2: f32 one element.
    Returns the dense weight [N, K] in dtype (global scale folded in)."""
    n, k = _check(weight, weight_scale, weight_scale_2)
    triton, _, dequant = _kernels()
    out = torch.empty(n, k, device=weight.device, dtype=dtype)
    s8 = weight_scale.view(torch.uint8)
    block_n, block_k = 32, 256
    dequant[(triton.cdiv(n, block_n), triton.cdiv(k, block_k))](
        weight, s8, out, weight_scale_2.reshape(1).float(), n, k, weight.stride(0), s8.stride(0), out.stride(0),
        BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4)
    return out
