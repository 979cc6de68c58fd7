"""Reference quantization ops (torch, any device).

These define the numerics every fast kernel must reproduce:
  FP8 E4M3: scale = amax / 448, q = saturate(x / scale) cast to float8_e4m3fn.
  INT8:     scale = amax / 127, q = clamp(round_half_even(x / scale), -127, 127).
Scales are float32. A zero row gets scale ``SCALE_FLOOR`` (so it quantizes to zeros, not NaN).
Non-finite activations propagate: a row (per-token) or the tensor (per-tensor) that holds a NaN
or Inf produces non-finite outputs; they are never silently replaced.
"""

from __future__ import annotations

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
INT8_MAX = 127.0
SCALE_FLOOR = 1e-12


def _scale_from_amax(amax: torch.Tensor, qmax: float) -> torch.Tensor:
    # clamp_min keeps NaN (clamp propagates NaN), so a NaN row stays NaN.
    return (amax.float() / qmax).clamp_min(SCALE_FLOOR)


def quantize_weight_fp8(weight: torch.Tensor, granularity: str) -> tuple[torch.Tensor, torch.Tensor]:
    """weight: [N, K] float; granularity 'tensor' | 'channel'.
    Returns (q float8_e4m3fn [N, K], scale float32 [] or [N])."""
    w = weight.float()
    if granularity == "tensor":
        scale = _scale_from_amax(w.abs().amax(), FP8_MAX)
        q = (w / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    elif granularity == "channel":
        scale = _scale_from_amax(w.abs().amax(dim=1), FP8_MAX)
        q = (w / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    else:
        raise ValueError(f"weight granularity must be 'tensor' or 'channel', got {granularity!r}")
    return q, scale


def quantize_act_fp8(x: torch.Tensor, mode: str, static_scale: torch.Tensor | None = None):
    """x: [M, K] float; mode 'token' | 'tensor' | 'static' (static_scale float32 []).
    Returns (q float8_e4m3fn [M, K], scale float32 [M, 1] for 'token', [] otherwise)."""
    xf = x.float()
    if mode == "token":
        scale = _scale_from_amax(xf.abs().amax(dim=1, keepdim=True), FP8_MAX)
    elif mode == "tensor":
        scale = _scale_from_amax(xf.abs().amax(), FP8_MAX)
    elif mode == "static":
        if static_scale is None:
            raise ValueError("static activation quantization needs an input scale")
        scale = static_scale.float()
    else:
        raise ValueError(f"activation mode must be 'token', 'tensor' or 'static', got {mode!r}")
    q = (xf / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale


def quantize_weight_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight: [N, K] float. Returns (q int8 [N, K], scale float32 [N]) symmetric per channel."""
    w = weight.float()
    scale = _scale_from_amax(w.abs().amax(dim=1), INT8_MAX)
    q = torch.round(w / scale[:, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


def quantize_act_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [M, K] float. Returns (q int8 [M, K], scale float32 [M, 1]) dynamic per token.
    A row with NaN/Inf gets a NaN scale, so its output row is NaN (int8 cannot hold NaN)."""
    xf = x.float()
    amax = xf.abs().amax(dim=1, keepdim=True)
    scale = _scale_from_amax(amax, INT8_MAX)
    finite = torch.isfinite(amax)
    q = torch.round(torch.nan_to_num(xf / scale, nan=0.0)).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    scale = torch.where(finite, scale, torch.full_like(scale, float("nan")))
    return q, scale


def check_finite_weight(weight: torch.Tensor, layer_name: str) -> None:
    if not torch.isfinite(weight).all():
        bad = int((~torch.isfinite(weight)).sum())
        raise ValueError(
            f"layer {layer_name!r}: weight has {bad} NaN/Inf value(s); refusing to quantize a corrupt checkpoint"
        )
