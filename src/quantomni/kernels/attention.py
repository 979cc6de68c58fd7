"""Kernels for quantized attention (INT8 Q K^T, FP8 P V), chosen per device with a reason.

* ``triton``: kernels/triton/attention_int8.py, sm_90 (H100/H200) only: it uses TMA descriptors and
  8-bit wgmma, and was verified on nothing else. Runs as the custom op
  ``torch.ops.quantomni_attn.int8_fp8`` so it traces under torch.compile and replays in CUDA graphs.
* ``torch``: kernels/attention_torch.py, the CPU reference (same quantization; memory grows with
  tokens squared, so it is for tests and tiny models).

No silent fallback: a CUDA device the Triton kernel cannot run on is an error naming the reason.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Optional

import torch

from quantomni.errors import QuantizationError

NAMESPACE = "quantomni_attn"
_OP = None


@dataclasses.dataclass(frozen=True)
class AttentionKernel:
    name: str
    fn: Callable  # (q, k, v, scale: float | None) -> out, all [B, N, H, D]
    reason: str


def _triton_op():
    global _OP
    if _OP is None:
        from quantomni.kernels.triton.attention_int8 import attention_int8_fp8

        @torch.library.custom_op(f"{NAMESPACE}::int8_fp8", mutates_args=())
        def op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float]) -> torch.Tensor:
            return attention_int8_fp8(q, k, v, scale)

        @op.register_fake
        def _(q, k, v, scale):
            return q.new_empty(q.shape[:3] + (v.shape[-1],)).contiguous()

        _OP = torch.ops.quantomni_attn.int8_fp8
    return _OP


def _triton_unsupported(device: torch.device) -> str | None:
    cap = torch.cuda.get_device_capability(device)
    if cap != (9, 0):
        return (f"the Triton INT8/FP8 attention kernel runs on sm_90 (H100/H200) only; {torch.cuda.get_device_name(device)} "
                f"is sm_{cap[0]}{cap[1]}")
    try:
        import triton  # noqa: F401
    except ImportError:
        return "the Triton INT8/FP8 attention kernel needs triton (pip install triton)"
    return None


def select_attention_kernel(device: torch.device) -> AttentionKernel:
    """The kernel for ``device``; raises QuantizationError where none can run."""
    device = torch.device(device)
    if device.type == "cpu":
        from quantomni.kernels.attention_torch import quantized_attention_torch

        return AttentionKernel("torch", quantized_attention_torch,
                               "CPU: torch reference (the same quantization; O(tokens^2) memory)")
    if device.type == "cuda":
        why = _triton_unsupported(device)
        if why is not None:
            raise QuantizationError(f"attention='int8' cannot run on {device}: {why}")
        return AttentionKernel("triton", _triton_op(), "sm_90: Triton kernel, INT8 QK^T + FP8 PV on 8-bit wgmma")
    raise QuantizationError(f"attention='int8' has no kernel for device type {device.type!r}")
