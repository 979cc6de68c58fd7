"""Online INT8 W8A8 from a BF16 checkpoint: symmetric per-channel weights, dynamic per-token activations."""

from __future__ import annotations

import dataclasses

import torch

from quantomni.config.base import QuantMethodConfig
from quantomni.kernels.quant_ops import check_finite_weight, quantize_weight_int8
from quantomni.methods.base import LinearMethodBase, placeholder, set_buffer
from quantomni.schemes import Int8Scheme


@dataclasses.dataclass(frozen=True)
class Int8Config(QuantMethodConfig):
    """INT8 W8A8. Only the symmetric per-channel / dynamic per-token scheme is offered: it is what
    int8 tensor-core GEMMs implement with a cheap epilogue, and the one that keeps DiT quality."""

    method = "int8"

    weight_granularity: str = "channel"
    activation_scheme: str = "dynamic"

    def validate(self) -> None:
        if self.weight_granularity != "channel":
            raise ValueError(f"int8.weight_granularity: got {self.weight_granularity!r}; allowed: ['channel']")
        if self.activation_scheme != "dynamic":
            raise ValueError(f"int8.activation_scheme: got {self.activation_scheme!r}; allowed: ['dynamic']")

    @property
    def scheme(self) -> Int8Scheme:
        return Int8Scheme()

    def scheme_name(self) -> str:
        return self.scheme.describe()

    def get_linear_method(self, layer_name, in_features, out_features):
        return Int8LinearMethod()


class Int8LinearMethod(LinearMethodBase):
    name = "int8"
    format = "int8"
    scheme = Int8Scheme()

    def create_weights(self, layer) -> None:
        n, k = layer.out_features, layer.in_features
        layer.register_buffer("weight", placeholder((n, k), torch.int8))
        layer.register_buffer("weight_scale", placeholder((n,), torch.float32))
        layer.register_buffer("bias", placeholder((n,), layer.compute_dtype) if layer.has_bias else None)

    def process_weights_after_loading(self, layer, device) -> None:
        weight = layer._pending.pop("weight").to(device)
        check_finite_weight(weight, layer.prefix)
        q, scale = quantize_weight_int8(weight)
        del weight
        set_buffer(layer, "weight", q)
        set_buffer(layer, "weight_scale", scale)
        if layer.has_bias:
            set_buffer(layer, "bias", layer._pending.pop("bias").to(device=device, dtype=layer.compute_dtype))
        layer.ready = True
