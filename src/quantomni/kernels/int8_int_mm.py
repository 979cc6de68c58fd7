"""INT8 W8A8 linear through ``torch._int_mm`` (int8 x int8 -> int32; cuBLASLt on CUDA, also on CPU)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from quantomni.kernels.base import KernelSpec, LinearKernel
from quantomni.kernels.quant_ops import quantize_act_int8

# cuBLASLt's int8 GEMM needs more than 16 rows; smaller batches are zero-padded.
_CUDA_MIN_ROWS = 17


class IntMmInt8Kernel(LinearKernel):
    name = "int_mm"
    format = "int8"

    @classmethod
    def is_supported(cls, device):
        device = torch.device(device)
        if not hasattr(torch, "_int_mm"):
            return False, "this torch build has no torch._int_mm"
        if device.type == "cuda":
            if not torch.cuda.is_available():
                return False, "CUDA is not available"
            cap = torch.cuda.get_device_capability(device)
            if cap < (7, 5):
                return False, f"needs compute capability >= 7.5, device has {cap[0]}.{cap[1]}"
            return True, f"CUDA sm_{cap[0]}{cap[1]} int8 tensor cores"
        if device.type == "cpu":
            return True, "CPU int8 GEMM"
        return False, f"unsupported device type {device.type}"

    @classmethod
    def can_implement(cls, spec: KernelSpec):
        if spec.device.type == "cuda" and (spec.in_features % 8 or spec.out_features % 8):
            return False, f"needs in/out features divisible by 8 on CUDA, layer is {spec.out_features}x{spec.in_features}"
        return True, "int32-accumulating GEMM"

    @staticmethod
    def apply(layer, x):
        x_q, x_scale = quantize_act_int8(x)
        m = x_q.shape[0]
        if x_q.is_cuda and m < _CUDA_MIN_ROWS:
            x_q = F.pad(x_q, (0, 0, 0, _CUDA_MIN_ROWS - m))
        acc = torch._int_mm(x_q, layer.weight.t())[:m]
        out = acc.float() * x_scale * layer.weight_scale
        if layer.bias is not None:
            out = out + layer.bias.float()
        return out.to(x.dtype)
