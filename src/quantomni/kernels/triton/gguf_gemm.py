"""Fused dequantize + GEMM for GGUF Q8_0 and Q4_K weights, read in their on-disk block layout.

Q8_0 row layout: K/32 blocks of 34 bytes each: float16 scale d (little endian), then 32 int8 qs;
W[n, k] = d[n, k // 32] * qs[n, k]. Each weight tile is gathered from the block bytes, scaled in
fp32 (exact: 7-bit int times an 11-bit fp16), rounded once to x's dtype (bf16/fp16, as GGUF
runtimes that dequantize to the compute dtype do) and fed to the tensor cores; fp32 accumulation,
bias and output cast in the epilogue. Requires K % 32 == 0 (the block size).

Q4_K row layout: K/256 super-blocks of 144 bytes: f16 d, f16 dmin, 12 bytes of eight 6-bit
(scale, min) pairs, 128 bytes of 4-bit codes (each 64-wide chunk: 32 bytes, low nibbles are its
first 32 weights, high nibbles the next 32); W = d * scale_j * q - dmin * min_j for sub-block j of
32 weights. Requires K % 256 == 0.
"""
from __future__ import annotations

import functools

import torch

from ._common import (
    KernelInputError, check_bias, check_out_dtype, check_same_device, check_tensor, interpret_mode,
    require_triton,
)

Q8_0_BLOCK = 32
Q8_0_BLOCK_BYTES = 34

#: kernel signature for ahead-of-time compile checks (sm90_compile_check)
SIGNATURE = {
    "x_ptr": "*bf16", "w_ptr": "*u8", "w16_ptr": "*i16", "bias_ptr": "*bf16", "out_ptr": "*bf16",
    "M": "i32", "N": "i32", "M_BUCKET": "i32", "stride_xm": "i32", "stride_wn": "i32", "stride_om": "i32",
    "K": "constexpr", "HAS_BIAS": "constexpr", "DOT_F32": "constexpr",
    "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr", "GROUP_M": "constexpr",
}
DIVISIBLE_ARGS = ("x_ptr", "w_ptr", "w16_ptr", "bias_ptr", "out_ptr", "stride_xm", "stride_om")


def _configs(triton):
    if interpret_mode():
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32, "GROUP_M": 2}, num_warps=4, num_stages=1)]
    cfg = triton.Config
    return [
        # wider tiles (128x256, 256x128) spill registers with the per-byte block decode (sm_90 SASS)
        cfg({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=4),
        cfg({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),
        cfg({"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128, "GROUP_M": 1}, num_warps=4, num_stages=4),
    ]


def _prune(configs, named_args, **kwargs):
    """Small M keeps the narrow tiles, large M the wide ones."""
    m = named_args["M"]
    if m <= 64:
        kept = [c for c in configs if c.kwargs["BLOCK_M"] <= max(16, 2 * m)]
    else:
        kept = [c for c in configs if c.kwargs["BLOCK_M"] >= 64]
    return kept or configs[-1:]


@functools.lru_cache(maxsize=None)
def _build(interpret: bool):
    """Define and autotune the kernel; cached per interpreter mode."""
    triton, tl = require_triton()

    @triton.jit
    def q8_0_mm_kernel(
        x_ptr, w_ptr, w16_ptr, bias_ptr, out_ptr, M, N, M_BUCKET, stride_xm, stride_wn, stride_om,
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
        # byte offset of each weight inside its row: block start + 2 scale bytes + position in block
        blk = offs_k // 32
        q_off = blk * 34 + 2 + (offs_k % 32)
        x_ptrs = x_ptr + safe_m[:, None] * stride_xm + offs_k[None, :]
        q_ptrs = w_ptr + safe_n[:, None] * stride_wn + q_off[None, :]
        d_ptrs = w16_ptr + safe_n[:, None] * (stride_wn // 2) + (blk * 17)[None, :]
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for kb in range(0, tl.cdiv(K, BLOCK_K)):
            if K % BLOCK_K == 0:
                x = tl.load(x_ptrs)
                q = tl.load(q_ptrs)
                d = tl.load(d_ptrs)
            else:
                kmask = offs_k[None, :] < K - kb * BLOCK_K
                x = tl.load(x_ptrs, mask=kmask, other=0.0)
                q = tl.load(q_ptrs, mask=kmask, other=0)
                d = tl.load(d_ptrs, mask=kmask, other=0)
            w = q.to(tl.int8, bitcast=True).to(tl.float32) * d.to(tl.float16, bitcast=True).to(tl.float32)
            if DOT_F32:
                # interpreter only (it truncates fp32->bf16 and mis-feeds in-kernel bf16 to tl.dot):
                # round to bf16 nearest-even by integer arithmetic, as the GPU's cvt.rn does, then
                # dot in fp32. Valid for bf16 x; the tests run bf16.
                bits = w.to(tl.int32, bitcast=True)
                bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
                acc = tl.dot(x.to(tl.float32), tl.trans(bits.to(tl.float32, bitcast=True)), acc)
            else:
                acc = tl.dot(x, tl.trans(w.to(x.dtype)), acc)
            x_ptrs += BLOCK_K
            q_ptrs += (BLOCK_K // 32) * 34
            d_ptrs += (BLOCK_K // 32) * 17
        n_ok = offs_n < N
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        o_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
        tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=(offs_m < M)[:, None] & n_ok[None, :])

    @triton.jit
    def q4_k_mm_kernel(
        x_ptr, w_ptr, w16_ptr, bias_ptr, out_ptr, M, N, M_BUCKET, stride_xm, stride_wn, stride_om,
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
        x_ptrs = x_ptr + safe_m[:, None] * stride_xm + offs_k[None, :]
        row = w_ptr + safe_n[:, None] * stride_wn
        row16 = w16_ptr + safe_n[:, None] * (stride_wn // 2)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for kb in range(0, K // BLOCK_K):  # K % 256 == 0 and BLOCK_K divides 256
            k = kb * BLOCK_K + offs_k
            sb = (k // 256) * 144            # super-block byte offset
            r = k % 256
            j = r // 32                       # sub-block (scale/min pair) 0..7
            qbyte = tl.load(row + (sb + 16 + (r // 64) * 32 + (r % 32))[None, :])
            q = ((qbyte >> ((r // 32) % 2 * 4).to(tl.uint8)[None, :]) & 0xF).to(tl.float32)
            a = tl.load(row + (sb + 4 + j)[None, :])                              # scales[j]
            b = tl.load(row + (sb + 8 + j)[None, :])                              # scales[j + 4]
            c = tl.load(row + (sb + 4 + tl.where(j >= 4, j - 4, 0))[None, :])     # scales[j - 4]
            lo = (j < 4)[None, :]
            sc = tl.where(lo, a & 63, (b & 0xF) | ((c >> 6) << 4)).to(tl.float32)
            mn = tl.where(lo, b & 63, (b >> 4) | ((a >> 6) << 4)).to(tl.float32)
            d = tl.load(row16 + (sb // 2)[None, :]).to(tl.float16, bitcast=True).to(tl.float32)
            dmin = tl.load(row16 + (sb // 2 + 1)[None, :]).to(tl.float16, bitcast=True).to(tl.float32)
            w = (d * sc) * q - dmin * mn
            x = tl.load(x_ptrs)
            if DOT_F32:
                bits = w.to(tl.int32, bitcast=True)
                bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
                acc = tl.dot(x.to(tl.float32), tl.trans(bits.to(tl.float32, bitcast=True)), acc)
            else:
                acc = tl.dot(x, tl.trans(w.to(x.dtype)), acc)
            x_ptrs += BLOCK_K
        n_ok = offs_n < N
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        o_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
        tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=(offs_m < M)[:, None] & n_ok[None, :])

    tuned = triton.autotune(configs=_configs(triton), key=["M_BUCKET", "N", "K", "HAS_BIAS"],
                            prune_configs_by={"early_config_prune": _prune})(q8_0_mm_kernel)
    tuned_q4k = triton.autotune(configs=_configs(triton), key=["M_BUCKET", "N", "K", "HAS_BIAS"],
                                prune_configs_by={"early_config_prune": _prune})(q4_k_mm_kernel)
    return triton, tuned, tuned_q4k


def q8_0_mm(x, w_packed, bias=None, out_dtype=None):
    """out = x @ dequant_q8_0(w_packed).T + bias, dequantized tile by tile inside the GEMM.

    x:         [M, K] bfloat16 or float16, K % 32 == 0
    w_packed:  [N, K/32*34] uint8, GGUF Q8_0 blocks as stored in the file (row-major)
    bias:      [N] bf16/fp16/fp32 or None
    out_dtype: bfloat16 / float16 / float32; defaults to x.dtype
    returns:   [M, N] out_dtype
    """
    check_tensor("x", x, (torch.bfloat16, torch.float16), 2)
    check_tensor("w_packed", w_packed, (torch.uint8,), 2)
    check_same_device(x=x, w_packed=w_packed)
    M, K = x.shape
    N, row_bytes = w_packed.shape
    if K % Q8_0_BLOCK != 0:
        raise KernelInputError(f"x has K={K}; GGUF Q8_0 needs K % 32 == 0")
    if row_bytes != K // Q8_0_BLOCK * Q8_0_BLOCK_BYTES:
        raise KernelInputError(
            f"w_packed has shape {tuple(w_packed.shape)}; for K={K} a Q8_0 row holds "
            f"{K // Q8_0_BLOCK * Q8_0_BLOCK_BYTES} bytes (K/32 blocks of 34)"
        )
    if M == 0 or N == 0:
        raise KernelInputError(f"empty GEMM: x {tuple(x.shape)}, w_packed {tuple(w_packed.shape)}")
    out_dtype = out_dtype or x.dtype
    check_out_dtype(out_dtype)
    check_bias(bias, N, x.device)
    if w_packed.stride(1) != 1 or w_packed.stride(0) != row_bytes or w_packed.data_ptr() % 2:
        w_packed = w_packed.contiguous()
    if x.stride(1) != 1:
        x = x.contiguous()
    w16 = w_packed.view(torch.int16)  # the fp16 scales sit at even byte offsets (34 is even)
    interpret = interpret_mode()
    triton, kernel, _ = _build(interpret)
    out = torch.empty((M, N), dtype=out_dtype, device=x.device)
    m_bucket = min(triton.next_power_of_2(M), 4096)
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)
    kernel[grid](
        x, w_packed, w16, bias if bias is not None else out, out, M, N, m_bucket,
        x.stride(0), w_packed.stride(0), out.stride(0),
        K=K, HAS_BIAS=bias is not None, DOT_F32=interpret,
    )
    return out


Q4_K_BLOCK = 256
Q4_K_BLOCK_BYTES = 144


def q4_k_mm(x, w_packed, bias=None, out_dtype=None):
    """out = x @ dequant_q4_k(w_packed).T + bias, dequantized tile by tile inside the GEMM.

    x:         [M, K] bfloat16 or float16, K % 256 == 0
    w_packed:  [N, K/256*144] uint8, GGUF Q4_K super-blocks as stored in the file (row-major)
    bias:      [N] bf16/fp16/fp32 or None
    out_dtype: bfloat16 / float16 / float32; defaults to x.dtype
    returns:   [M, N] out_dtype
    """
    check_tensor("x", x, (torch.bfloat16, torch.float16), 2)
    check_tensor("w_packed", w_packed, (torch.uint8,), 2)
    check_same_device(x=x, w_packed=w_packed)
    M, K = x.shape
    N, row_bytes = w_packed.shape
    if K % Q4_K_BLOCK != 0:
        raise KernelInputError(f"x has K={K}; GGUF Q4_K needs K % 256 == 0")
    if row_bytes != K // Q4_K_BLOCK * Q4_K_BLOCK_BYTES:
        raise KernelInputError(
            f"w_packed has shape {tuple(w_packed.shape)}; for K={K} a Q4_K row holds "
            f"{K // Q4_K_BLOCK * Q4_K_BLOCK_BYTES} bytes (K/256 super-blocks of 144)"
        )
    if M == 0 or N == 0:
        raise KernelInputError(f"empty GEMM: x {tuple(x.shape)}, w_packed {tuple(w_packed.shape)}")
    out_dtype = out_dtype or x.dtype
    check_out_dtype(out_dtype)
    check_bias(bias, N, x.device)
    if w_packed.stride(1) != 1 or w_packed.stride(0) != row_bytes or w_packed.data_ptr() % 2:
        w_packed = w_packed.contiguous()
    if x.stride(1) != 1:
        x = x.contiguous()
    interpret = interpret_mode()
    triton, _, kernel = _build(interpret)
    out = torch.empty((M, N), dtype=out_dtype, device=x.device)
    m_bucket = min(triton.next_power_of_2(M), 4096)
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)
    kernel[grid](
        x, w_packed, w_packed.view(torch.int16), bias if bias is not None else out, out, M, N, m_bucket,
        x.stride(0), w_packed.stride(0), out.stride(0),
        K=K, HAS_BIAS=bias is not None, DOT_F32=interpret,
    )
    return out
