"""Torch GGUF linear: expand the layer's packed weight to the activation dtype, then ``F.linear``.

Runs on any device where the packed bytes live (CPU or CUDA): the dequantizer is plain torch. The
dense weight exists only for the duration of one call, so resident memory stays ~ the packed size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from quantomni.kernels.base import LinearKernel


def gguf_linear_reference(x, packed, qtype, out_features, bias):
    """x: [M, K] float; packed: uint8 [N, bytes_per_row] on x.device; qtype: ggml type id;
    out_features: N; bias: [N] in x.dtype or None. Returns [M, N] in x.dtype."""
    from quantomni.kernels.gguf_dequant import dequantize_gguf

    weight = dequantize_gguf(packed, qtype, (out_features, x.shape[-1]), dtype=x.dtype)
    return F.linear(x, weight, bias)


class TorchGgufKernel(LinearKernel):
    name = "torch"
    format = "gguf"
    aliases = ("reference",)

    @classmethod
    def can_implement(cls, spec) -> tuple[bool, str]:
        from quantomni.kernels.gguf_dequant import GGUF_QTYPE_INFO, qtype_id

        name = getattr(spec.scheme, "qtype_name", None)
        if name is None:
            return False, "no GGUF quantization type in the layer's scheme"
        try:
            qtype = qtype_id(name)
        except ValueError as exc:
            return False, str(exc)
        block = GGUF_QTYPE_INFO[qtype].block_elems
        if spec.in_features % block:
            return False, f"in_features {spec.in_features} is not a multiple of the {name} block size {block}"
        return True, f"dequantize {name} per call, then F.linear"

    @staticmethod
    def apply(layer, x: torch.Tensor) -> torch.Tensor:
        return gguf_linear_reference(x, layer.weight, layer.method.qtype, layer.out_features, layer.bias)
