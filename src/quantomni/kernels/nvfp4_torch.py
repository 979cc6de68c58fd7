"""Torch NVFP4 linear: dequantize the stored weight per call (float32) and, for W4A4, emulate the
activation quantization (E2M1 codes with per-16 E4M3 scales under ``input_scale``) so results
match what native FP4 hardware computes. Runs on any device; on CUDA it is the
weight-dequantizing path for GPUs without native FP4 GEMMs."""

from __future__ import annotations

from quantomni.kernels.base import KernelSpec, LinearKernel
from quantomni.kernels.nvfp4_ref import K_ALIGNMENT, nvfp4_linear_reference


class TorchNvfp4Kernel(LinearKernel):
    name = "torch"
    format = "nvfp4"
    aliases = ("reference", "dequant")

    @classmethod
    def can_implement(cls, spec: KernelSpec):
        if spec.in_features % K_ALIGNMENT:
            return False, f"needs in_features divisible by {K_ALIGNMENT}, layer has {spec.in_features}"
        return True, "dequantize weight per call (+ emulated NVFP4 activations for W4A4)"

    @staticmethod
    def apply(layer, x):
        """x: [M, K] compute dtype; layer.weight uint8 [N, K/2]; layer.weight_scale e4m3 [N, K/16];
        layer.weight_scale_2 f32 []; layer.input_scale f32 [] or None (W4A16); returns [M, N]."""
        return nvfp4_linear_reference(
            x, layer.weight, layer.weight_scale, layer.weight_scale_2, layer.input_scale, layer.bias
        )
