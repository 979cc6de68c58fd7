"""W8A16 / W4A16 GEMM over a load-time repacked, vector-friendly group layout, for GGUF weights.

Why: GGUF blocks (34 bytes for Q8_0, 144 for Q4_K) put scales between the codes, so a kernel
reading them as stored gathers single bytes. Repacking once at load time into
  codes  [N, K] int8 (8-bit) or [N, K/2] uint8 (4-bit, LOW nibble = even column, as NVFP4)
  scale  [N, K/32] float32,  min [N, K/32] float32 or absent
lets every weight tile load as 16-byte vectors: W[n, k] = code * scale[n, k//32] - min[n, k//32].
The scale products of Q4_K (d * sc, dmin * m) are formed in float32, exactly as the reference
dequantizers do, so results match the block layout kernels (gguf_gemm.py) bit for bit in W.
Memory: Q8_0 8 + 1 bits per weight (0.56x bf16), Q4_K 4 + 2 bits (0.38x bf16).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import torch

from ._common import (
    KernelInputError, check_bias, check_out_dtype, check_same_device, check_tensor, interpret_mode,
    require_triton,
)
from .gguf_gemm import Q4_K_BLOCK, Q4_K_BLOCK_BYTES, Q8_0_BLOCK_BYTES

GROUP = 32


@dataclass
class GroupAffineWeight:
    """A repacked weight. codes: [N, K] int8 or [N, K/2] uint8; scale/min: [N, K/32] float32."""

    codes: torch.Tensor
    scale: torch.Tensor
    min: Optional[torch.Tensor]
    bits: int
    in_features: int

    @property
    def out_features(self) -> int:
        return self.codes.shape[0]


def prepare_q8_0_weight(w_packed: torch.Tensor) -> GroupAffineWeight:
    """GGUF Q8_0 bytes [N, K/32*34] uint8 -> GroupAffineWeight(codes int8 [N, K], scale f32 [N, K/32])."""
    check_tensor("w_packed", w_packed, (torch.uint8,), 2)
    n, row = w_packed.shape
    if row % Q8_0_BLOCK_BYTES:
        raise KernelInputError(f"w_packed has {row} bytes per row; Q8_0 rows are a multiple of 34")
    blocks = w_packed.reshape(n, row // Q8_0_BLOCK_BYTES, Q8_0_BLOCK_BYTES)
    d = blocks[..., :2].contiguous().view(torch.float16)[..., 0].float()
    qs = blocks[..., 2:].contiguous().view(torch.int8).reshape(n, -1)
    return GroupAffineWeight(qs.contiguous(), d.contiguous(), None, 8, qs.shape[1])


def prepare_q4_k_weight(w_packed: torch.Tensor) -> GroupAffineWeight:
    """GGUF Q4_K bytes [N, K/256*144] uint8 -> GroupAffineWeight(codes uint8 [N, K/2], scale, min f32 [N, K/32])."""
    check_tensor("w_packed", w_packed, (torch.uint8,), 2)
    n, row = w_packed.shape
    if row % Q4_K_BLOCK_BYTES:
        raise KernelInputError(f"w_packed has {row} bytes per row; Q4_K rows are a multiple of 144")
    nb = row // Q4_K_BLOCK_BYTES
    b = w_packed.reshape(n, nb, Q4_K_BLOCK_BYTES)
    d = b[..., 0:2].contiguous().view(torch.float16)[..., 0].float()
    dmin = b[..., 2:4].contiguous().view(torch.float16)[..., 0].float()
    s = b[..., 4:16].to(torch.int32)
    sc = torch.cat([s[..., 0:4] & 63, (s[..., 8:12] & 0xF) | ((s[..., 0:4] >> 6) << 4)], dim=-1).float()
    mn = torch.cat([s[..., 4:8] & 63, (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)], dim=-1).float()
    qs = b[..., 16:].reshape(n, nb, 4, 1, 32)
    codes = torch.cat([qs & 15, qs >> 4], dim=3).reshape(n, nb * Q4_K_BLOCK)  # element order
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return GroupAffineWeight(packed.contiguous(), (d[..., None] * sc).reshape(n, -1).contiguous(),
                             (dmin[..., None] * mn).reshape(n, -1).contiguous(), 4, nb * Q4_K_BLOCK)


def _configs(triton):
    if interpret_mode():
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32, "GROUP_M": 2}, num_warps=4, num_stages=1)]
    cfg = triton.Config
    return [
        cfg({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=4),
        cfg({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
        cfg({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8}, num_warps=8, num_stages=3),
        cfg({"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 256, "GROUP_M": 1}, num_warps=4, num_stages=4),
    ]


def _prune(configs, named_args, **kwargs):
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
    def group_affine_mm_kernel(
        x_ptr, c_ptr, s_ptr, mn_ptr, bias_ptr, out_ptr, M, N, M_BUCKET,
        stride_xm, stride_cn, stride_sn, stride_om,
        K: tl.constexpr, BITS: tl.constexpr, HAS_MIN: tl.constexpr, HAS_BIAS: tl.constexpr,
        DOT_F32: tl.constexpr,
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
        if BITS == 8:
            c_ptrs = c_ptr + safe_n[:, None] * stride_cn + offs_k[None, :]
        else:
            c_ptrs = c_ptr + safe_n[:, None] * stride_cn + tl.arange(0, BLOCK_K // 2)[None, :]
        # one scale (and min) per 32 weights: load [BLOCK_N, BLOCK_K/32] and broadcast in registers
        # (a per-weight gather would stage a full fp32 [BLOCK_N, BLOCK_K] tile in shared memory)
        offs_g = tl.arange(0, BLOCK_K // 32)
        s_ptrs = s_ptr + safe_n[:, None] * stride_sn + offs_g[None, :]
        mn_ptrs = mn_ptr + safe_n[:, None] * stride_sn + offs_g[None, :]
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for kb in range(0, K // BLOCK_K):  # the wrapper picks BLOCK_K | K (K % 32 == 0)
            x = tl.load(x_ptrs)
            if BITS == 8:
                q = tl.load(c_ptrs).to(tl.float32)
            else:
                packed = tl.load(c_ptrs)
                q = tl.reshape(tl.join(packed & 0xF, packed >> 4), (BLOCK_N, BLOCK_K)).to(tl.float32)
            q3 = tl.reshape(q, (BLOCK_N, BLOCK_K // 32, 32))
            w3 = q3 * tl.load(s_ptrs)[:, :, None]
            if HAS_MIN:
                w3 = w3 - tl.load(mn_ptrs)[:, :, None]
            w = tl.reshape(w3, (BLOCK_N, BLOCK_K))
            if DOT_F32:
                # interpreter only: bf16 round-to-nearest-even by integer arithmetic (see gguf_gemm)
                bits = w.to(tl.int32, bitcast=True)
                bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
                acc = tl.dot(x.to(tl.float32), tl.trans(bits.to(tl.float32, bitcast=True)), acc)
            else:
                acc = tl.dot(x, tl.trans(w.to(x.dtype)), acc)
            x_ptrs += BLOCK_K
            c_ptrs += BLOCK_K if BITS == 8 else BLOCK_K // 2
            s_ptrs += BLOCK_K // 32
            mn_ptrs += BLOCK_K // 32
        n_ok = offs_n < N
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        o_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
        tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=(offs_m < M)[:, None] & n_ok[None, :])

    def _prune_k(configs, named_args, **kwargs):
        k = kwargs.get("K", named_args.get("K"))
        kept = [c for c in _prune(configs, named_args) if k % c.kwargs["BLOCK_K"] == 0]
        return kept or [triton.Config({**configs[-1].kwargs, "BLOCK_K": 32}, num_warps=4, num_stages=3)]

    tuned = triton.autotune(configs=_configs(triton), key=["M_BUCKET", "N", "K", "BITS", "HAS_MIN", "HAS_BIAS"],
                            prune_configs_by={"early_config_prune": _prune_k})(group_affine_mm_kernel)
    return triton, tuned


def group_affine_mm(x, weight: GroupAffineWeight, bias=None, out_dtype=None):
    """out = x @ W.T + bias with W = codes * scale - min (groups of 32 along K), dequantized in registers.

    x:         [M, K] bfloat16 or float16, K % 32 == 0
    weight:    GroupAffineWeight from prepare_q8_0_weight / prepare_q4_k_weight
    bias:      [N] bf16/fp16/fp32 or None
    out_dtype: bfloat16 / float16 / float32; defaults to x.dtype
    returns:   [M, N] out_dtype
    """
    check_tensor("x", x, (torch.bfloat16, torch.float16), 2)
    if not isinstance(weight, GroupAffineWeight):
        raise KernelInputError(f"weight must be a GroupAffineWeight, got {type(weight).__name__}")
    codes, scale = weight.codes, weight.scale
    check_same_device(x=x, codes=codes, scale=scale)
    M, K = x.shape
    N = codes.shape[0]
    if K != weight.in_features or K % GROUP:
        raise KernelInputError(f"x has K={K}; the weight has in_features={weight.in_features} (K % 32 == 0 needed)")
    if tuple(scale.shape) != (N, K // GROUP) or scale.dtype != torch.float32:
        raise KernelInputError(f"weight.scale has shape {tuple(scale.shape)} {scale.dtype}; expected [{N}, {K // GROUP}] float32")
    if M == 0 or N == 0:
        raise KernelInputError(f"empty GEMM: x {tuple(x.shape)}, weight [{N}, {K}]")
    out_dtype = out_dtype or x.dtype
    check_out_dtype(out_dtype)
    check_bias(bias, N, x.device)
    if x.stride(1) != 1:
        x = x.contiguous()
    interpret = interpret_mode()
    triton, kernel = _build(interpret)
    out = torch.empty((M, N), dtype=out_dtype, device=x.device)
    m_bucket = min(triton.next_power_of_2(M), 4096)
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)
    mn = weight.min if weight.min is not None else scale
    kernel[grid](
        x, codes, scale, mn, bias if bias is not None else out, out, M, N, m_bucket,
        x.stride(0), codes.stride(0), scale.stride(0), out.stride(0),
        K=K, BITS=weight.bits, HAS_MIN=weight.min is not None, HAS_BIAS=bias is not None, DOT_F32=interpret,
    )
    return out
