"""INT8 SmoothQuant W8A8 linear (ModelOpt W8A8_SQ_PER_CHANNEL).

Math (what ModelOpt's fake-quantized model computes):
  x' = x * pre_quant_scale (when stored);  q = clamp(round(x' / input_scale), -128, 127) int8;
  out = (q @ weight^T) * input_scale * weight_scale[n] + bias.
Two backends: ``int_mm`` (torch._int_mm: int32 accumulation; CUDA cc >= 7.5, and CPU) and the
``torch`` reference (exact integer products in float64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from quantomni.kernels.base import KernelSpec, LinearKernel

_CUDA_MIN_ROWS = 17  # cuBLASLt's int8 GEMM needs more than 16 rows


def quantize_act_int8_static(x, input_scale, pre_quant_scale=None):
    """x: [M, K] float; input_scale: f32 []; pre_quant_scale: [K] or None.
    Returns q int8 [M, K]. Non-finite activations raise (int8 cannot carry NaN)."""
    xf = x.float()
    if pre_quant_scale is not None:
        xf = xf * pre_quant_scale.float()
    if not torch.isfinite(xf).all():
        raise FloatingPointError("int8 SmoothQuant linear: input activations contain NaN/Inf")
    return torch.round(xf / input_scale.float()).clamp(-128, 127).to(torch.int8)


def _epilogue(acc, layer, dtype):
    out = acc.float() * layer.input_scale.float() * layer.weight_scale.float()
    if layer.bias is not None:
        out = out + layer.bias.float()
    return out.to(dtype)


class TorchInt8SqKernel(LinearKernel):
    name = "torch"
    format = "int8_sq"
    aliases = ("reference",)

    @staticmethod
    def apply(layer, x):
        """x: [M, K]; layer.weight int8 [N, K]; weight_scale f32 [N]; input_scale f32 [];
        pre_quant_scale [K] or None; bias [N] or None. Returns [M, N] in x.dtype."""
        q = quantize_act_int8_static(x, layer.input_scale, layer.pre_quant_scale)
        acc = q.double() @ layer.weight.double().t()
        return _epilogue(acc, layer, x.dtype)


class IntMmInt8SqKernel(LinearKernel):
    name = "int_mm"
    format = "int8_sq"

    @classmethod
    def is_supported(cls, device):
        from quantomni.kernels.int8_int_mm import IntMmInt8Kernel

        return IntMmInt8Kernel.is_supported(device)

    @classmethod
    def can_implement(cls, spec: KernelSpec):
        from quantomni.kernels.int8_int_mm import IntMmInt8Kernel

        return IntMmInt8Kernel.can_implement(spec)

    @staticmethod
    def apply(layer, x):
        q = quantize_act_int8_static(x, layer.input_scale, layer.pre_quant_scale)
        m = q.shape[0]
        if q.is_cuda and m < _CUDA_MIN_ROWS:
            q = F.pad(q, (0, 0, 0, _CUDA_MIN_ROWS - m))
        acc = torch._int_mm(q, layer.weight.t())[:m]
        return _epilogue(acc, layer, x.dtype)
