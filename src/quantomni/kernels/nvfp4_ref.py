"""NVFP4 reference math in plain torch (CPU and any GPU).

Why: every faster NVFP4 path (native FP4 GEMM, dequantizing kernels) is checked against this, and
the CPU runtime uses it directly. The math follows what NVIDIA ModelOpt writes and computes:

* storage: ``weight`` uint8 [N, K/2] holds two E2M1 codes per byte, the LOW nibble is the even
  column (k = 2j) and the HIGH nibble the odd column (k = 2j + 1);
* ``weight_scale`` float8_e4m3fn [N, K/16]: one block scale per 16 consecutive inputs;
* ``weight_scale_2`` float32 scalar: the global scale, ``amax(|W|) / (6 * 448)``;
* value = E2M1[code] * float(weight_scale[n, k // 16]) * weight_scale_2.

E2M1 code c: bit 3 = sign, bits 0..2 index [0, 0.5, 1, 1.5, 2, 3, 4, 6].
Rounding to E2M1 is round-to-nearest with ties to the even code (0.25 -> 0, 0.75 -> 1,
1.25 -> 1, 1.75 -> 2, 2.5 -> 2, 3.5 -> 4, 5 -> 4), magnitudes above 6 saturate to 6; negative
values keep the sign bit even when they round to zero (code 8), as ModelOpt does.

Shapes: K (the input/reduction dimension) must be a multiple of 32, the alignment native FP4
GEMMs require; a clear ``NVFP4ShapeError`` is raised otherwise.
"""

from __future__ import annotations

import torch

__all__ = [
    "E2M1_VALUES",
    "E4M3_MAX",
    "E2M1_MAX",
    "NVFP4_BLOCK_SIZE",
    "NVFP4ShapeError",
    "nvfp4_unpack",
    "nvfp4_pack",
    "e2m1_round_codes",
    "nvfp4_dequantize",
    "nvfp4_quantize",
    "nvfp4_block_scales",
    "nvfp4_fake_quantize_activation",
    "nvfp4_linear_reference",
    "clamp_nan_e4m3_scales",
]

E2M1_VALUES = torch.tensor(
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
    dtype=torch.float32,
)
E2M1_MAX = 6.0
E4M3_MAX = 448.0
E4M3_MIN_SCALE = 2.0**-9  # smallest positive E4M3 subnormal; ModelOpt clamps block scales to it
NVFP4_BLOCK_SIZE = 16
K_ALIGNMENT = 32

# Decision boundaries between consecutive E2M1 magnitudes, and the ones where a tie goes up
# (towards the even code).
_E2M1_BOUNDS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)
_E2M1_TIES_UP = (0.75, 1.75, 3.5)

E4M3_NAN_BYTES = (0x7F, 0xFF)
E4M3_MAX_BYTE = 0x7E


class NVFP4ShapeError(ValueError):
    """An NVFP4 tensor has a shape/dtype the format or the kernels cannot take."""


def _check_k(k: int, what: str) -> None:
    if k % K_ALIGNMENT != 0:
        raise NVFP4ShapeError(
            f"{what}: K (input features) = {k} must be a multiple of {K_ALIGNMENT} for NVFP4 "
            f"(16-element blocks, native FP4 GEMM alignment)"
        )


def _check_dtype(t: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    if t.dtype != dtype:
        raise NVFP4ShapeError(f"{what}: expected dtype {dtype}, got {t.dtype}")


def nvfp4_unpack(packed: torch.Tensor) -> torch.Tensor:
    """Unpack E2M1 codes to their float values (no scaling).

    packed: uint8 [..., K/2], two codes per byte, low nibble = even column.
    returns: float32 [..., K] on packed's device.
    """
    _check_dtype(packed, torch.uint8, "nvfp4_unpack(packed)")
    lut = E2M1_VALUES.to(packed.device)
    low = lut[(packed & 0x0F).long()]
    high = lut[(packed >> 4).long()]
    return torch.stack((low, high), dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def e2m1_round_codes(values: torch.Tensor, keep_negative_zero: bool = False) -> torch.Tensor:
    """Round already-scaled values to the nearest E2M1 code (ties to even code, saturating).

    values: float tensor [...] (any float dtype; computed in float32).
    keep_negative_zero: -0.0 gets code 8 (exact inverse of unpack); ModelOpt gives it code 0.
    returns: uint8 [...] codes in 0..15.
    """
    v = values.float()
    if torch.isnan(v).any():
        raise ValueError("e2m1_round_codes: input contains NaN")
    mag = v.abs()
    idx = torch.zeros(v.shape, dtype=torch.uint8, device=v.device)
    for b in _E2M1_BOUNDS:
        idx += (mag > b).to(torch.uint8)
    for b in _E2M1_TIES_UP:
        idx += (mag == b).to(torch.uint8)
    neg = torch.signbit(v) if keep_negative_zero else v < 0
    return (neg.to(torch.uint8) << 3) | idx


def nvfp4_pack(values: torch.Tensor) -> torch.Tensor:
    """Pack values on the E2M1 grid (others are rounded to nearest code) into bytes.

    values: float tensor [..., K], K even.
    returns: uint8 [..., K/2], low nibble = even column.
    """
    if values.shape[-1] % 2 != 0:
        raise NVFP4ShapeError(f"nvfp4_pack: last dimension {values.shape[-1]} must be even")
    codes = e2m1_round_codes(values, keep_negative_zero=True)
    return (codes[..., 1::2] << 4) | codes[..., 0::2]


def _check_weight_layout(weight, weight_scale, weight_scale_2, fn: str) -> tuple[int, int, int]:
    _check_dtype(weight, torch.uint8, f"{fn}(weight)")
    _check_dtype(weight_scale, torch.float8_e4m3fn, f"{fn}(weight_scale)")
    if weight.dim() != 2 or weight_scale.dim() != 2:
        raise NVFP4ShapeError(
            f"{fn}: weight and weight_scale must be 2-D, got {tuple(weight.shape)} and "
            f"{tuple(weight_scale.shape)}"
        )
    n, k = weight.shape[0], weight.shape[1] * 2
    _check_k(k, fn)
    if weight_scale.shape != (n, k // NVFP4_BLOCK_SIZE):
        raise NVFP4ShapeError(
            f"{fn}: weight_scale shape {tuple(weight_scale.shape)} does not match weight "
            f"{tuple(weight.shape)}: expected ({n}, {k // NVFP4_BLOCK_SIZE})"
        )
    if torch.as_tensor(weight_scale_2).numel() != 1:
        raise NVFP4ShapeError(f"{fn}: weight_scale_2 must be a scalar")
    return n, k, NVFP4_BLOCK_SIZE


def nvfp4_dequantize(
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_scale_2: torch.Tensor | float,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Dequantize an NVFP4 weight.

    weight: uint8 [N, K/2] packed E2M1 (low nibble = even column).
    weight_scale: float8_e4m3fn [N, K/16] per-block scales.
    weight_scale_2: float32 scalar (0-dim tensor or float), the global scale.
    dtype: output dtype; the math is float32.
    returns: [N, K] in ``dtype``.
    """
    n, k, bs = _check_weight_layout(weight, weight_scale, weight_scale_2, "nvfp4_dequantize")
    vals = nvfp4_unpack(weight).view(n, k // bs, bs)
    scale = weight_scale.float() * torch.as_tensor(weight_scale_2, dtype=torch.float32).to(
        weight.device
    ).reshape(())
    return (vals * scale.unsqueeze(-1)).reshape(n, k).to(dtype)


def nvfp4_block_scales(
    x: torch.Tensor, global_scale: torch.Tensor, block_size: int = NVFP4_BLOCK_SIZE
) -> torch.Tensor:
    """E4M3 block scales under ``global_scale``: block_amax / 6 / global, clamped to [2^-9, 448].

    x: float [..., K], K % block_size == 0.  global_scale: float32 scalar.
    returns: float8_e4m3fn [..., K/block_size]. All-zero blocks get scale 1.0 (as ModelOpt).
    """
    blocks = x.float().reshape(*x.shape[:-1], x.shape[-1] // block_size, block_size)
    amax = blocks.abs().amax(dim=-1)
    scale = amax / (E2M1_MAX * global_scale.float().reshape(()))
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return scale.clamp(min=E4M3_MIN_SCALE, max=E4M3_MAX).to(torch.float8_e4m3fn)


def _quantize_blocks(
    x: torch.Tensor, global_scale: torch.Tensor, block_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes uint8 [..., K], block scales e4m3 [..., K/bs]) with ModelOpt's arithmetic order."""
    xf = x.float()
    scale = nvfp4_block_scales(xf, global_scale, block_size)
    blocks = xf.reshape(*xf.shape[:-1], xf.shape[-1] // block_size, block_size)
    scaled = blocks / (scale.float() * global_scale.float().reshape(())).unsqueeze(-1)
    return e2m1_round_codes(scaled.reshape(xf.shape)), scale


def nvfp4_quantize(
    w: torch.Tensor,
    weight_scale_2: torch.Tensor | float | None = None,
    block_size: int = NVFP4_BLOCK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize a weight to NVFP4 the way ModelOpt exports it.

    w: float [N, K] (bf16/fp16/fp32; computed in float32), K % 32 == 0, finite.
    weight_scale_2: float32 scalar global scale; default amax(|w|) / (6 * 448).
    block_size: elements per block scale; NVFP4 uses 16 (the only value accepted).
    returns: (packed uint8 [N, K/2], weight_scale float8_e4m3fn [N, K/16],
              weight_scale_2 float32 0-dim).
    """
    if block_size != NVFP4_BLOCK_SIZE:
        raise NVFP4ShapeError(f"nvfp4_quantize: block_size={block_size}; NVFP4 uses 16")
    if w.dim() != 2 or not w.is_floating_point():
        raise NVFP4ShapeError(
            f"nvfp4_quantize: w must be a 2-D float tensor, got {w.dtype} {tuple(w.shape)}"
        )
    _check_k(w.shape[1], "nvfp4_quantize")
    wf = w.float()
    if not torch.isfinite(wf).all():
        raise ValueError("nvfp4_quantize: weight contains NaN or Inf")
    if weight_scale_2 is None:
        weight_scale_2 = wf.abs().amax() / (E2M1_MAX * E4M3_MAX)
    gs = torch.as_tensor(weight_scale_2, dtype=torch.float32, device=w.device).reshape(())
    if not (torch.isfinite(gs) and gs > 0):
        # all-zero weight: any positive global scale represents it exactly
        if torch.isfinite(gs) and gs == 0 and wf.abs().amax() == 0:
            gs = torch.ones((), dtype=torch.float32, device=w.device)
        else:
            raise ValueError(f"nvfp4_quantize: weight_scale_2 must be finite and > 0, got {gs}")
    codes, scale = _quantize_blocks(wf, gs, block_size)
    packed = (codes[..., 1::2] << 4) | codes[..., 0::2]
    return packed, scale, gs


def nvfp4_fake_quantize_activation(
    x: torch.Tensor, input_scale: torch.Tensor | float
) -> torch.Tensor:
    """Emulate NVFP4 (W4A4) activation quantization: quantize then dequantize.

    x: float [..., K], K % 32 == 0; per-16 blocks along K, dynamic E4M3 block scales
       block_amax / 6 / input_scale (clamped to [2^-9, 448]), codes rounded to nearest E2M1.
    input_scale: float32 scalar, the static global activation scale (calibrated amax / (6*448)).
    returns: x_dq, same shape and dtype as x (computed in float32).
    """
    _check_k(x.shape[-1], "nvfp4_fake_quantize_activation")
    gs = torch.as_tensor(input_scale, dtype=torch.float32).to(x.device).reshape(())
    if not (torch.isfinite(gs) and gs > 0):
        raise ValueError(f"nvfp4_fake_quantize_activation: input_scale must be > 0, got {gs}")
    codes, scale = _quantize_blocks(x, gs, NVFP4_BLOCK_SIZE)
    vals = E2M1_VALUES.to(x.device)[codes.long()]
    vals = vals.reshape(*x.shape[:-1], x.shape[-1] // NVFP4_BLOCK_SIZE, NVFP4_BLOCK_SIZE)
    return (vals * (scale.float() * gs).unsqueeze(-1)).reshape(x.shape).to(x.dtype)


def nvfp4_linear_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_scale_2: torch.Tensor | float,
    input_scale: torch.Tensor | float | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference NVFP4 linear: W4A16 when input_scale is None, else emulated W4A4.

    x: float [..., K].
    weight: uint8 [N, K/2]; weight_scale: float8_e4m3fn [N, K/16]; weight_scale_2: f32 scalar.
    input_scale: f32 scalar global activation scale, or None (activations stay high precision).
    bias: float [N] or None.
    returns: [..., N] in x.dtype (accumulated in float32).
    """
    w = nvfp4_dequantize(weight, weight_scale, weight_scale_2, torch.float32)
    if x.shape[-1] != w.shape[1]:
        raise NVFP4ShapeError(
            f"nvfp4_linear_reference: x has K={x.shape[-1]} but weight has K={w.shape[1]}"
        )
    xq = x.float() if input_scale is None else nvfp4_fake_quantize_activation(x.float(), input_scale)
    out = xq @ w.t()
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


def clamp_nan_e4m3_scales(scale: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Replace E4M3 NaN bytes (0x7F, 0xFF) by 0x7E (= 448, the E4M3 maximum).

    Why: some ModelOpt versions wrote literal NaN bytes into NVFP4 block scales; one NaN block
    poisons every output through the GEMM. 448 is what a correct cast would have saturated to.
    scale: float8_e4m3fn [...] (not modified).
    returns: (fixed float8_e4m3fn [...] — the input itself when nothing was fixed, else a
              copy —, number of bytes replaced).
    """
    _check_dtype(scale, torch.float8_e4m3fn, "clamp_nan_e4m3_scales(scale)")
    raw = scale.view(torch.uint8)
    bad = (raw & 0x7F) == 0x7F
    n = int(bad.sum())
    if n == 0:
        return scale, 0
    fixed = torch.where(bad, torch.full_like(raw, E4M3_MAX_BYTE), raw)
    return fixed.view(torch.float8_e4m3fn), n
