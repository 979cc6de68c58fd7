"""ModelOpt INT8 SmoothQuant layers (W8A8_SQ_PER_CHANNEL; runtime method ``modelopt``).

Stored: int8 weight [out, in], per-channel float32 weight_scale [out], static float32
input_scale, optional pre_quant_scale [in] (the SmoothQuant factor, applied to activations).
Runs on the "int8_sq" kernels (``quantomni.kernels.int8_sq``).
"""

from __future__ import annotations

from quantomni.formats.modelopt import LayerScheme
from quantomni.methods.modelopt_base import ModelOptLinearMethod
from quantomni.schemes import Int8SqScheme


class ModelOptInt8SqLinearMethod(ModelOptLinearMethod):
    name = "modelopt"
    format = "int8_sq"

    def __init__(self, layer_scheme: LayerScheme, has_pre_quant_scale: bool = False):
        super().__init__(layer_scheme, has_pre_quant_scale)
        self.scheme = Int8SqScheme(smoothed=has_pre_quant_scale)
