"""One-pass GGUF Q8_0 dequantization to bf16/fp16 (Triton), feeding a cuBLAS GEMM at large M.

Q8_0 block = 34 bytes: float16 scale d, then 32 int8 codes q; value = d * q. Each program expands
BLOCKS_PER_PROG blocks of one row. The row's bytes are read once (1.06 bytes per weight) and the
dense weight written once (2 bytes per weight): memory-bound, ~3x less traffic than the multi-op
torch path.
"""

from __future__ import annotations

import functools

import torch

Q8_0_BLOCK_BYTES = 34
Q8_0_BLOCK_ELEMS = 32


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def q8_0_dequant_kernel(p16, p8, out, row_stride16, row_stride8, out_stride, n_blocks,
                            BLOCKS: tl.constexpr):
        row = tl.program_id(0)
        b0 = tl.program_id(1) * BLOCKS
        blocks = b0 + tl.arange(0, BLOCKS)
        bmask = blocks < n_blocks
        d = tl.load(p16 + row * row_stride16 + blocks * 17, mask=bmask, other=0)
        d = d.to(tl.float16, bitcast=True).to(tl.float32)
        j = tl.arange(0, 32)
        q = tl.load(p8 + row * row_stride8 + blocks[:, None] * 34 + 2 + j[None, :], mask=bmask[:, None], other=0)
        vals = q.to(tl.float32) * d[:, None]
        cols = blocks[:, None] * 32 + j[None, :]
        tl.store(out + row * out_stride + cols, vals.to(out.dtype.element_ty), mask=bmask[:, None])

    return triton, q8_0_dequant_kernel


def q8_0_dequantize(packed: torch.Tensor, in_features: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """packed: uint8 [N, in_features/32*34] (CUDA, or CPU under TRITON_INTERPRET=1); dtype: output dtype.
    Returns dense [N, in_features] in dtype."""
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise ValueError(f"packed: expected a 2-D uint8 tensor, got {packed.dtype} {tuple(packed.shape)}")
    if in_features % Q8_0_BLOCK_ELEMS or packed.shape[1] != in_features // Q8_0_BLOCK_ELEMS * Q8_0_BLOCK_BYTES:
        raise ValueError(f"packed: {packed.shape[1]} bytes per row do not hold {in_features} Q8_0 values")
    packed = packed.contiguous()
    n = packed.shape[0]
    n_blocks = in_features // Q8_0_BLOCK_ELEMS
    out = torch.empty(n, in_features, device=packed.device, dtype=dtype)
    triton, kernel = _kernel()
    blocks = 16
    grid = (n, triton.cdiv(n_blocks, blocks))
    kernel[grid](packed.view(torch.int16), packed.view(torch.int8), out, packed.stride(0) // 2, packed.stride(0),
                 out.stride(0), n_blocks, BLOCKS=blocks)
    return out


@functools.cache
def q8_0_dequant_op():
    """``torch.ops.quantomni_gguf.q8_0_dequant`` (traceable by torch.compile)."""

    @torch.library.custom_op("quantomni_gguf::q8_0_dequant", mutates_args=())
    def op(packed: torch.Tensor, in_features: int, dtype: torch.dtype) -> torch.Tensor:
        return q8_0_dequantize(packed, in_features, dtype)

    @op.register_fake
    def _(packed, in_features, dtype):
        return packed.new_empty((packed.shape[0], in_features), dtype=dtype)

    return torch.ops.quantomni_gguf.q8_0_dequant
