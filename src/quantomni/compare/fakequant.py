"""Reference quantize-dequantize functions for per-layer sensitivity (pure torch, any device).

These simulate what a format does to a tensor so that its damage can be measured before any
kernel exists; they are not the project's quantized layers (those live in ``quantomni.methods``)
and they stay deliberately simple:

- ``fp8``:   float8 e4m3, one scale per tensor (amax / 448), weights and activations;
- ``int8``:  symmetric int8, one scale per output channel for weights, per tensor for activations;
- ``nvfp4``: e2m1 values in blocks of 16 along the last dim, an e4m3 scale per block and an fp32
  scale per tensor (amax / (6 * 448)), weights and activations.

Each function maps a float tensor ``x`` (any shape, last dim = reduction dim) to a float32 tensor
of the same shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

FP8_MAX = 448.0
FP4_MAX = 6.0
NVFP4_BLOCK = 16
_E2M1_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def fp8_e4m3_qdq(x: torch.Tensor) -> torch.Tensor:
    """x: float [...]; per-tensor scaled round trip through ``torch.float8_e4m3fn``."""
    x = x.float()
    scale = (x.abs().amax() / FP8_MAX).clamp_min(1e-12)
    return (x / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float() * scale


def int8_per_channel_qdq(w: torch.Tensor) -> torch.Tensor:
    """w: float [out, in] (or [..., in]); symmetric int8 with one scale per row."""
    w = w.float()
    scale = (w.abs().amax(dim=-1, keepdim=True) / 127.0).clamp_min(1e-12)
    return (w / scale).round().clamp(-127, 127) * scale


def int8_per_tensor_qdq(x: torch.Tensor) -> torch.Tensor:
    """x: float [...]; symmetric int8 with one scale for the whole tensor (dynamic activations)."""
    x = x.float()
    scale = (x.abs().amax() / 127.0).clamp_min(1e-12)
    return (x / scale).round().clamp(-127, 127) * scale


def _round_to_e2m1(v: torch.Tensor) -> torch.Tensor:
    grid = torch.tensor(_E2M1_GRID, device=v.device, dtype=v.dtype)
    mids = (grid[1:] + grid[:-1]) / 2
    mag = v.abs().clamp(max=FP4_MAX)
    return grid[torch.bucketize(mag, mids)] * v.sign()


def nvfp4_qdq(x: torch.Tensor) -> torch.Tensor:
    """x: float [..., K]; e2m1 in blocks of 16 along K (zero-padded), e4m3 block scales, fp32 tensor scale."""
    x = x.float()
    shape = x.shape
    k = shape[-1]
    pad = (-k) % NVFP4_BLOCK
    flat = x.reshape(-1, k)
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    blocks = flat.reshape(flat.shape[0], -1, NVFP4_BLOCK)
    global_scale = (x.abs().amax() / (FP4_MAX * FP8_MAX)).clamp_min(1e-12)
    block_scale = (blocks.abs().amax(dim=-1, keepdim=True) / FP4_MAX / global_scale)
    block_scale = block_scale.clamp(max=FP8_MAX).to(torch.float8_e4m3fn).float()
    scale = (block_scale * global_scale)
    q = torch.where(scale > 0, _round_to_e2m1(blocks / scale.clamp_min(1e-30)), torch.zeros_like(blocks))
    out = (q * scale).reshape(flat.shape)[:, :k]
    return out.reshape(shape)


@dataclass(frozen=True)
class QuantFormat:
    """A candidate format for sensitivity: weight round trip, optional activation round trip."""

    name: str
    quantize_dequantize: Callable[[torch.Tensor], torch.Tensor]
    activation_fake_quant: Callable[[torch.Tensor], torch.Tensor] | None = None


BUILTIN_FORMATS: dict[str, QuantFormat] = {
    "fp8": QuantFormat("fp8", fp8_e4m3_qdq, fp8_e4m3_qdq),
    "int8": QuantFormat("int8", int8_per_channel_qdq, int8_per_tensor_qdq),
    "nvfp4": QuantFormat("nvfp4", nvfp4_qdq, nvfp4_qdq),
}
