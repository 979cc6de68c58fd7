"""Interpreter cases for the NVFP4 W4A16 GEMM; run by test_triton_nvfp4_gemm.py in a subprocess.

Reference: float64 dequantize (E2M1 table x E4M3 block scale x global scale) then matmul with the
bf16 activations. The dequantized weights are exact in bf16, so with float32 output the only error
is fp32 accumulation: tolerance 1e-6 relative to the output's max.
"""
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402
import torch  # noqa: E402

from quantomni.kernels.triton.nvfp4_gemm import nvfp4_w4a16_mm, prepare_nvfp4_weight  # noqa: E402
from triton_kernel_refs import nvfp4_dequant_f64, random_nvfp4, rel_err  # noqa: E402

# (M, N, K): K = 48, 80 are not multiples of the 32-wide interpreter tile (masked tail)
SHAPES = [(1, 24, 48), (5, 40, 64), (3, 17, 96), (16, 9, 80), (33, 20, 80), (40, 33, 64)]


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_matches_f64_dequant_reference(m, n, k):
    gen = torch.Generator().manual_seed(m * 31 + n + k)
    x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
    w_packed, w_scale, w_scale_2 = random_nvfp4(n, k, gen)
    bias = torch.randn(n, generator=gen)
    out = nvfp4_w4a16_mm(x, w_packed, w_scale, w_scale_2, bias, torch.float32)
    ref = x.double() @ nvfp4_dequant_f64(w_packed, w_scale, w_scale_2).T + bias.double()
    assert out.shape == (m, n)
    assert rel_err(out, ref) < 1e-6


@pytest.mark.parametrize("mode", ["atomic", "reduce"])
@pytest.mark.parametrize("split_k", [2, 3, 4])
def test_small_m_split_k_paths(split_k, mode):
    gen = torch.Generator().manual_seed(split_k)
    x = torch.randn(3, 96, generator=gen).to(torch.bfloat16)
    w_packed, w_scale, w_scale_2 = random_nvfp4(40, 96, gen)
    bias = torch.randn(40, generator=gen).to(torch.bfloat16)
    ref = x.double() @ nvfp4_dequant_f64(w_packed, w_scale, w_scale_2).T + bias.double()
    for _ in range(2):  # the second call checks that the atomic path left its workspace zeroed
        out = nvfp4_w4a16_mm(x, w_packed, w_scale, w_scale_2, bias, torch.float32, split_k=split_k, splitk_mode=mode)
        assert rel_err(out, ref) < 1e-6


def test_large_path_used_for_small_m_when_forced():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 64, generator=gen).to(torch.bfloat16)
    w_packed, w_scale, w_scale_2 = random_nvfp4(24, 64, gen)
    out = nvfp4_w4a16_mm(x, w_packed, w_scale, w_scale_2, None, torch.float32, small_m_max=0)
    assert rel_err(out, x.double() @ nvfp4_dequant_f64(w_packed, w_scale, w_scale_2).T) < 1e-6


def test_every_code_decodes():
    """Each of the 16 E2M1 codes in both nibbles, unit scales, identity activations."""
    codes = torch.arange(16, dtype=torch.uint8)
    w_packed = (codes[:, None] | (codes.flip(0)[:, None] << 4)).expand(16, 8).contiguous()  # [16, 8]
    w_scale = torch.ones(16, 1).to(torch.float8_e4m3fn)
    x = torch.eye(16, dtype=torch.bfloat16)
    out = nvfp4_w4a16_mm(x, w_packed, w_scale, torch.tensor([1.0]), None, torch.float32)
    table = [0, 0.5, 1, 1.5, 2, 3, 4, 6, 0, -0.5, -1, -1.5, -2, -3, -4, -6]
    assert out[0].tolist() == table                # column 0: low nibbles (code n in row n)
    assert out[1].tolist() == table[::-1]          # column 1: high nibbles (code 15 - n)


def test_prepare_returns_scale_bytes():
    gen = torch.Generator().manual_seed(2)
    w_packed, w_scale, _ = random_nvfp4(8, 32, gen)
    p, s = prepare_nvfp4_weight(w_packed, w_scale)
    assert s.dtype == torch.uint8 and torch.equal(s, w_scale.view(torch.uint8))
    assert p.is_contiguous()
