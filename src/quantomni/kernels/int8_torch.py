"""Torch reference INT8 W8A8 linear: exact integer products (float64 accumulation is exact for
|sum| < 2**53), then per-token x per-channel scales and bias. Runs anywhere."""

from __future__ import annotations

from quantomni.kernels.base import LinearKernel
from quantomni.kernels.quant_ops import quantize_act_int8


def int8_linear_reference(x, weight, weight_scale, bias):
    """x: [M, K] float; weight: int8 [N, K]; weight_scale: f32 [N]; bias: [N] or None.
    Returns [M, N] in x.dtype."""
    x_q, x_scale = quantize_act_int8(x)
    acc = (x_q.double() @ weight.double().t()).float()
    out = acc * x_scale * weight_scale.float()
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


class TorchInt8Kernel(LinearKernel):
    name = "torch"
    format = "int8"
    aliases = ("reference",)

    @staticmethod
    def apply(layer, x):
        return int8_linear_reference(x, layer.weight, layer.weight_scale, layer.bias)
