"""One-pass GGUF Q4_K dequantization to bf16/fp16 (Triton), feeding a cuBLAS GEMM at large M.

Q4_K super-block (256 values, 144 bytes): float16 d, float16 dmin, 12 bytes of 6-bit sub-block
scales/mins (8 sub-blocks of 32), 128 bytes of 4-bit codes. Within each 64-value pair of
sub-blocks, the first 32 values are the low nibbles of 32 bytes and the next 32 the high nibbles.
value = d * scale_j * q - dmin * min_j. Each program expands one super-block of one row.
"""

from __future__ import annotations

import functools

import torch

Q4_K_BLOCK_BYTES = 144
Q4_K_BLOCK_ELEMS = 256


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def q4_k_dequant_kernel(p16, p8, out, row_stride16, row_stride8, out_stride):
        row = tl.program_id(0)
        b = tl.program_id(1)
        base8 = p8 + row * row_stride8 + b * 144
        base16 = p16 + row * row_stride16 + b * 72
        d = tl.load(base16).to(tl.float16, bitcast=True).to(tl.float32)
        dmin = tl.load(base16 + 1).to(tl.float16, bitcast=True).to(tl.float32)
        e = tl.arange(0, 256)
        j = e // 32  # sub-block
        lo_j = j < 4
        s_j = tl.load(base8 + 4 + j).to(tl.int32) & 0xFF
        s_j4 = tl.load(base8 + 4 + j + 4).to(tl.int32) & 0xFF
        s_jm4 = tl.load(base8 + 4 + tl.where(lo_j, j, j - 4)).to(tl.int32) & 0xFF
        sc = tl.where(lo_j, s_j & 63, (s_j4 & 0xF) | ((s_jm4 >> 6) << 4))
        mn = tl.where(lo_j, s_j4 & 63, (s_j4 >> 4) | ((s_j >> 6) << 4))
        pair = e // 64
        idx = e % 64
        byte = tl.load(base8 + 16 + pair * 32 + (idx % 32)).to(tl.int32) & 0xFF
        q = tl.where(idx < 32, byte & 0xF, byte >> 4)
        val = d * sc.to(tl.float32) * q.to(tl.float32) - dmin * mn.to(tl.float32)
        tl.store(out + row * out_stride + b * 256 + e, val.to(out.dtype.element_ty))

    return triton, q4_k_dequant_kernel


def q4_k_dequantize(packed: torch.Tensor, in_features: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """packed: uint8 [N, in_features/256*144] (CUDA, or CPU under TRITON_INTERPRET=1); dtype: output
    dtype. Returns dense [N, in_features]."""
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise ValueError(f"packed: expected a 2-D uint8 tensor, got {packed.dtype} {tuple(packed.shape)}")
    if in_features % Q4_K_BLOCK_ELEMS or packed.shape[1] != in_features // Q4_K_BLOCK_ELEMS * Q4_K_BLOCK_BYTES:
        raise ValueError(f"packed: {packed.shape[1]} bytes per row do not hold {in_features} Q4_K values")
    packed = packed.contiguous()
    n = packed.shape[0]
    out = torch.empty(n, in_features, device=packed.device, dtype=dtype)
    _, kernel = _kernel()
    kernel[(n, in_features // Q4_K_BLOCK_ELEMS)](packed.view(torch.int16), packed.view(torch.int8), out,
                                                  packed.stride(0) // 2, packed.stride(0), out.stride(0))
    return out


@functools.cache
def q4_k_dequant_op():
    """``torch.ops.quantomni_gguf.q4_k_dequant`` (traceable by torch.compile)."""

    @torch.library.custom_op("quantomni_gguf::q4_k_dequant", mutates_args=())
    def op(packed: torch.Tensor, in_features: int, dtype: torch.dtype) -> torch.Tensor:
        return q4_k_dequantize(packed, in_features, dtype)

    @op.register_fake
    def _(packed, in_features, dtype):
        return packed.new_empty((packed.shape[0], in_features), dtype=dtype)

    return torch.ops.quantomni_gguf.q4_k_dequant
