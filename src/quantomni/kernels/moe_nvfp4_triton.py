"""Triton NVFP4 expert dequantizer: packed E2M1 + E4M3 block scales + per-row global -> bf16, one pass.

Why: the torch dequantizer (``moe_torch.dequant_nvfp4_experts``) makes several passes (int32
indices, table lookup, scale multiply); this kernel reads each packed byte and its block scale
once and writes the two bf16 values, which is what bounds the grouped MoE path's NVFP4 decode.
Opt-in: ``register_expert_dequantizer("nvfp4", "quantomni.kernels.moe_nvfp4_triton:dequant_nvfp4_experts_triton")``
(or the benchmark's ``--nvfp4-expert-dequant``). Runs on CUDA, and on CPU under TRITON_INTERPRET=1
(tests). The kernel is defined on first use, so importing this module compiles nothing.
"""

from __future__ import annotations

import functools

import torch

BLOCK_ROWS = 16
BLOCK_BYTES = 64


@functools.lru_cache(maxsize=1)
def _kernel():
    try:
        import triton
        import triton.language as tl
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the Triton NVFP4 dequantizer needs triton: pip install triton") from exc

    @triton.jit
    def dequant(w_ptr, s_ptr, s2_ptr, out_ptr, rows, half_k, BLOCK_R: tl.constexpr, BLOCK_B: tl.constexpr):
        r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
        b = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)[None, :]
        mask = (r < rows) & (b < half_k)
        byte = tl.load(w_ptr + r * half_k + b, mask=mask, other=0).to(tl.int32)
        # E4M3 block scale (one per 16 values = 8 bytes), decoded from its byte: s eeee mmm, bias 7
        sb = tl.load(s_ptr + r * (half_k // 8) + b // 8, mask=mask, other=0).to(tl.int32)
        s_exp = (sb >> 3) & 15
        s_man = (sb & 7).to(tl.float32)
        s_mag = tl.where(s_exp == 0, s_man * 0.001953125,  # subnormal: m/8 * 2^-6
                         (1.0 + s_man * 0.125) * tl.exp2((s_exp - 7).to(tl.float32)))
        scale = tl.where((sb & 128) != 0, -s_mag, s_mag) * tl.load(s2_ptr + r, mask=r < rows, other=0.0)
        for nib in tl.static_range(2):
            c = (byte >> (4 * nib)) & 15  # low nibble = even column
            e = (c >> 1) & 3
            m = (c & 1).to(tl.float32)
            mag = tl.where(e == 0, m * 0.5, (1.0 + m * 0.5) * tl.exp2((e - 1).to(tl.float32)))
            val = tl.where((c & 8) != 0, -mag, mag) * scale
            tl.store(out_ptr + r * (2 * half_k) + 2 * b + nib, val.to(out_ptr.dtype.element_ty), mask=mask)

    return dequant, triton


def dequant_nvfp4_experts_triton(w, weight_scale, weight_scale_2, dtype):
    """w: uint8 [G, N, K/2]; weight_scale: float8_e4m3fn [G, N, K/16]; weight_scale_2: f32 [G, N];
    dtype: bfloat16 | float16 | float32. Returns [G, N, K] in dtype (same contract as
    ``moe_torch.dequant_nvfp4_experts``)."""
    if w.dtype != torch.uint8 or weight_scale.dtype != torch.float8_e4m3fn:
        raise ValueError(f"dequant_nvfp4_experts_triton: expected uint8 weights and e4m3 scales, got {w.dtype} / "
                         f"{weight_scale.dtype}")
    g, n, half = w.shape
    if half % 8 or tuple(weight_scale.shape) != (g, n, half // 8) or tuple(weight_scale_2.shape) != (g, n):
        raise ValueError(f"dequant_nvfp4_experts_triton: shapes w {tuple(w.shape)}, weight_scale "
                         f"{tuple(weight_scale.shape)}, weight_scale_2 {tuple(weight_scale_2.shape)} do not match")
    import os

    if w.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"dequant_nvfp4_experts_triton: needs CUDA tensors (or TRITON_INTERPRET=1), got {w.device}")
    kernel, triton = _kernel()
    rows = g * n
    out = torch.empty(g, n, half * 2, dtype=dtype, device=w.device)
    grid = (triton.cdiv(rows, BLOCK_ROWS), triton.cdiv(half, BLOCK_BYTES))
    kernel[grid](w.contiguous(), weight_scale.contiguous().view(torch.uint8), weight_scale_2.float().contiguous(), out,
                 rows, half, BLOCK_R=BLOCK_ROWS, BLOCK_B=BLOCK_BYTES)
    return out
