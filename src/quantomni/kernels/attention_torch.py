"""Torch reference for quantized attention (INT8 Q K^T, FP8 P V): the CPU path and the tests' model
of the Triton kernel (kernels/triton/attention_int8.py).

The same quantization as the kernel, in plain torch and float32:
- Q and K: INT8, one scale (amax / 127) per (batch, head, block of rows); round half to even. K is
  smoothed first: its per-(batch, head, channel) mean over the keys is subtracted.
  A block holding NaN gets a NaN scale, so NaN reaches every score it touches.
- V: FP8 E4M3, one scale (amax / 448) per (batch, head, block of BLOCK_N keys); NaN as for Q and K.
- P = exp(s - rowmax(s)) in [0, 1], times 448, cast to E4M3; the row sums use the unrounded P.
The one difference from the kernel: the kernel shifts P by a running max (online softmax), this
path by the final row max, so P is rounded at slightly different points (the outputs differ by
far less than the quantization error; the tests bound it).
"""
from __future__ import annotations

import math

import torch

INT8_MAX = 127.0
FP8_MAX = 448.0


def _block_scales(x: torch.Tensor, block: int, qmax: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, H, N, D] float32 -> (x padded to whole blocks [B, H, nb, block, D], scale [B, H, nb, 1, 1]).
    The amax ignores NaN; a block holding NaN gets a NaN scale."""
    b, h, n, d = x.shape
    nb = -(-n // block)
    xp = torch.nn.functional.pad(x, (0, 0, 0, nb * block - n)).reshape(b, h, nb, block, d)
    amax = xp.abs().nan_to_num(nan=0.0).amax(dim=(-2, -1), keepdim=True)
    scale = (amax / qmax).clamp_min(1e-12)
    has_nan = torch.isnan(xp).any(dim=-1, keepdim=True).any(dim=-2, keepdim=True)
    return xp, torch.where(has_nan, torch.full_like(scale, float("nan")), scale)


def _int8_dequant(x: torch.Tensor, block: int) -> torch.Tensor:
    b, h, n, d = x.shape
    xp, scale = _block_scales(x, block, INT8_MAX)
    codes = torch.round(torch.nan_to_num(xp / scale, nan=0.0)).clamp(-INT8_MAX, INT8_MAX)
    return (codes * scale).reshape(b, h, -1, d)[:, :, :n]


def _fp8_dequant(x: torch.Tensor, block: int) -> torch.Tensor:
    b, h, n, d = x.shape
    xp, scale = _block_scales(x, block, FP8_MAX)
    codes = torch.nan_to_num(xp / scale, nan=0.0).to(torch.float8_e4m3fn).float()
    return (codes * scale).reshape(b, h, -1, d)[:, :, :n]


def quantized_attention_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
                              block_m: int = 128, block_n: int = 128) -> torch.Tensor:
    """softmax(q k^T * scale) v for [B, N, H, D] tensors with the kernel's quantization; returns
    [B, NQ, H, D] in q's dtype. Memory grows with NQ * NK: a reference, not a fast path."""
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    qf, kf, vf = (t.float().transpose(1, 2) for t in (q, k, v))
    qd = _int8_dequant(qf, block_m)
    kd = _int8_dequant(kf - kf.mean(dim=2, keepdim=True), block_n)  # smoothing, as the kernel
    vd = _fp8_dequant(vf, block_n)
    s = (qd @ kd.transpose(-1, -2)) * scale
    p = torch.exp(s - s.amax(dim=-1, keepdim=True))
    l = p.sum(dim=-1, keepdim=True)
    p8 = (p * FP8_MAX).to(torch.float8_e4m3fn).float() / FP8_MAX
    out = (p8 @ vd) / l
    return out.transpose(1, 2).to(q.dtype).contiguous()
