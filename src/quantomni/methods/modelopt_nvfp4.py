"""Runtime method ``modelopt_fp4``: ModelOpt NVFP4 (W4A4) and W4A16_NVFP4 exports.

Layers keep the stored layout (packed E2M1 uint8 [out, in/2], E4M3 block scales [out, in/16],
float32 weight_scale_2, and for W4A4 the float32 input_scale) and run on the "nvfp4" kernels.
"""

from __future__ import annotations

import dataclasses

from quantomni.formats.modelopt import LayerScheme
from quantomni.methods.modelopt_base import ModelOptLinearMethod, ModelOptMethodConfig
from quantomni.schemes import Nvfp4Scheme


@dataclasses.dataclass(frozen=True)
class ModelOptFp4Config(ModelOptMethodConfig):
    method = "modelopt_fp4"
    accepted_algos = ("NVFP4", "W4A16_NVFP4")


class ModelOptNvfp4LinearMethod(ModelOptLinearMethod):
    name = "modelopt_fp4"
    format = "nvfp4"

    def __init__(self, layer_scheme: LayerScheme):
        super().__init__(layer_scheme)
        self.scheme = Nvfp4Scheme(weight_only=layer_scheme.weight_only)
