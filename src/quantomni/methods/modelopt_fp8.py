"""Runtime method ``modelopt``: ModelOpt FP8, FP8_PER_CHANNEL_PER_TOKEN and W8A8_SQ_PER_CHANNEL exports.

FP8 layers run on the existing "fp8" kernels with the stored tensors as they are:
* FP8: e4m3 weight [out, in], per-tensor weight_scale, static input_scale -> Fp8Scheme("tensor", "static");
* FP8_PER_CHANNEL_PER_TOKEN: per-channel weight_scale [out], activations quantized per token at
  run time -> Fp8Scheme("channel", "token").
W8A8_SQ_PER_CHANNEL layers go to ``modelopt_int8``.
"""

from __future__ import annotations

import dataclasses

from quantomni.formats.modelopt import LayerScheme
from quantomni.methods.modelopt_base import ModelOptLinearMethod, ModelOptMethodConfig
from quantomni.schemes import Fp8Scheme


@dataclasses.dataclass(frozen=True)
class ModelOptFp8Config(ModelOptMethodConfig):
    method = "modelopt"
    accepted_algos = ("FP8", "FP8_PER_CHANNEL_PER_TOKEN", "W8A8_SQ_PER_CHANNEL")


class ModelOptFp8LinearMethod(ModelOptLinearMethod):
    name = "modelopt"
    format = "fp8"

    def __init__(self, layer_scheme: LayerScheme):
        super().__init__(layer_scheme)
        if layer_scheme.algo == "FP8":
            self.scheme = Fp8Scheme("tensor", "static")
        elif layer_scheme.algo == "FP8_PER_CHANNEL_PER_TOKEN":
            self.scheme = Fp8Scheme("channel", "token")
        else:
            raise ValueError(f"ModelOptFp8LinearMethod: {layer_scheme.algo} is not an FP8 layout")
