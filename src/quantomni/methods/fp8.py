"""Online FP8 (E4M3) W8A8 from a BF16 checkpoint."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType

import torch

from quantomni.config.base import QuantMethodConfig
from quantomni.config.patterns import LayerPattern
from quantomni.kernels.quant_ops import FP8_DTYPE, check_finite_weight, quantize_weight_fp8
from quantomni.methods.base import LinearMethodBase, placeholder, set_buffer
from quantomni.schemes import Fp8Scheme

_GRANULARITIES = ("tensor", "channel")
_ACT_SCHEMES = ("dynamic", "static")
_ACT_GRANULARITIES = ("token", "tensor")


@dataclasses.dataclass(frozen=True)
class Fp8Config(QuantMethodConfig):
    """FP8 E4M3 weights and activations.

    weight_granularity: "channel" (default; one scale per output channel) or "tensor".
    activation_scheme: "dynamic" (default; scales computed per call) or "static".
    activation_granularity: for dynamic: "token" (default) or "tensor".
    activation_scales: for static: {layer pattern: scale}; the first matching pattern wins;
        every quantized layer must be covered.
    """

    method = "fp8"

    weight_granularity: str = "channel"
    activation_scheme: str = "dynamic"
    activation_granularity: str = "token"
    activation_scales: Mapping[str, float] | None = None

    def validate(self) -> None:
        if self.weight_granularity not in _GRANULARITIES:
            raise ValueError(f"fp8.weight_granularity: got {self.weight_granularity!r}; allowed: {list(_GRANULARITIES)}")
        if self.activation_scheme not in _ACT_SCHEMES:
            raise ValueError(f"fp8.activation_scheme: got {self.activation_scheme!r}; allowed: {list(_ACT_SCHEMES)}")
        if self.activation_granularity not in _ACT_GRANULARITIES:
            raise ValueError(
                f"fp8.activation_granularity: got {self.activation_granularity!r}; allowed: {list(_ACT_GRANULARITIES)}"
            )
        if self.activation_scheme == "static":
            if not self.activation_scales:
                raise ValueError(
                    "fp8.activation_scheme: 'static' needs activation_scales ({layer pattern: scale}); "
                    "use activation_scheme='dynamic' or provide calibrated scales"
                )
            if not isinstance(self.activation_scales, Mapping):
                raise ValueError(f"fp8.activation_scales: expected a mapping, got {type(self.activation_scales).__name__}")
            for pat, val in self.activation_scales.items():
                LayerPattern.parse(pat, "fp8.activation_scales")
                if isinstance(val, bool) or not isinstance(val, (int, float)) or not (val > 0 and val < float("inf")):
                    raise ValueError(f"fp8.activation_scales[{pat!r}]: scale must be a finite positive number, got {val!r}")
            object.__setattr__(self, "activation_scales", MappingProxyType(dict(self.activation_scales)))
        elif self.activation_scales:
            raise ValueError("fp8.activation_scales: only valid with activation_scheme='static'")

    @property
    def scheme(self) -> Fp8Scheme:
        act = "static" if self.activation_scheme == "static" else self.activation_granularity
        return Fp8Scheme(self.weight_granularity, act)

    def scheme_name(self) -> str:
        return self.scheme.describe()

    def get_linear_method(self, layer_name, in_features, out_features):
        input_scale = None
        if self.activation_scheme == "static":
            for pat, val in self.activation_scales.items():
                if LayerPattern.parse(pat).matches(layer_name):
                    input_scale = float(val)
                    break
            else:
                raise ValueError(
                    f"fp8.activation_scales: no scale matches layer {layer_name!r}; add a pattern for it "
                    f"or list it in ignored_layers"
                )
        return Fp8LinearMethod(self.scheme, input_scale)


class Fp8LinearMethod(LinearMethodBase):
    name = "fp8"
    format = "fp8"

    def __init__(self, scheme: Fp8Scheme, input_scale: float | None = None):
        self.scheme = scheme
        self.static_input_scale = input_scale

    def create_weights(self, layer) -> None:
        n, k = layer.out_features, layer.in_features
        layer.register_buffer("weight", placeholder((n, k), FP8_DTYPE))
        scale_shape = (n,) if self.scheme.weight_granularity == "channel" else ()
        layer.register_buffer("weight_scale", placeholder(scale_shape, torch.float32))
        layer.register_buffer("input_scale", placeholder((), torch.float32) if self.scheme.activation == "static" else None)
        layer.register_buffer("bias", placeholder((n,), layer.compute_dtype) if layer.has_bias else None)

    def process_weights_after_loading(self, layer, device) -> None:
        weight = layer._pending.pop("weight").to(device)
        check_finite_weight(weight, layer.prefix)
        q, scale = quantize_weight_fp8(weight, self.scheme.weight_granularity)
        del weight
        set_buffer(layer, "weight", q)
        set_buffer(layer, "weight_scale", scale)
        if self.scheme.activation == "static":
            set_buffer(layer, "input_scale", torch.tensor(self.static_input_scale, dtype=torch.float32, device=device))
        if layer.has_bias:
            set_buffer(layer, "bias", layer._pending.pop("bias").to(device=device, dtype=layer.compute_dtype))
        layer.ready = True
