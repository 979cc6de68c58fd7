"""Torch NVFP4 quantizer: round trip on representable values, error on Gaussian weights, layout."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

from quantomni.kernels.triton._common import KernelInputError  # noqa: E402
from quantomni.kernels.triton.nvfp4_pack import dequantize_nvfp4, quantize_nvfp4  # noqa: E402
from triton_kernel_refs import nvfp4_dequant_f64  # noqa: E402


def test_gaussian_weights_sqnr_and_memory():
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    packed, scale, s2 = quantize_nvfp4(w)
    assert packed.shape == (64, 128) and scale.shape == (64, 16) and scale.dtype == torch.float8_e4m3fn
    deq = dequantize_nvfp4(packed, scale, s2)
    sqnr_db = 10 * torch.log10(w.pow(2).sum() / (w - deq).pow(2).sum())
    assert sqnr_db > 18.0  # 4-bit E2M1 with 16-wide E4M3 scales: about 20 dB on Gaussian data
    assert torch.allclose(deq.double(), nvfp4_dequant_f64(packed, scale, s2), rtol=0, atol=1e-6)


def test_representable_values_round_trip_exactly():
    mags = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6.0])
    row = torch.cat([mags, -mags.flip(0)])  # block amax 6 -> block scale 1 / s2
    w = row.repeat(3, 2)  # [3, 32]
    packed, scale, s2 = quantize_nvfp4(w)
    # s2 = 6 / (6 * 448) is not a power of two, so scale * s2 carries float32 rounding
    torch.testing.assert_close(dequantize_nvfp4(packed, scale, s2), w, rtol=1e-6, atol=0)


def test_ties_go_to_even_code():
    # block 0 sets the global amax so s2 = 2^-10; block 1 (amax 1.5) gets scale 256, a unit of 0.25:
    # every division is exact, so the midpoints below are exact ties
    unit = 0.25
    block1 = torch.tensor([6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0] + [0.0] * 8) * unit
    block0 = torch.zeros(16)
    block0[0] = 6 * 448 / 1024
    packed, scale, s2 = quantize_nvfp4(torch.cat([block0, block1])[None, :])
    assert s2.item() == 2.0 ** -10 and scale.float()[0, 1].item() == 256.0
    deq = dequantize_nvfp4(packed, scale, s2)[0, 16:24] / unit
    assert deq.tolist() == [6.0, 0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0]


def test_rejects_bad_input():
    with pytest.raises(KernelInputError, match="K % 16"):
        quantize_nvfp4(torch.randn(4, 20))
    with pytest.raises(KernelInputError, match="NaN or inf"):
        quantize_nvfp4(torch.full((2, 16), float("nan")))
