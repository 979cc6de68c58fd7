"""Linear backends built on quantomni's Triton kernels (``kernels/triton``), CUDA only.

* ``fused_scaled_mm`` (fp8): one-pass Triton per-token FP8 quantization, then cuBLAS
  ``torch._scaled_mm`` with row-wise scales and the bias in its epilogue. On an H100 at FLUX shapes
  this is 1.3-1.9x BF16 where the same GEMM behind unfused torch quantization is 0.4-0.9x.
* ``triton`` (int8): one-pass Triton per-token INT8 quantization, then a Triton int8 GEMM with
  int32 accumulation and scales/bias/cast fused into its epilogue (cuBLAS ``_int_mm`` plus a torch
  epilogue is 0.16-0.3x BF16 at the same shapes).

The Triton kernels are called through ``torch.ops.quantomni_triton`` custom ops, so the layers
trace under ``torch.compile(fullgraph=True)`` and can be captured in CUDA graphs.
"""

from __future__ import annotations

import torch

from quantomni.kernels.base import KernelSpec, LinearKernel
from quantomni.kernels.fp8_scaled_mm import ScaledMmFp8Kernel, fp8_fast_accum


def _ops():
    from quantomni.kernels.triton.torch_ops import register_ops

    register_ops()
    return torch.ops.quantomni_triton


def triton_call(name: str, module: str):
    """The Triton kernel ``name``: through its custom op while torch.compile traces (no graph break),
    directly otherwise (a custom op's Python dispatch costs tens of microseconds per call, which
    adds up over hundreds of layers in eager mode)."""
    if torch.compiler.is_compiling():
        return getattr(_ops(), name)
    import importlib

    return getattr(importlib.import_module(f"quantomni.kernels.triton.{module}"), name)


def _triton_supported(kernel: str, device) -> tuple[bool, str]:
    from quantomni.kernels.triton.support import is_supported

    ok, why = is_supported(kernel, device)
    return ok, (why or f"Triton {kernel}")


def register_triton_ops() -> None:
    """Custom ops must exist before torch.compile traces a layer (registering inside a trace is
    not allowed); kernels call this from ``prepare`` at selection time."""
    from quantomni.kernels.triton.torch_ops import register_ops

    register_ops()


class FusedQuantScaledMmFp8Kernel(LinearKernel):
    name = "fused_scaled_mm"
    format = "fp8"

    @classmethod
    def prepare(cls):
        register_triton_ops()

    @classmethod
    def is_supported(cls, device):
        ok, why = ScaledMmFp8Kernel.is_supported(device)
        if not ok:
            return ok, why
        return _triton_supported("per_token_quant_fp8", device)

    @classmethod
    def can_implement(cls, spec: KernelSpec):
        if spec.scheme is None or spec.scheme.activation != "token":
            return False, "fuses dynamic per-token activation quantization only"
        return ScaledMmFp8Kernel.can_implement(spec)

    @staticmethod
    def apply(layer, x):
        if torch.compiler.is_compiling():
            # Under torch.compile, Inductor fuses the (identical) torch quantization into the ops
            # that produce x, which beats a separate kernel: measured 1.20x vs 1.04x BF16 (H100).
            return ScaledMmFp8Kernel.apply(layer, x)
        x_q, x_scale = triton_call("per_token_quant_fp8", "act_quant")(x)
        w_scale = layer.weight_scale
        n = layer.weight.shape[0]
        w_scale = w_scale.reshape(1, -1) if w_scale.dim() else w_scale.reshape(1, 1).expand(1, n).contiguous()
        return torch._scaled_mm(x_q, layer.weight.t(), scale_a=x_scale, scale_b=w_scale, bias=layer.bias,
                                out_dtype=x.dtype, use_fast_accum=fp8_fast_accum())


class TritonInt8Kernel(LinearKernel):
    name = "triton"
    format = "int8"

    @classmethod
    def prepare(cls):
        register_triton_ops()

    @classmethod
    def is_supported(cls, device):
        ok, why = _triton_supported("per_token_quant_int8", device)
        if not ok:
            return ok, why
        return _triton_supported("int8_scaled_mm", device)

    @classmethod
    def can_implement(cls, spec: KernelSpec):
        if spec.dtype not in (torch.bfloat16, torch.float16):
            return False, f"outputs bfloat16/float16, model dtype is {spec.dtype}"
        tma = spec.device.type == "cuda" and torch.cuda.get_device_capability(spec.device) >= (9, 0)
        return True, ("Triton int8 GEMM with fused epilogue (persistent TMA kernel for M >= 128 on sm_90+)"
                      if tma else "Triton int8 GEMM with fused epilogue")

    @staticmethod
    def apply(layer, x):
        if torch.compiler.is_compiling():
            from quantomni.kernels.quant_ops import quantize_act_int8

            x_q, x_scale = quantize_act_int8(x)  # fused by Inductor into x's producers
        else:
            x_q, x_scale = triton_call("per_token_quant_int8", "act_quant")(x)
        return triton_call("int8_scaled_mm", "int8_gemm")(x_q, layer.weight, x_scale, layer.weight_scale, layer.bias, x.dtype)
