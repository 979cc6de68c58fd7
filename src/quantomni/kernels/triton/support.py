"""Which Triton kernel can run where, with reasons: for the lead's backend registry
(is_supported(device) / can_implement(layer)). No CUDA queries at import time."""
from __future__ import annotations

import importlib.util

import torch

#: kernel name -> (minimum CUDA compute capability, K multiple required, description)
KERNELS = {
    "per_token_quant_fp8": ((8, 9), 1, "fused per-token FP8 activation quant"),
    "per_token_quant_int8": ((8, 0), 1, "fused per-token INT8 activation quant"),
    "int8_scaled_mm": ((8, 0), 1, "INT8 W8A8 GEMM, int32 accumulation, fused epilogue"),
    "fp8_scaled_mm": ((8, 9), 16, "FP8 W8A8 GEMM, fused epilogue"),
    "nvfp4_w4a16_mm": ((8, 0), 64, "NVFP4 W4A16 (E2M1 decoded in registers: decode-GEMV, dequantizer + cuBLAS)"),
    "q8_0_mm": ((8, 0), 32, "GGUF Q8_0 fused dequant GEMM"),
    "q4_k_mm": ((8, 0), 256, "GGUF Q4_K fused dequant GEMM"),
}


def is_supported(kernel: str, device) -> tuple[bool, str]:
    """(True, "") when `kernel` can run on `device`, else (False, reason)."""
    if kernel not in KERNELS:
        return False, f"unknown Triton kernel {kernel!r}; known: {', '.join(KERNELS)}"
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed (pip install triton)"
    device = torch.device(device)
    if device.type != "cuda":
        return False, f"device {device} is not CUDA (CPU runs only under TRITON_INTERPRET=1, for tests)"
    if torch.version.hip is not None:
        return False, "ROCm builds are untested for these kernels"
    if not torch.cuda.is_available():
        return False, "CUDA is not available"
    need = KERNELS[kernel][0]
    have = torch.cuda.get_device_capability(device)
    if have < need:
        return False, f"{kernel} needs compute capability >= {need[0]}.{need[1]}, device has {have[0]}.{have[1]}"
    return True, ""


def can_implement(kernel: str, in_features: int, out_features: int) -> tuple[bool, str]:
    """(True, "") when a linear layer of this size fits the kernel's shape rules, else (False, reason)."""
    if kernel not in KERNELS:
        return False, f"unknown Triton kernel {kernel!r}"
    if in_features <= 0 or out_features <= 0:
        return False, f"empty layer: in_features={in_features}, out_features={out_features}"
    multiple = KERNELS[kernel][1]
    if in_features % multiple:
        return False, f"{kernel} needs in_features % {multiple} == 0, got {in_features}"
    return True, ""
