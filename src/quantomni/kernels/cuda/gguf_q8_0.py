"""GGUF Q8_0 dequantization in CUDA C++ (``gguf_q8_0.cu``, NVRTC): the dense weight for cuBLAS at
large M. Bit-identical to the torch dequantizer rounded to bf16/fp16; moves its bytes through
shared memory so that loads and stores are 16-byte and stores write whole lines."""

from __future__ import annotations

import functools
import os

import torch

from quantomni.kernels.cuda import runtime

BLOCK_ELEMS, BLOCK_BYTES = 32, 34
_NAMES = ["qo_q8_0_dequant<true>", "qo_q8_0_dequant<false>"]


@functools.cache
def source() -> str:
    with open(os.path.join(os.path.dirname(__file__), "gguf_q8_0.cu"), encoding="utf-8") as f:
        return f.read()


def is_supported(device) -> tuple[bool, str]:
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available() or torch.version.cuda is None:
        return False, f"needs an NVIDIA CUDA device, got {device}"
    if torch.cuda.get_device_capability(device) < (8, 0):
        return False, "needs compute capability >= 8.0"
    ok, why = runtime.nvrtc_available()
    if not ok:
        return False, why
    try:
        runtime.load("gguf_q8_0", source, _NAMES, device)
    except runtime.CudaRuntimeError as exc:
        return False, f"kernel build failed: {exc}"
    return True, "CUDA Q8_0 dequantizer (NVRTC)"


def q8_0_dequantize(packed: torch.Tensor, in_features: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """packed: uint8 [N, in_features / 32 * 34] on CUDA; returns [N, in_features] in bf16 or fp16."""
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise ValueError(f"packed: expected a 2-D uint8 tensor, got {packed.dtype} {tuple(packed.shape)}")
    if in_features % BLOCK_ELEMS or packed.shape[1] != in_features // BLOCK_ELEMS * BLOCK_BYTES:
        raise ValueError(f"packed: {packed.shape[1]} bytes per row do not hold {in_features} Q8_0 values")
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"dtype: bf16 or fp16, got {dtype}")
    if not packed.is_contiguous() or packed.data_ptr() % 16:
        packed = packed.contiguous().clone()
    n = packed.shape[0]
    out = torch.empty(n, in_features, dtype=dtype, device=packed.device)
    nblocks = n * (in_features // BLOCK_ELEMS)
    if nblocks == 0:
        return out
    module, lowered = runtime.load("gguf_q8_0", source, _NAMES, packed.device)
    fn = module.function(lowered[_NAMES[0] if dtype == torch.bfloat16 else _NAMES[1]])
    runtime.launch(fn, (-(-nblocks // 256), 1, 1), (256, 1, 1), [packed, out, runtime.Int64(nblocks)])
    return out


@functools.cache
def q8_0_dequant_op():
    """``torch.ops.quantomni_gguf.q8_0_dequant_cuda`` (traceable by torch.compile)."""
    from quantomni.kernels.triton._common import dequant_custom_op

    return dequant_custom_op("q8_0_dequant_cuda", q8_0_dequantize)
