"""Torch reference FP8 linear: quantize activations exactly as the fast kernels do, then
accumulate the FP8 products in float32 and apply scales in the epilogue. Runs anywhere."""

from __future__ import annotations

from quantomni.kernels.base import LinearKernel
from quantomni.kernels.quant_ops import quantize_act_fp8


def fp8_linear_reference(x, weight, weight_scale, act_mode, input_scale, bias):
    """x: [M, K] float; weight: float8_e4m3fn [N, K]; weight_scale: f32 [] or [N];
    act_mode: 'token'|'tensor'|'static'; input_scale: f32 [] or None; bias: [N] or None.
    Returns [M, N] in x.dtype."""
    x_q, x_scale = quantize_act_fp8(x, act_mode, input_scale)
    acc = x_q.float() @ weight.float().t()
    out = acc * x_scale * weight_scale.float()
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


class TorchFp8Kernel(LinearKernel):
    name = "torch"
    format = "fp8"
    aliases = ("reference",)

    @staticmethod
    def apply(layer, x):
        s = layer.scheme
        return fp8_linear_reference(x, layer.weight, layer.weight_scale, s.activation, layer.input_scale, layer.bias)
