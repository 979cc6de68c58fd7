"""Runtime method ``modelopt_mixed``: ModelOpt MIXED_PRECISION exports.

``quantized_layers`` names each quantized layer's algorithm (FP8 / NVFP4 / ...); layers not
listed stay BF16. Each layer gets the linear method of its own layout (see modelopt_base).
"""

from __future__ import annotations

import dataclasses

from quantomni.methods.modelopt_base import ModelOptMethodConfig


@dataclasses.dataclass(frozen=True)
class ModelOptMixedConfig(ModelOptMethodConfig):
    method = "modelopt_mixed"
    accepted_algos = ("MIXED_PRECISION",)
