"""GGUF Q8_0 on CUDA with Triton: the layer picks its path per call by the number of tokens.

* M <= 16 (decode-like): the fused dequantize-GEMM kernel (``quantomni_triton::q8_0_mm``) reads
  the packed weight once and never materialises it (memory-bound, ~1.06 bytes per weight).
* M > 16: a one-pass Triton dequantizer writes the dense bf16 weight, then cuBLAS runs the GEMM
  (the fused kernel's dequantization inside the K loop is slower than cuBLAS at large M).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from quantomni.kernels.base import KernelSpec, LinearKernel

SMALL_M = 16


class TritonGgufQ8Kernel(LinearKernel):
    name = "triton"
    format = "gguf"

    @classmethod
    def is_supported(cls, device):
        from quantomni.kernels.triton.support import is_supported

        ok, why = is_supported("q8_0_mm", device)
        if ok:  # register custom ops outside any torch.compile trace
            from quantomni.kernels.triton.q8_0_dequant import q8_0_dequant_op
            from quantomni.kernels.triton.torch_ops import register_ops

            register_ops()
            q8_0_dequant_op()
        return ok, why or "Triton Q8_0"

    @classmethod
    def can_implement(cls, spec: KernelSpec):
        name = getattr(spec.scheme, "qtype_name", None)
        if name != "Q8_0":
            return False, f"implements Q8_0 only (layer is {name})"
        if spec.in_features % 32:
            return False, "in_features must be a multiple of 32"
        if spec.dtype not in (torch.bfloat16, torch.float16):
            return False, f"outputs bf16/fp16, model dtype is {spec.dtype}"
        return True, "Triton Q8_0: fused GEMV for M<=16, one-pass dequant + cuBLAS above"

    @staticmethod
    def apply(layer, x):
        from quantomni.kernels.triton_backends import triton_call

        if x.shape[0] <= SMALL_M:
            return triton_call("q8_0_mm", "gguf_gemm")(x, layer.weight, layer.bias, x.dtype)
        from quantomni.kernels.triton.q8_0_dequant import q8_0_dequant_op, q8_0_dequantize

        dequant = q8_0_dequant_op() if torch.compiler.is_compiling() else q8_0_dequantize
        weight = dequant(layer.weight, layer.in_features, x.dtype)
        return F.linear(x, weight, layer.bias)
