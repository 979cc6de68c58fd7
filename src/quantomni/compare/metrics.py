"""Pixel metrics that need no network weights: PSNR, SSIM and mean absolute error.

All work on 8-bit RGB (PIL images or ``uint8`` arrays of shape ``(H, W, 3)``) so that the
numbers mean the same thing as in other tools: PSNR with a peak of 255, SSIM over the three
channels (scikit-image, Gaussian-free 7x7 window, ``data_range=255``), MAE in 0..255 units.
Identical images give PSNR ``inf``; JSON writers turn that into the string ``"inf"``.
"""

from __future__ import annotations

import math

import numpy as np

from quantomni.compare.errors import ImageMismatchError


def to_uint8_rgb(image, what: str = "image") -> np.ndarray:
    """A PIL image or array -> ``uint8`` array ``(H, W, 3)``; anything else is a clear error."""
    if hasattr(image, "convert") and hasattr(image, "size"):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ImageMismatchError(f"{what}: expected uint8 pixels, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageMismatchError(f"{what}: expected an (H, W, 3) RGB array, got shape {arr.shape}")
    return arr


def _pair(reference, candidate) -> tuple[np.ndarray, np.ndarray]:
    ref = to_uint8_rgb(reference, "baseline image")
    cand = to_uint8_rgb(candidate, "candidate image")
    if ref.shape != cand.shape:
        raise ImageMismatchError(
            f"baseline image is {ref.shape[1]}x{ref.shape[0]} but candidate image is "
            f"{cand.shape[1]}x{cand.shape[0]} (WxH): generate both at the same --height/--width")
    return ref, cand


def psnr(reference, candidate) -> float:
    """Peak signal-to-noise ratio in dB, peak 255; ``inf`` for identical images."""
    ref, cand = _pair(reference, candidate)
    mse = float(np.mean((ref.astype(np.float64) - cand.astype(np.float64)) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(255.0 ** 2 / mse)


def mae(reference, candidate) -> float:
    """Mean absolute pixel difference in 0..255 units over all pixels and channels."""
    ref, cand = _pair(reference, candidate)
    return float(np.mean(np.abs(ref.astype(np.float64) - cand.astype(np.float64))))


def ssim(reference, candidate) -> float:
    """Structural similarity (scikit-image, channel-averaged), 1.0 for identical images."""
    ref, cand = _pair(reference, candidate)
    try:
        from skimage.metrics import structural_similarity
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("SSIM needs scikit-image: pip install scikit-image") from exc
    side = min(ref.shape[0], ref.shape[1])
    win = min(7, side if side % 2 == 1 else side - 1)
    if win < 3:
        raise ImageMismatchError(f"SSIM needs images of at least 3x3 pixels, got {ref.shape[1]}x{ref.shape[0]}")
    return float(structural_similarity(ref, cand, channel_axis=2, data_range=255, win_size=win))


def pixel_metrics(reference, candidate) -> dict[str, float]:
    """``{"psnr", "ssim", "mae"}`` for one baseline/candidate pair."""
    return {"psnr": psnr(reference, candidate), "ssim": ssim(reference, candidate), "mae": mae(reference, candidate)}
