"""One-pass GGUF Q8_0 dequantization to bf16/fp16 (Triton), feeding a cuBLAS GEMM at large M.

Q8_0 block = 34 bytes: float16 scale d, then 32 int8 codes q; value = d * q. Each program expands
a run of consecutive blocks of the flat weight (rows are contiguous). The packed bytes are read
once (1.06 bytes per weight, as 2-byte words: a block is only 2-byte aligned) and the dense weight
written once (2 bytes per weight, two values per 32-bit store): memory-bound.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ._common import dequant_custom_op
from ._jit import pack_16bit_pairs

# importing this module imports triton: kernels/gguf_triton.py loads it only when the Triton backend runs

Q8_0_BLOCK_BYTES = 34
Q8_0_BLOCK_ELEMS = 32


@triton.jit
def q8_0_dequant_kernel(p16, out, n_blocks, BLOCKS: tl.constexpr, PAIRS: tl.constexpr, FP16: tl.constexpr):
    """The packed rows are contiguous, so the weight is one flat run of blocks: program i expands
    blocks [i*BLOCKS, (i+1)*BLOCKS). Block b = 17 int16 words: the scale, then 16 words of two codes
    each (low byte = even column). PAIRS (16-bit output): out is the int32 view of the dense weight
    and each code word becomes one output word (two values); else out is float32."""
    blocks = tl.program_id(0).to(tl.int64) * BLOCKS + tl.arange(0, BLOCKS)
    bmask = blocks < n_blocks
    d = tl.load(p16 + blocks * 17, mask=bmask, other=0).to(tl.float16, bitcast=True).to(tl.float32)
    j = tl.arange(0, 16)
    w = tl.load(p16 + blocks[:, None] * 17 + 1 + j[None, :], mask=bmask[:, None], other=0).to(tl.int32)
    lo = ((w << 24) >> 24).to(tl.float32) * d[:, None]  # sign-extended low byte
    hi = (w >> 8).to(tl.float32) * d[:, None]  # arithmetic shift of the sign-extended word
    if PAIRS:
        word = pack_16bit_pairs(lo, hi, FP16)
        tl.store(out + blocks[:, None] * 16 + j[None, :], word, mask=bmask[:, None])
    else:
        col = blocks[:, None] * 32 + 2 * j[None, :]
        tl.store(out + col, lo, mask=bmask[:, None])
        tl.store(out + col + 1, hi, mask=bmask[:, None])



def q8_0_dequantize(packed: torch.Tensor, in_features: int, dtype: torch.dtype = torch.bfloat16, *,
                    blocks: int = 256, num_warps: int = 8) -> torch.Tensor:
    """packed: uint8 [N, in_features/32*34] (CUDA, or CPU under TRITON_INTERPRET=1); dtype: output
    dtype (bf16, fp16 or fp32). Returns dense [N, in_features]. ``blocks``: Q8_0 blocks per program."""
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise ValueError(f"packed: expected a 2-D uint8 tensor, got {packed.dtype} {tuple(packed.shape)}")
    if in_features % Q8_0_BLOCK_ELEMS or packed.shape[1] != in_features // Q8_0_BLOCK_ELEMS * Q8_0_BLOCK_BYTES:
        raise ValueError(f"packed: {packed.shape[1]} bytes per row do not hold {in_features} Q8_0 values")
    if dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"dtype: bf16, fp16 or fp32, got {dtype}")
    packed = packed.contiguous()
    n = packed.shape[0]
    n_blocks = n * (in_features // Q8_0_BLOCK_ELEMS)
    out = torch.empty(n, in_features, device=packed.device, dtype=dtype)
    pairs = dtype != torch.float32
    target = out.view(torch.int32) if pairs else out
    q8_0_dequant_kernel[(triton.cdiv(n_blocks, blocks),)](packed.view(torch.int16), target, n_blocks, BLOCKS=blocks,
                                                          PAIRS=pairs, FP16=dtype == torch.float16, num_warps=num_warps)
    return out


@functools.cache
def q8_0_dequant_op():
    """``torch.ops.quantomni_gguf.q8_0_dequant`` (traceable by torch.compile)."""
    return dequant_custom_op("q8_0_dequant", q8_0_dequantize)
