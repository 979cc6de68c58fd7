"""One-pass GGUF Q4_K dequantization to bf16/fp16 (Triton), feeding a cuBLAS GEMM at large M.

Q4_K super-block (256 values, 144 bytes): float16 d, float16 dmin, 12 bytes of 6-bit sub-block
scales/mins (8 sub-blocks of 32), 128 bytes of 4-bit codes. Within each 64-value pair of
sub-blocks, the first 32 values are the low nibbles of 32 bytes and the next 32 the high nibbles.
value = d * scale_j * q - dmin * min_j. Each program expands a run of consecutive super-blocks
of the flat weight (rows are contiguous), decoding each scale/min once per sub-block.
"""

from __future__ import annotations

import functools

import torch

from ._common import dequant_custom_op

Q4_K_BLOCK_BYTES = 144
Q4_K_BLOCK_ELEMS = 256


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def q4_k_dequant_kernel(p16, p8, out, n_super, SUPER: tl.constexpr):
        """Rows are contiguous, so the weight is one flat run of super-blocks: program i expands SUPER of
        them. Per super-block: 8 scale/min pairs decoded once, 128 code bytes read once (16-byte
        aligned); byte i of pair p holds value p*64 + i (low nibble) and p*64 + 32 + i (high)."""
        sb = tl.program_id(0).to(tl.int64) * SUPER + tl.arange(0, SUPER)
        smask = sb < n_super
        sb = tl.where(smask, sb, 0)  # tail programs re-read super-block 0; their stores are masked
        d = tl.load(p16 + sb * 72).to(tl.float16, bitcast=True).to(tl.float32)
        dmin = tl.load(p16 + sb * 72 + 1).to(tl.float16, bitcast=True).to(tl.float32)
        pair = tl.arange(0, 4)
        base8 = p8 + sb[:, None, None] * 144  # [SUPER, 1, 1]
        # 6-bit scale and min of sub-block j = 2 * pair + parity, from the 12 bytes at base8 + 4
        j = 2 * pair[None, :, None] + tl.arange(0, 2)[None, None, :]  # [1, 4, 2]
        lo_j = j < 4
        s_j = tl.load(base8 + 4 + j).to(tl.int32) & 0xFF
        s_j4 = tl.load(base8 + 8 + j).to(tl.int32) & 0xFF
        s_jm4 = tl.load(base8 + 4 + tl.where(lo_j, j, j - 4)).to(tl.int32) & 0xFF
        sc = tl.where(lo_j, s_j & 63, (s_j4 & 0xF) | ((s_jm4 >> 6) << 4)).to(tl.float32)
        mn = tl.where(lo_j, s_j4 & 63, (s_j4 >> 4) | ((s_j >> 6) << 4)).to(tl.float32)
        sc_lo, sc_hi = tl.split(sc)  # [SUPER, 4] each: even sub-blocks (low nibbles), odd (high)
        mn_lo, mn_hi = tl.split(mn)
        i = tl.arange(0, 32)
        byte = tl.load(base8 + 16 + pair[None, :, None] * 32 + i[None, None, :]).to(tl.int32) & 0xFF
        q_lo = (byte & 0xF).to(tl.float32)
        q_hi = (byte >> 4).to(tl.float32)
        d3 = d[:, None, None]
        m3 = dmin[:, None, None]
        v_lo = d3 * sc_lo[:, :, None] * q_lo - m3 * mn_lo[:, :, None]
        v_hi = d3 * sc_hi[:, :, None] * q_hi - m3 * mn_hi[:, :, None]
        col = sb[:, None, None] * 256 + pair[None, :, None] * 64 + i[None, None, :]
        m = smask[:, None, None]
        tl.store(out + col, v_lo.to(out.dtype.element_ty), mask=m)
        tl.store(out + col + 32, v_hi.to(out.dtype.element_ty), mask=m)

    return triton, q4_k_dequant_kernel


def q4_k_dequantize(packed: torch.Tensor, in_features: int, dtype: torch.dtype = torch.bfloat16, *,
                    super_blocks: int = 32, num_warps: int = 8) -> torch.Tensor:
    """packed: uint8 [N, in_features/256*144] (CUDA, or CPU under TRITON_INTERPRET=1); dtype: output
    dtype. Returns dense [N, in_features]. ``super_blocks``: super-blocks per program."""
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise ValueError(f"packed: expected a 2-D uint8 tensor, got {packed.dtype} {tuple(packed.shape)}")
    if in_features % Q4_K_BLOCK_ELEMS or packed.shape[1] != in_features // Q4_K_BLOCK_ELEMS * Q4_K_BLOCK_BYTES:
        raise ValueError(f"packed: {packed.shape[1]} bytes per row do not hold {in_features} Q4_K values")
    packed = packed.contiguous()
    n = packed.shape[0]
    n_super = n * (in_features // Q4_K_BLOCK_ELEMS)
    out = torch.empty(n, in_features, device=packed.device, dtype=dtype)
    triton, kernel = _kernel()
    kernel[(triton.cdiv(n_super, super_blocks),)](packed.view(torch.int16), packed.view(torch.int8), out, n_super,
                                                  SUPER=super_blocks, num_warps=num_warps)
    return out


@functools.cache
def q4_k_dequant_op():
    """``torch.ops.quantomni_gguf.q4_k_dequant`` (traceable by torch.compile)."""
    return dequant_custom_op("q4_k_dequant", q4_k_dequantize)
