"""NVFP4 W4A16 GEMM for Hopper (no FP4 tensor cores): unpack E2M1 + E4M3 block scales in registers,
then BF16 tensor-core MMA; the global scale (w_scale_2), bias and output cast run in the epilogue.

Weight layout (ModelOpt NVFP4):
  w_packed  uint8 [N, K/2]: two E2M1 codes per byte, LOW nibble = even column k, high nibble = k+1
  w_scale   float8_e4m3fn [N, K/16]: one scale per 16 consecutive inputs of a row
  w_scale_2 float32 scalar: global scale;  W[n, k] = e2m1(code) * w_scale[n, k // 16] * w_scale_2
E2M1 magnitudes: 0, 0.5, 1, 1.5, 2, 3, 4, 6; bit 3 is the sign.

Decode: the 3 magnitude bits placed at bit 9 of a float16 give exactly e2m1 * 2^-14 (e=0 lands on
the fp16 subnormal 2^-15 = 0.5 * 2^-14); the 2^14 is folded into the block scale. Every dequantized
weight (<= 2 significant bits times <= 4) is exact in bf16, so the only error vs a float64
dequantize-then-matmul is the bf16 rounding of x (none: x is bf16 already), fp32 accumulation and
the output rounding.

Two kernels: a tiled GEMM for large M, and for M <= SMALL_M_MAX (decode) a split-K kernel that
spreads the weight stream over all SMs (memory-bound: 4.5 bits per weight read once).
Requires K % 16 == 0 (the scale block); other K are rejected by the wrapper.
"""
from __future__ import annotations

import functools

import torch

from ._common import (
    KernelInputError, check_bias, check_out_dtype, check_same_device, check_tensor, fixup_workspace, interpret_mode,
    num_sms, require_triton,
)

SMALL_M_MAX = 16
_X_DTYPES = (torch.bfloat16, torch.float16)


def _large_configs(triton):
    if interpret_mode():
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32, "GROUP_M": 2}, num_warps=4, num_stages=1)]
    cfg = triton.Config
    return [
        cfg({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=4),
        cfg({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
        cfg({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8}, num_warps=8, num_stages=3),
        # taller tiles amortize the in-register E2M1 decode over more rows of x
        cfg({"BLOCK_M": 256, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
    ]


def _small_configs(triton):
    if interpret_mode():
        return [triton.Config({"BLOCK_N": 16, "BLOCK_K": 32}, num_warps=4, num_stages=1)]
    cfg = triton.Config
    return [
        cfg({"BLOCK_N": 64, "BLOCK_K": 256}, num_warps=4, num_stages=4),
        cfg({"BLOCK_N": 32, "BLOCK_K": 256}, num_warps=4, num_stages=4),
        cfg({"BLOCK_N": 32, "BLOCK_K": 512}, num_warps=4, num_stages=3),
    ]


@functools.lru_cache(maxsize=None)
def _build(interpret: bool):
    """Define and autotune both kernels; cached per interpreter mode."""
    triton, tl = require_triton()

    @triton.jit
    def nvfp4_mm_kernel(
        x_ptr, w_ptr, s_ptr, s2_ptr, bias_ptr, out_ptr, M, N, M_BUCKET,
        stride_xm, stride_wn, stride_sn, stride_om,
        K: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_F32: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ):
        pid = tl.program_id(0)
        num_pid_m = tl.cdiv(M, BLOCK_M)
        num_pid_n = tl.cdiv(N, BLOCK_N)
        group = GROUP_M * num_pid_n
        first_m = (pid // group) * GROUP_M
        group_m = min(num_pid_m - first_m, GROUP_M)
        pid_m = first_m + ((pid % group) % group_m)
        pid_n = (pid % group) // group_m
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        safe_m = (offs_m % M).to(tl.int64)
        safe_n = (offs_n % N).to(tl.int64)
        offs_k = tl.arange(0, BLOCK_K)
        offs_kh = tl.arange(0, BLOCK_K // 2)
        x_ptrs = x_ptr + safe_m[:, None] * stride_xm + offs_k[None, :]
        w_ptrs = w_ptr + safe_n[:, None] * stride_wn + offs_kh[None, :]
        s_ptrs = s_ptr + safe_n[:, None] * stride_sn + (offs_k // 16)[None, :]
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for kb in range(0, tl.cdiv(K, BLOCK_K)):
            if K % BLOCK_K == 0:
                x = tl.load(x_ptrs)
                packed = tl.load(w_ptrs)
                sc = tl.load(s_ptrs)
            else:
                k_left = K - kb * BLOCK_K
                x = tl.load(x_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
                packed = tl.load(w_ptrs, mask=offs_kh[None, :] < k_left // 2, other=0)
                sc = tl.load(s_ptrs, mask=offs_k[None, :] < k_left, other=0)
            # E2M1 -> fp16 bit pattern worth e2m1 * 2^-14 (see module docstring), low nibble first
            codes = tl.reshape(tl.join(packed & 0xF, packed >> 4), (BLOCK_N, BLOCK_K)).to(tl.uint16)
            bits = ((codes & 0x7) << 9) | ((codes & 0x8) << 12)
            w = bits.to(tl.float16, bitcast=True).to(tl.float32)
            scale = sc.to(tl.float8e4nv, bitcast=True).to(tl.float32) * 16384.0
            if DOT_F32:
                acc = tl.dot(x.to(tl.float32), tl.trans(w * scale), acc)
            else:
                acc = tl.dot(x, tl.trans((w * scale).to(x.dtype)), acc)
            x_ptrs += BLOCK_K
            w_ptrs += BLOCK_K // 2
            s_ptrs += BLOCK_K // 16
        out = acc * tl.load(s2_ptr)
        n_ok = offs_n < N
        if HAS_BIAS:
            out += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        o_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
        tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=(offs_m < M)[:, None] & n_ok[None, :])

    @triton.jit
    def nvfp4_splitk_kernel(
        x_ptr, w_ptr, s_ptr, s2_ptr, bias_ptr, out_ptr, part_ptr, cnt_ptr, M, N,
        stride_xm, stride_wn, stride_sn, stride_om,
        K: tl.constexpr, SPLIT_K: tl.constexpr, ATOMIC_FIXUP: tl.constexpr, HAS_BIAS: tl.constexpr,
        DOT_F32: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        """Small M: grid (N tiles, SPLIT_K). SPLIT_K == 1 writes the output directly. Otherwise either
        ATOMIC_FIXUP: partials are atomically added into a zeroed fp32 workspace [M, N]; the last
        program of each N tile (per-tile arrival counter) applies the epilogue and leaves workspace
        and counter zeroed again (one launch, no memset); or fp32 partials [SPLIT_K, M, N] for
        splitk_reduce_kernel (two launches, deterministic)."""
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        K_ITERS: tl.constexpr = (K + BLOCK_K * SPLIT_K - 1) // (BLOCK_K * SPLIT_K)
        offs_m = tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        m_ok = offs_m < M
        safe_n = (offs_n % N).to(tl.int64)
        k0 = pid_k * (K_ITERS * BLOCK_K)
        offs_k = k0 + tl.arange(0, BLOCK_K)
        offs_kh = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        x_ptrs = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm + offs_k[None, :]
        w_ptrs = w_ptr + safe_n[:, None] * stride_wn + offs_kh[None, :]
        s_ptrs = s_ptr + safe_n[:, None] * stride_sn + (offs_k // 16)[None, :]
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for kb in range(0, K_ITERS):
            k_left = K - k0 - kb * BLOCK_K
            kmask = tl.arange(0, BLOCK_K)[None, :] < k_left
            x = tl.load(x_ptrs, mask=m_ok[:, None] & kmask, other=0.0)
            packed = tl.load(w_ptrs, mask=tl.arange(0, BLOCK_K // 2)[None, :] < k_left // 2, other=0)
            sc = tl.load(s_ptrs, mask=kmask, other=0)
            codes = tl.reshape(tl.join(packed & 0xF, packed >> 4), (BLOCK_N, BLOCK_K)).to(tl.uint16)
            bits = ((codes & 0x7) << 9) | ((codes & 0x8) << 12)
            w = bits.to(tl.float16, bitcast=True).to(tl.float32)
            scale = sc.to(tl.float8e4nv, bitcast=True).to(tl.float32) * 16384.0
            if DOT_F32:
                acc = tl.dot(x.to(tl.float32), tl.trans(w * scale), acc)
            else:
                acc = tl.dot(x, tl.trans((w * scale).to(x.dtype)), acc)
            x_ptrs += BLOCK_K
            w_ptrs += BLOCK_K // 2
            s_ptrs += BLOCK_K // 16
        n_ok = offs_n < N
        mask = m_ok[:, None] & n_ok[None, :]
        if SPLIT_K == 1:
            out = acc * tl.load(s2_ptr)
            if HAS_BIAS:
                out += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
            o_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
            tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=mask)
        elif ATOMIC_FIXUP:
            p_ptrs = part_ptr + offs_m[:, None] * N + offs_n[None, :]
            tl.atomic_add(p_ptrs, acc, mask=mask)
            tl.debug_barrier()  # every thread's partial is issued before the arrival is counted
            arrived = tl.atomic_add(cnt_ptr + pid_n, 1)
            if arrived == SPLIT_K - 1:
                # read the sum where the atomics landed (L2), then leave zeros for the next call
                total = tl.atomic_add(p_ptrs, tl.zeros_like(acc), mask=mask)
                tl.store(p_ptrs, tl.zeros_like(acc), mask=mask)
                out = total * tl.load(s2_ptr)
                if HAS_BIAS:
                    out += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
                o_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
                tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=mask)
                tl.store(cnt_ptr + pid_n, 0)  # every program of this tile has arrived
        else:
            p_ptrs = part_ptr + (pid_k * M + offs_m)[:, None] * N + offs_n[None, :]
            tl.store(p_ptrs, acc, mask=mask)

    @triton.jit
    def splitk_reduce_kernel(
        part_ptr, s2_ptr, bias_ptr, out_ptr, MN, N,
        SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr,
    ):
        """out = sum over splits of the fp32 partials, times w_scale_2, plus bias, cast (deterministic)."""
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < MN
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for s in range(0, SPLIT_K):
            acc += tl.load(part_ptr + s * MN + offs, mask=ok, other=0.0)
        acc = acc * tl.load(s2_ptr)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs % N, mask=ok, other=0.0).to(tl.float32)
        tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=ok)

    large = triton.autotune(configs=_large_configs(triton), key=["M_BUCKET", "N", "K", "HAS_BIAS"])(nvfp4_mm_kernel)
    small = triton.autotune(configs=_small_configs(triton), key=["M", "N", "K", "SPLIT_K", "HAS_BIAS"],
                            reset_to_zero=None)(nvfp4_splitk_kernel)
    return triton, large, small, splitk_reduce_kernel


def prepare_nvfp4_weight(w_packed: torch.Tensor, w_scale: torch.Tensor):
    """Check an NVFP4 weight once at load time and return the kernel layout (contiguous; scales as bytes).

    w_packed: uint8 [N, K/2]
    w_scale:  float8_e4m3fn (or its raw uint8 bytes) [N, K/16]
    returns:  (w_packed uint8 [N, K/2] contiguous, w_scale uint8 [N, K/16] contiguous, E4M3 bit patterns)
    """
    check_tensor("w_packed", w_packed, (torch.uint8,), 2)
    check_tensor("w_scale", w_scale, (torch.float8_e4m3fn, torch.uint8), 2)
    N, half_k = w_packed.shape
    K = 2 * half_k
    if K % 16 != 0:
        raise KernelInputError(f"w_packed has shape {tuple(w_packed.shape)}: K = {K} must be a multiple of 16")
    if tuple(w_scale.shape) != (N, K // 16):
        raise KernelInputError(f"w_scale has shape {tuple(w_scale.shape)}; expected [{N}, {K // 16}] (N, K/16)")
    scale_bytes = w_scale.view(torch.uint8) if w_scale.dtype == torch.float8_e4m3fn else w_scale
    return w_packed.contiguous(), scale_bytes.contiguous()


def _split_for(n_tiles: int, k: int, device) -> int:
    """Split-K factor so that about two programs run per SM, each still streaming >= 512 inputs."""
    sms = num_sms(device)
    split = 1
    while split < 16 and n_tiles * split * 2 <= 2 * sms and k // (split * 2) >= 256:
        split *= 2
    return split


def nvfp4_w4a16_mm(
    x, w_packed, w_scale, w_scale_2, bias=None, out_dtype=None, small_m_max=SMALL_M_MAX, split_k=None,
    splitk_mode="atomic",
):
    """out = x @ dequant(W).T + bias, W in NVFP4, dequantized in registers, bf16/fp16 MMA.

    x:           [M, K] bfloat16 or float16, K % 16 == 0
    w_packed:    [N, K/2] uint8, two E2M1 codes per byte (low nibble = even column)
    w_scale:     [N, K/16] float8_e4m3fn, or its uint8 bytes from prepare_nvfp4_weight
    w_scale_2:   float32 tensor with one element (global scale; stays on device: no host sync)
    bias:        [N] bf16/fp16/fp32 or None
    out_dtype:   bfloat16 / float16 / float32; defaults to x.dtype
    small_m_max: rows up to which the split-K decode kernel is used
    split_k:     override the decode kernel's split-K factor (1..64; tests and benchmarks)
    splitk_mode: "atomic" (one launch, reused zeroed workspace) or "reduce" (second launch, deterministic)
    returns:     [M, N] out_dtype
    """
    check_tensor("x", x, _X_DTYPES, 2)
    w_packed, w_scale = prepare_nvfp4_weight(w_packed, w_scale)
    check_same_device(x=x, w_packed=w_packed, w_scale=w_scale)
    M, K = x.shape
    N = w_packed.shape[0]
    if 2 * w_packed.shape[1] != K:
        raise KernelInputError(f"x has K={K} but w_packed {tuple(w_packed.shape)} holds K={2 * w_packed.shape[1]}")
    if K % 16 != 0:
        raise KernelInputError(f"x has K={K}; NVFP4 needs K % 16 == 0")
    if M == 0 or N == 0:
        raise KernelInputError(f"empty GEMM: x {tuple(x.shape)}, w_packed {tuple(w_packed.shape)}")
    if not isinstance(w_scale_2, torch.Tensor) or w_scale_2.numel() != 1 or w_scale_2.dtype != torch.float32:
        raise KernelInputError("w_scale_2 must be a float32 tensor with one element (the NVFP4 global scale)")
    if w_scale_2.device != x.device:
        raise KernelInputError(f"w_scale_2 is on {w_scale_2.device}; x is on {x.device}")
    out_dtype = out_dtype or x.dtype
    check_out_dtype(out_dtype)
    check_bias(bias, N, x.device)
    if x.stride(1) != 1:
        x = x.contiguous()
    interpret = interpret_mode()
    # Triton 3.6's interpreter feeds bf16 values computed in-kernel to tl.dot as raw bits; under
    # it the dot runs in fp32 on the same (exactly representable) dequantized weights.
    triton, large, small, reduce_kernel = _build(interpret)
    out = torch.empty((M, N), dtype=out_dtype, device=x.device)
    bias_arg = bias if bias is not None else out
    s2 = w_scale_2.reshape(1)
    if M <= small_m_max:
        block_m = 16 if M <= 16 else triton.next_power_of_2(M)
        n_tiles = triton.cdiv(N, 64)
        split = _split_for(n_tiles, K, x.device) if split_k is None else int(split_k)
        if not 1 <= split <= 64:
            raise KernelInputError(f"split_k is {split_k}; allowed: 1..64")
        if splitk_mode not in ("atomic", "reduce"):
            raise KernelInputError(f"splitk_mode is {splitk_mode!r}; allowed: 'atomic', 'reduce'")
        atomic = split > 1 and splitk_mode == "atomic"
        if atomic:
            part, counters = fixup_workspace(x.device, M * N, N)
        else:
            part = torch.empty((split, M, N), dtype=torch.float32, device=x.device) if split > 1 else out
            counters = part
        grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), split)
        small[grid](
            x, w_packed, w_scale, s2, bias_arg, out, part, counters, M, N,
            x.stride(0), w_packed.stride(0), w_scale.stride(0), out.stride(0),
            K=K, SPLIT_K=split, ATOMIC_FIXUP=atomic, HAS_BIAS=bias is not None, DOT_F32=interpret,
            BLOCK_M=block_m,
        )
        if split > 1 and not atomic:
            block = 1024
            reduce_kernel[(triton.cdiv(M * N, block),)](
                part, s2, bias_arg, out, M * N, N,
                SPLIT_K=split, HAS_BIAS=bias is not None, BLOCK=block,
            )
        return out
    m_bucket = min(triton.next_power_of_2(M), 4096)
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)
    large[grid](
        x, w_packed, w_scale, s2, bias_arg, out, M, N, m_bucket,
        x.stride(0), w_packed.stride(0), w_scale.stride(0), out.stride(0),
        K=K, HAS_BIAS=bias is not None, DOT_F32=interpret,
    )
    return out
