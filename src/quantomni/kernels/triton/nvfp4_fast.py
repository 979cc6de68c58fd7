"""NVFP4 weights on GPUs without FP4 tensor cores (Hopper): decode E2M1 + E4M3 block scales in
registers, then BF16 tensor-core MMA.

* ``nvfp4_gemv``: M <= 16 (decode); M == 1 without tensor cores. Each program owns BLOCK_N output channels and a K slice
  (split-K only when there are too few column tiles to fill the GPU), streams the packed weight
  once (0.5625 bytes per weight with scales) and accumulates ``x @ w.T`` with ``tl.dot`` (M padded
  to 16). Low and high nibbles are decoded as two half-width tiles and multiplied with the even and
  odd columns of x, so no register shuffle (join/interleave) is needed. Memory-bound by design.
* ``nvfp4_dequantize_bf16``: one pass writes the dense bf16/fp16 weight (value x block scale x
  global scale) for a cuBLAS GEMM at large M. Each packed byte becomes one 32-bit word holding its
  two 16-bit values (low nibble = even column = low half-word, little-endian), stored as int32: no
  interleave shuffle and 16-byte stores.

E2M1 is decoded by placing its bits in a float32 (value x 2**-126, exact; see ``_e2m1_lo``), the
2**126 being folded into the scales. E2M1 value x E4M3 block scale has at most 6 significant bits,
so it is exact in bf16; the global scale is applied in fp32 in the GEMV epilogue and folded into the
dense weight in the dequantizer (one rounding, 2**-9 relative in bf16). M == 1 uses CUDA-core
multiply-reduce instead of a 16-row padded MMA.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Imported only when the Triton NVFP4 backend runs (kernels/nvfp4_triton.py imports this lazily).



@triton.jit
def _e2m1_lo(p):
    """p: int32 packed bytes -> float32 (E2M1 value of the low nibble) x 2**-126, by placing the
    nibble's sign bit at bit 31 and its 3 exponent/mantissa bits at bits 24..22. Exact for all 16
    codes: the exponent field is e (e = 0 gives the fp32 subnormal 0.5 x 2**-126 for code 1). The
    caller folds 2**126 into the scales (as 2**63 x 2**63, so nothing overflows). 5 integer ops."""
    return (((p & 0x8) << 28) | ((p & 0x7) << 22)).to(tl.float32, bitcast=True)


@triton.jit
def _e2m1_hi(p):
    """As _e2m1_lo, for the high nibble."""
    return (((p & 0x80) << 24) | ((p & 0x70) << 18)).to(tl.float32, bitcast=True)


@triton.jit
def gemv_kernel(x_ptr, w_ptr, s_ptr, out_ptr, gscale_ptr, bias_ptr, M, N, K, stride_xm, stride_wn, stride_sn,
                stride_om, K_PER_SPLIT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_K: tl.constexpr, NUM_STAGES: tl.constexpr, ATOMIC: tl.constexpr, HAS_BIAS: tl.constexpr,
                USE_DOT: tl.constexpr, DOT_F32: tl.constexpr):
    """out[:M, n-tile] (+)= x @ w.T for one K slice. USE_DOT: tensor-core dot with M padded to
    BLOCK_M = 16; otherwise (M == 1) a CUDA-core multiply-reduce, cheaper than a padded MMA."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    HALF: tl.constexpr = BLOCK_K // 2
    GROUPS: tl.constexpr = BLOCK_K // 16
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = tl.arange(0, BLOCK_M)
    nmask = rn < N
    mmask = rm < M
    rn_safe = tl.where(nmask, rn, 0)  # out-of-range columns read row 0; their results are never stored
    rb = tl.arange(0, HALF)
    rs = tl.arange(0, GROUPS)
    if USE_DOT:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    else:
        acc1 = tl.zeros((BLOCK_N,), dtype=tl.float32)
    k_start = pid_k * K_PER_SPLIT
    for kk in tl.range(0, K_PER_SPLIT, BLOCK_K, num_stages=NUM_STAGES):
        k0 = k_start + kk
        # packed bytes b -> columns 2b (low nibble) and 2b + 1 (high nibble); K is a multiple of BLOCK_K
        p = tl.load(w_ptr + rn_safe[:, None] * stride_wn + (k0 // 2 + rb)[None, :]).to(tl.int32)
        s = tl.load(s_ptr + rn_safe[:, None] * stride_sn + (k0 // 16 + rs)[None, :])
        # block scale x 2**63: decoded values are (true x 2**-126) x (scale x 2**63) = true x scale x 2**-63
        scale = tl.reshape(s.to(tl.float8e4nv, bitcast=True).to(tl.float32) * 9.223372036854775808e18,
                           (BLOCK_N, GROUPS, 1))
        w_lo = tl.reshape(tl.reshape(_e2m1_lo(p), (BLOCK_N, GROUPS, 8)) * scale, (BLOCK_N, HALF))
        w_hi = tl.reshape(tl.reshape(_e2m1_hi(p), (BLOCK_N, GROUPS, 8)) * scale, (BLOCK_N, HALF))
        if USE_DOT:
            x_even = tl.load(x_ptr + rm[:, None] * stride_xm + (k0 + 2 * rb)[None, :], mask=mmask[:, None], other=0.0)
            x_odd = tl.load(x_ptr + rm[:, None] * stride_xm + (k0 + 2 * rb + 1)[None, :], mask=mmask[:, None], other=0.0)
            if DOT_F32:  # the CPU interpreter mishandles in-kernel bf16 dot operands; same values in fp32
                acc = tl.dot(x_even.to(tl.float32), tl.trans(w_lo), acc)
                acc = tl.dot(x_odd.to(tl.float32), tl.trans(w_hi), acc)
            else:
                acc = tl.dot(x_even.to(tl.bfloat16), tl.trans(w_lo.to(tl.bfloat16)), acc)
                acc = tl.dot(x_odd.to(tl.bfloat16), tl.trans(w_hi.to(tl.bfloat16)), acc)
        else:
            x_even = tl.load(x_ptr + k0 + 2 * rb).to(tl.float32)
            x_odd = tl.load(x_ptr + k0 + 2 * rb + 1).to(tl.float32)
            acc1 += tl.sum(w_lo * x_even[None, :] + w_hi * x_odd[None, :], axis=1)
    gs = tl.load(gscale_ptr) * 9.223372036854775808e18  # the other 2**63
    if USE_DOT:
        acc = acc * gs
        omask = mmask[:, None] & nmask[None, :]
        optrs = out_ptr + rm[:, None] * stride_om + rn[None, :]
        if ATOMIC:
            tl.atomic_add(optrs, acc, mask=omask)
        else:
            if HAS_BIAS:
                acc += tl.load(bias_ptr + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
            tl.store(optrs, acc.to(out_ptr.dtype.element_ty), mask=omask)
    else:
        acc1 = acc1 * gs
        if ATOMIC:
            tl.atomic_add(out_ptr + rn, acc1, mask=nmask)
        else:
            if HAS_BIAS:
                acc1 += tl.load(bias_ptr + rn, mask=nmask, other=0.0).to(tl.float32)
            tl.store(out_ptr + rn, acc1.to(out_ptr.dtype.element_ty), mask=nmask)


@triton.jit
def dequant_kernel(w_ptr, s_ptr, out_ptr, gscale_ptr, N, stride_wn, stride_sn, stride_on,
                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PAIRS: tl.constexpr, FP16: tl.constexpr):
    """BLOCK_N rows x BLOCK_K columns per program (K % BLOCK_K == 0). PAIRS: 16-bit output (bf16, or
    fp16 when FP16), out_ptr is its int32 view and each packed byte becomes one word; otherwise out_ptr
    is float32 and gets two strided stores."""
    HALF: tl.constexpr = BLOCK_K // 2
    GROUPS: tl.constexpr = BLOCK_K // 16
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k0 = tl.program_id(1) * BLOCK_K
    nmask = rn < N
    rb = k0 // 2 + tl.arange(0, HALF)
    rs = k0 // 16 + tl.arange(0, GROUPS)
    p = tl.load(w_ptr + rn[:, None] * stride_wn + rb[None, :], mask=nmask[:, None], other=0).to(tl.int32)
    s = tl.load(s_ptr + rn[:, None] * stride_sn + rs[None, :], mask=nmask[:, None], other=0)
    # (true x 2**-126) x (block scale x 2**63) x (global scale x 2**63): no intermediate overflows
    scale = s.to(tl.float8e4nv, bitcast=True).to(tl.float32) * 9.223372036854775808e18
    scale = tl.reshape(scale, (BLOCK_N, GROUPS, 1))
    gs = tl.load(gscale_ptr) * 9.223372036854775808e18
    lo = tl.reshape(tl.reshape(_e2m1_lo(p), (BLOCK_N, GROUPS, 8)) * scale, (BLOCK_N, HALF)) * gs
    hi = tl.reshape(tl.reshape(_e2m1_hi(p), (BLOCK_N, GROUPS, 8)) * scale, (BLOCK_N, HALF)) * gs
    if PAIRS:
        if FP16:
            lo16 = lo.to(tl.float16).to(tl.int16, bitcast=True)
            hi16 = hi.to(tl.float16).to(tl.int16, bitcast=True)
        else:
            lo16 = lo.to(tl.bfloat16).to(tl.int16, bitcast=True)
            hi16 = hi.to(tl.bfloat16).to(tl.int16, bitcast=True)
        word = (lo16.to(tl.int32) & 0xFFFF) | (hi16.to(tl.int32) << 16)
        # stride_on counts int32 words (two 16-bit values)
        tl.store(out_ptr + rn[:, None] * stride_on + rb[None, :], word, mask=nmask[:, None])
    else:
        optr = out_ptr + rn[:, None] * stride_on + 2 * rb[None, :]
        tl.store(optr, lo.to(out_ptr.dtype.element_ty), mask=nmask[:, None])
        tl.store(optr + 1, hi.to(out_ptr.dtype.element_ty), mask=nmask[:, None])


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
    if weight.stride(1) != 1 or weight_scale.stride(1) != 1:
        raise ValueError("weight and weight_scale must be contiguous along K")
    return n, k


def gemv_plan(m: int, n: int, k: int, block_n: int | None = None, block_k: int | None = None,
              split: int | None = None) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, split) for the decode GEMV, from the H100 sweep
    (benchmarks/sweep_weight_kernels.py; graph-mode time summed over FLUX and omni shapes):
    M == 1 (CUDA-core path) 32 x 256 tiles, M > 1 (MMA path) 64 x 128; K split in up to 4 slices
    (fp32 atomics) where K allows."""
    bn = block_n or (32 if m == 1 else 64)
    bk = block_k or (256 if m == 1 else 128)
    while k % bk:
        bk //= 2
    if split is None:
        split = next(sp for sp in (4, 2, 1) if k % (bk * sp) == 0)
    if k % (bk * split):
        raise ValueError(f"K={k} is not a multiple of BLOCK_K*split={bk * split}")
    return bn, bk, split


def nvfp4_gemv(x, weight, weight_scale, weight_scale_2, bias=None, *, block_n=None, block_k=None, split=None,
               num_stages=4, num_warps=4, use_dot=None):
    """x: [M <= 16, K] bf16/fp16 CUDA; weight: uint8 [N, K/2]; weight_scale: e4m3 (or its uint8
    bytes) [N, K/16]; weight_scale_2: f32 one element; bias: [N] or None. Returns [M, N] in x.dtype.
    The keyword arguments override the tile plan (benchmarks sweep them)."""
    n, k = _check(weight, weight_scale, weight_scale_2)
    m = x.shape[0]
    if m > 16 or x.shape[1] != k:
        raise ValueError(f"x: expected [M <= 16, {k}], got {tuple(x.shape)}")
    x = x.contiguous()
    s8 = weight_scale.view(torch.uint8)
    gscale = weight_scale_2.reshape(1).float()
    bn, bk, split = gemv_plan(m, n, k, block_n, block_k, split)
    if split == 1:  # one pass: bias and the output cast happen in the kernel's epilogue
        out = torch.empty(m, n, device=x.device, dtype=x.dtype)
    else:  # split-K partial sums meet in an fp32 buffer
        out = torch.zeros(m, n, device=x.device, dtype=torch.float32)
    has_bias = bias is not None and split == 1
    use_dot = m > 1 if use_dot is None else use_dot
    gemv_kernel[(triton.cdiv(n, bn), split)](
        x, weight, s8, out, gscale, bias if has_bias else gscale, m, n, k, x.stride(0), weight.stride(0),
        s8.stride(0), out.stride(0), k // split, BLOCK_M=16, BLOCK_N=bn, BLOCK_K=bk, NUM_STAGES=num_stages,
        ATOMIC=split > 1, HAS_BIAS=has_bias, USE_DOT=use_dot, DOT_F32=x.device.type == "cpu", num_warps=num_warps)
    if split == 1:
        return out
    if bias is not None:
        out += bias.float()
    return out.to(x.dtype)


def nvfp4_dequantize_bf16(weight, weight_scale, weight_scale_2, dtype=torch.bfloat16, *, block_n=16, block_k=None,
                          num_warps=8):
    """weight: uint8 [N, K/2]; weight_scale: e4m3 [N, K/16]; weight_scale_2: f32 one element.
    Returns the dense weight [N, K] in dtype (global scale folded in)."""
    n, k = _check(weight, weight_scale, weight_scale_2)
    bk = block_k or max(bk for bk in (64, 128, 256) if k % bk == 0)
    if k % bk:
        raise ValueError(f"K={k} is not a multiple of BLOCK_K={bk}")
    out = torch.empty(n, k, device=weight.device, dtype=dtype)
    s8 = weight_scale.view(torch.uint8)
    pairs = dtype in (torch.bfloat16, torch.float16)
    target = out.view(torch.int32) if pairs else out
    dequant_kernel[(triton.cdiv(n, block_n), k // bk)](
        weight, s8, target, weight_scale_2.reshape(1).float(), n, weight.stride(0), s8.stride(0),
        target.stride(0), BLOCK_N=block_n, BLOCK_K=bk, PAIRS=pairs, FP16=dtype == torch.float16,
        num_warps=num_warps)
    return out
