"""GGUF Q8_0 and Q4_K on CUDA with Triton.

* Q8_0, M <= 16 (decode-like): the fused dequantize-GEMM kernel (``quantomni_triton::q8_0_mm``)
  reads the packed weight once and never materialises it (memory-bound, ~1.06 bytes per weight).
* Otherwise: a one-pass Triton dequantizer writes the dense bf16 weight, then cuBLAS runs the GEMM
  (dequantizing inside a GEMM's K loop measured slower than cuBLAS at large M, and the fused Q4_K
  kernel measured 0.17x BF16 even at M = 16).
"""

from __future__ import annotations

import functools
import importlib

import torch
import torch.nn.functional as F

from quantomni.kernels.base import KernelSpec, LinearKernel

SMALL_M = 16


_DEQUANT = {  # qtype name -> (module, plain function, custom-op factory)
    "Q8_0": ("quantomni.kernels.triton.q8_0_dequant", "q8_0_dequantize", "q8_0_dequant_op"),
    "Q4_K": ("quantomni.kernels.triton.q4_k_dequant", "q4_k_dequantize", "q4_k_dequant_op"),
}
_BLOCK = {"Q8_0": 32, "Q4_K": 256}


@functools.cache
def _dequant_fns(qtype_name: str):
    """(plain function, custom-op factory) of the qtype's dequantizer, looked up once."""
    module, plain, op = _DEQUANT[qtype_name]
    mod = importlib.import_module(module)
    return getattr(mod, plain), getattr(mod, op)


def _dequant_fn(qtype_name: str):
    plain, op = _dequant_fns(qtype_name)
    return op() if torch.compiler.is_compiling() else plain


class TritonGgufKernel(LinearKernel):
    name = "triton"
    format = "gguf"

    @classmethod
    def is_supported(cls, device):
        from quantomni.kernels.triton.support import is_supported

        ok, why = is_supported("q8_0_mm", device)
        return ok, why or "Triton GGUF"

    @classmethod
    def prepare(cls):
        """Register the custom ops outside any torch.compile trace."""
        from quantomni.kernels.triton_backends import register_triton_ops

        register_triton_ops()
        for name in _DEQUANT:
            _dequant_fns(name)[1]()

    @classmethod
    def can_implement(cls, spec: KernelSpec):
        name = getattr(spec.scheme, "qtype_name", None)
        if name not in _DEQUANT:
            return False, f"implements {sorted(_DEQUANT)} only (layer is {name})"
        if spec.in_features % _BLOCK[name]:
            return False, f"in_features must be a multiple of {_BLOCK[name]} for {name}"
        if spec.dtype not in (torch.bfloat16, torch.float16):
            return False, f"outputs bf16/fp16, model dtype is {spec.dtype}"
        if name == "Q8_0":
            return True, "Triton Q8_0: fused GEMV for M<=16, one-pass dequant + cuBLAS above"
        return True, f"Triton {name}: one-pass dequant + cuBLAS"

    @staticmethod
    def apply(layer, x):
        from quantomni.kernels.triton_backends import triton_call

        qtype_name = layer.scheme.qtype_name
        if qtype_name == "Q8_0" and x.shape[0] <= SMALL_M:
            return triton_call("q8_0_mm", "gguf_gemm")(x, layer.weight, layer.bias, x.dtype)
        weight = _dequant_fn(qtype_name)(layer.weight, layer.in_features, x.dtype)
        return F.linear(x, weight, layer.bias)
