"""Frozen value objects that say how a layer's tensors are quantized.

Methods build them from configs; kernels read them. Neither side passes bags of flags.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Fp8Scheme:
    """FP8 E4M3 W8A8.

    weight_granularity: "tensor" (one scale) or "channel" (one scale per output channel).
    activation: "token" (dynamic per token), "tensor" (dynamic per tensor) or "static".
    """

    weight_granularity: str = "channel"
    activation: str = "token"

    def describe(self) -> str:
        act = {"token": "dynamic per-token", "tensor": "dynamic per-tensor", "static": "static"}[self.activation]
        return f"fp8-e4m3 W:per-{self.weight_granularity} A:{act}"


@dataclasses.dataclass(frozen=True)
class Int8Scheme:
    """INT8 W8A8: symmetric per-channel weights, dynamic per-token activations."""

    def describe(self) -> str:
        return "int8 W:per-channel-symmetric A:dynamic per-token"


@dataclasses.dataclass(frozen=True)
class GgufScheme:
    """Weights stored in a GGUF block format and dequantized per use; activations in the compute dtype.

    qtype_name: the ggml quantization type of the layer's weight as named by gguf ("Q8_0", "Q4_K", ...).
    """

    qtype_name: str

    def describe(self) -> str:
        return f"gguf {self.qtype_name}"


@dataclasses.dataclass(frozen=True)
class Nvfp4Scheme:
    """NVFP4: E2M1 weights with E4M3 per-16 block scales and a float32 global scale.

    weight_only: True for W4A16 (activations stay high precision); False for W4A4 (activations
    quantized to NVFP4 under a static global input_scale).
    """

    weight_only: bool = False

    def describe(self) -> str:
        return "nvfp4 W:e2m1/16-block A:" + ("bf16 (W4A16)" if self.weight_only else "nvfp4 static (W4A4)")


@dataclasses.dataclass(frozen=True)
class Int8SqScheme:
    """INT8 SmoothQuant W8A8: per-channel weights, static per-tensor activations, activations
    multiplied by pre_quant_scale first when ``smoothed``."""

    smoothed: bool = True

    def describe(self) -> str:
        return "int8 W:per-channel A:static per-tensor" + (" smoothquant" if self.smoothed else "")
