"""One Triton GEMM for both W8A8 paths (INT8 with int32 accumulation, FP8 with fp32 accumulation).

out[m, n] = (sum_k a[m, k] * b[n, k]) * a_scale[m] * b_scale[n] + bias[n], cast to out's dtype.
b is the weight as stored, [N, K] row-major, read K-major: the layout Hopper's 8-bit wgmma wants.
K is a compile-time constant (one specialization per distinct K; a model has a handful), which
also lets the loop drop its K masks when BLOCK_K divides K.
"""
from __future__ import annotations

import functools

import torch

from ._common import interpret_mode, require_triton


def _configs(triton):
    """Tile shapes for sm_90; autotuned per (M bucket, N, K). A single small tile under the interpreter."""
    if interpret_mode():
        # BLOCK_K=16 keeps FP8 (K % 16 == 0) on the unmasked path: the interpreter cannot build fp8 `other=`
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 16, "GROUP_M": 4}, num_warps=4, num_stages=1)]
    cfg = triton.Config
    return [
        cfg({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 128, "GROUP_M": 8}, num_warps=8, num_stages=3),
        cfg({"BLOCK_M": 256, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8}, num_warps=8, num_stages=3),
        cfg({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8}, num_warps=8, num_stages=4),
        cfg({"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 256, "GROUP_M": 1}, num_warps=4, num_stages=4),
        cfg({"BLOCK_M": 32, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 1}, num_warps=4, num_stages=4),
    ]


def _prune(configs, named_args, **kwargs):
    """Tiles by problem size: small M (decode) gets the narrow tiles, large M the wide ones."""
    m = named_args["M"]
    if m <= 64:
        kept = [c for c in configs if c.kwargs["BLOCK_M"] <= max(16, 2 * m)]
    else:
        kept = [c for c in configs if c.kwargs["BLOCK_M"] >= 64]
    return kept or configs[-1:]


@functools.lru_cache(maxsize=None)
def build_scaled_mm(interpret: bool):
    """Define and autotune the kernel; cached per interpreter mode."""
    triton, tl = require_triton()

    @triton.jit
    def scaled_mm_kernel(
        a_ptr, b_ptr, c_ptr, as_ptr, bs_ptr, bias_ptr, M, N, M_BUCKET,
        stride_am, stride_bn, stride_cm, stride_as, stride_bs,
        K: tl.constexpr, HAS_BIAS: tl.constexpr, ACC_INT32: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ):
        pid = tl.program_id(0)
        num_pid_m = tl.cdiv(M, BLOCK_M)
        num_pid_n = tl.cdiv(N, BLOCK_N)
        # grouped ordering: neighbouring programs share A row-blocks in L2
        group = GROUP_M * num_pid_n
        first_m = (pid // group) * GROUP_M
        group_m = min(num_pid_m - first_m, GROUP_M)
        pid_m = first_m + ((pid % group) % group_m)
        pid_n = (pid % group) // group_m

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        # wrap out-of-range rows/cols onto valid ones so loads need no M/N masks; stores are masked
        safe_m = (offs_m % M).to(tl.int64)
        safe_n = (offs_n % N).to(tl.int64)
        a_ptrs = a_ptr + safe_m[:, None] * stride_am + offs_k[None, :]
        b_ptrs = b_ptr + safe_n[None, :] * stride_bn + offs_k[:, None]
        if ACC_INT32:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        else:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for kb in range(0, tl.cdiv(K, BLOCK_K)):
            if K % BLOCK_K == 0:
                a = tl.load(a_ptrs)
                b = tl.load(b_ptrs)
            else:
                k_left = K - kb * BLOCK_K
                a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0)
                b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0)
            if ACC_INT32:
                acc = tl.dot(a, b, acc, out_dtype=tl.int32)
            else:
                acc = tl.dot(a, b, acc)
            a_ptrs += BLOCK_K
            b_ptrs += BLOCK_K

        m_ok = offs_m < M
        n_ok = offs_n < N
        a_s = tl.load(as_ptr + offs_m * stride_as, mask=m_ok, other=0.0)
        b_s = tl.load(bs_ptr + offs_n * stride_bs, mask=n_ok, other=0.0)
        out = acc.to(tl.float32) * a_s[:, None] * b_s[None, :]
        if HAS_BIAS:
            out += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        c_ptrs = c_ptr + offs_m.to(tl.int64)[:, None] * stride_cm + offs_n[None, :]
        tl.store(c_ptrs, out.to(c_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])

    tuned = triton.autotune(
        configs=_configs(triton), key=["M_BUCKET", "N", "K", "HAS_BIAS"],
        prune_configs_by={"early_config_prune": _prune},
    )(scaled_mm_kernel)
    return triton, tuned


def launch_scaled_mm(a, b, a_scale_vec, b_scale_vec, bias, out_dtype, acc_int32: bool) -> torch.Tensor:
    """Run the kernel on checked inputs: a [M,K], b [N,K] (unit stride along K), scales float32 [M] / [N]."""
    interpret = interpret_mode()
    triton, kernel = build_scaled_mm(interpret)
    M, K = a.shape
    N = b.shape[0]
    c = torch.empty((M, N), dtype=out_dtype, device=a.device)
    m_bucket = min(triton.next_power_of_2(M), 4096)
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)
    kernel[grid](
        a, b, c, a_scale_vec, b_scale_vec, bias if bias is not None else c, M, N, m_bucket,
        a.stride(0), b.stride(0), c.stride(0), a_scale_vec.stride(0), b_scale_vec.stride(0),
        K=K, HAS_BIAS=bias is not None, ACC_INT32=acc_int32,
    )
    return c
