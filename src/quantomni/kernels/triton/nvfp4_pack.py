"""Torch-only NVFP4 weight quantizer and dequantizer in the layout nvfp4_w4a16_mm reads.

Why: to quantize a BF16 checkpoint to NVFP4 at load time (and to give benchmarks and tests real
NVFP4 weights). Recipe (as ModelOpt's NVFP4): global scale s2 = amax(|W|) / (6 * 448); per block
of 16 inputs, scale = e4m3(block_amax / 6 / s2); codes = nearest E2M1 of W / (scale * s2) (ties go
to the even code), packed two per byte, low nibble = even column.
"""
from __future__ import annotations

import torch

from ._common import KernelInputError

E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def quantize_nvfp4(w: torch.Tensor):
    """w: [N, K] float (K % 16 == 0) -> (w_packed uint8 [N, K/2], w_scale float8_e4m3fn [N, K/16], w_scale_2 f32 [1])."""
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or not w.is_floating_point():
        raise KernelInputError("w must be a 2-D floating tensor [N, K]")
    n, k = w.shape
    if k % 16:
        raise KernelInputError(f"w has K={k}; NVFP4 needs K % 16 == 0")
    wf = w.float()
    if not torch.isfinite(wf).all():
        raise KernelInputError("w holds NaN or inf; NVFP4 cannot encode them")
    amax = wf.abs().amax().clamp(min=1e-12)
    s2 = (amax / (6.0 * 448.0)).reshape(1)
    blocks = wf.reshape(n, k // 16, 16)
    scale = (blocks.abs().amax(dim=-1) / 6.0 / s2).clamp(max=448.0).to(torch.float8_e4m3fn)
    denom = scale.float() * s2
    v = blocks / torch.where(denom > 0, denom, torch.ones_like(denom))[..., None]
    mags = torch.tensor(E2M1_MAGNITUDES, device=w.device)
    mid = (mags[1:] + mags[:-1]) / 2
    a = v.abs().clamp(max=6.0)
    idx = torch.bucketize(a, mid)  # a on a midpoint goes to the lower code...
    on_mid = (idx < 7) & (a == mid[idx.clamp(max=6)])
    idx = torch.where(on_mid & (idx % 2 == 0), idx, torch.where(on_mid, idx + 1, idx))  # ...unless that is odd
    idx = torch.where(a == 0, torch.zeros_like(idx), idx)
    codes = (idx | ((v < 0) & (idx > 0)).to(idx.dtype) << 3).to(torch.uint8).reshape(n, k)
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return packed.contiguous(), scale.contiguous(), s2.to(torch.float32)


def dequantize_nvfp4(w_packed: torch.Tensor, w_scale: torch.Tensor, w_scale_2: torch.Tensor) -> torch.Tensor:
    """Inverse of quantize_nvfp4 in float32: [N, K/2] uint8, [N, K/16] e4m3, [1] f32 -> [N, K]."""
    table = torch.tensor(E2M1_MAGNITUDES + tuple(-m for m in E2M1_MAGNITUDES), device=w_packed.device)
    n = w_packed.shape[0]
    codes = torch.stack([w_packed & 15, w_packed >> 4], dim=-1).reshape(n, -1).long()
    return table[codes] * w_scale.float().repeat_interleave(16, dim=1) * w_scale_2.float()
