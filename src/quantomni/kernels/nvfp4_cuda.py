"""NVFP4 on CUDA GPUs without FP4 tensor cores, CUDA C++ kernels compiled at run time (NVRTC).

At load time the packed E2M1 codes and E4M3 block scales are re-laid out (same byte count) so that
one rotate and one AND per register turn them into ``mma.sync`` operands (``cuda/nvfp4_mma_layout``).
Per call: M <= 32 -> decode-GEMV on tensor cores (16 rows per MMA pair; above 16 rows the block
re-reads its weights, mostly from L2); larger M -> dequantize to bf16 (exact) + cuBLAS. W4A4 checkpoints run as W4A16 here, as on the Triton backend.
"""

from __future__ import annotations

import torch

from quantomni.kernels.base import KernelSpec, LinearKernel


class CudaNvfp4Kernel(LinearKernel):
    name = "cuda"
    format = "nvfp4"
    aliases = ("nvrtc", "mma")

    @classmethod
    def is_supported(cls, device):
        from quantomni.kernels.cuda import nvfp4_mma

        return nvfp4_mma.is_supported(device)

    @classmethod
    def can_implement(cls, spec: KernelSpec):
        from quantomni.kernels.cuda.nvfp4_mma_layout import supports_shape

        ok, why = supports_shape(spec.out_features, spec.in_features)
        if not ok:
            return False, why
        if spec.dtype != torch.bfloat16:
            return False, f"outputs bf16, model dtype is {spec.dtype}"
        weight_only = getattr(spec.scheme, "weight_only", True)
        how = "W4A16" if weight_only else "W4A4 checkpoint run as W4A16 (no FP4 tensor cores; activations bf16)"
        return True, f"CUDA NVFP4 mma decode: {how}"

    @classmethod
    def prepare(cls):
        from quantomni.kernels.cuda import nvfp4_mma

        nvfp4_mma.register_ops()

    @classmethod
    def process_loaded(cls, layer) -> None:
        """Replace ``weight``/``weight_scale`` by the kernel layout (``weight_mma``/``scale_mma``)."""
        from quantomni.kernels.cuda import nvfp4_mma
        from quantomni.kernels.cuda.nvfp4_mma_layout import relayout

        packed, scales = relayout(layer.weight, layer.weight_scale)
        layer._buffers["weight"] = None
        layer._buffers["weight_scale"] = None
        layer.register_buffer("weight_mma", packed)
        layer.register_buffer("scale_mma", scales)
        nvfp4_mma.reserve_workspace(packed.device, layer.out_features)

    @staticmethod
    def apply(layer, x):
        from quantomni.kernels.cuda import nvfp4_mma

        args = (x, layer.weight_mma, layer.scale_mma, layer.weight_scale_2, layer.bias, layer.out_features)
        if torch.compiler.is_compiling():
            return torch.ops.quantomni_cuda.nvfp4_mma_linear(*args)
        return nvfp4_mma.linear(*args)
