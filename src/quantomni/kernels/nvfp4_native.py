"""Native FP4 (Blackwell) NVFP4 GEMM backend: declared, not implemented.

Why a stub: a native path needs ``torch._scaled_mm`` with ``float4_e2m1fn_x2`` operands and
swizzled E4M3 block scales on compute capability >= 10.0. It cannot be validated without such a
GPU, so it never claims support; naming it (``--linear-backend nvfp4=native_fp4``) gives a
clear error, and "auto" falls through to the weight-dequantizing torch path.
"""

from __future__ import annotations

import torch

from quantomni.kernels.base import LinearKernel, cuda_capability


class NativeFp4Kernel(LinearKernel):
    name = "native_fp4"
    format = "nvfp4"
    aliases = ("cutlass", "fp4_scaled_mm")

    @classmethod
    def is_supported(cls, device):
        need = ("needs compute capability >= 10.0 (Blackwell FP4 tensor cores) and torch's FP4 scaled matmul "
                "(torch._scaled_mm with float4_e2m1fn_x2)")
        cap = cuda_capability(torch.device(device))
        if cap is None:
            return False, f"{need}; got {device}"
        if cap < (10, 0):
            return False, f"{need}; device has {cap[0]}.{cap[1]}"
        if not hasattr(torch, "float4_e2m1fn_x2") or not hasattr(torch, "_scaled_mm"):
            return False, f"{need}; this torch build lacks it"
        return False, f"{need}; this build does not implement the native FP4 path yet (use nvfp4=torch)"

    @staticmethod
    def apply(layer, x):  # pragma: no cover - never selected (is_supported is always False)
        raise NotImplementedError("native FP4 GEMM is not implemented")
