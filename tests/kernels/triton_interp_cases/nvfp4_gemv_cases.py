"""Interpreter cases for the NVFP4 decode GEMV (nvfp4_fast.nvfp4_gemv); run by
test_nvfp4_triton_backend.py in a subprocess.

Reference: float64 dequantize then matmul with the bf16 activations. The output is bf16, and the
interpreter's bf16 cast truncates instead of rounding (checked: every value equals the truncated
reference), so each value is within one bf16 step (2**-7 relative) of the reference: checked
elementwise. Covered: every mode (CUDA-core, x @ w.T dot, swapped w @ x.T dot), both ways of
reading x, split-K with the in-kernel fix-up (called twice: the workspace must come back zeroed),
masked N tails, and a bias.
"""
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402
import torch  # noqa: E402

from quantomni.kernels.triton.nvfp4_fast import gemv_plan, nvfp4_gemv  # noqa: E402
from triton_kernel_refs import nvfp4_dequant_f64, random_nvfp4  # noqa: E402

CASES = [  # (M, N, K, plan)
    (1, 40, 256, dict(mode=0, block_n=16, block_k=64, split=1, x_split=True)),
    (1, 40, 256, dict(mode=0, block_n=16, block_k=64, split=2, x_split=False)),
    (1, 24, 512, dict(mode=0, block_n=32, block_k=128, split=4, x_split=True)),
    (1, 20, 1024, dict(mode=0, block_n=8, block_k=512, split=2, x_split=True, num_stages=3)),
    (5, 40, 256, dict(mode=1, block_n=16, block_k=64, split=1, x_split=False)),
    (3, 24, 256, dict(mode=1, block_n=16, block_k=64, split=4, x_split=True)),
    (16, 70, 256, dict(mode=2, block_n=64, block_k=64, split=1, x_split=True)),
    (7, 33, 256, dict(mode=2, block_n=64, block_k=64, split=2, x_split=False)),
    (2, 16, 512, dict(mode=2, block_n=64, block_k=128, split=4, x_split=True)),
    (4, 70, 512, dict(mode=2, block_n=64, block_k=256, split=1, x_split=True, num_stages=2)),
    (1, 20, 128, {}),  # default plans
    (9, 20, 128, {}),
]


@pytest.mark.parametrize("m,n,k,plan", CASES)
def test_matches_f64_reference(m, n, k, plan):
    gen = torch.Generator().manual_seed(m * 131 + n + k + len(plan))
    x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
    w_packed, w_scale, w_scale_2 = random_nvfp4(n, k, gen)
    bias = torch.randn(n, generator=gen).to(torch.bfloat16)
    ref = x.double() @ nvfp4_dequant_f64(w_packed, w_scale, w_scale_2).T + bias.double()
    for _ in range(2):  # split-K leaves its workspace and counters zeroed for the next call
        out = nvfp4_gemv(x, w_packed, w_scale, w_scale_2, bias, **plan)
        assert out.shape == (m, n) and out.dtype == torch.bfloat16
        assert torch.isfinite(out).all()
        _assert_close(out, ref)
    no_bias = nvfp4_gemv(x, w_packed, w_scale, w_scale_2, None, **plan)
    _assert_close(no_bias, ref - bias.double())


@pytest.mark.parametrize("m,plan", [(1, dict(mode=0)), (3, dict(mode=1)), (6, dict(mode=2)), (6, dict(mode=2, split=2, block_k=128))])
def test_float32_activations_are_exact_to_float32(m, plan):
    """float32 x and output: no bf16 rounding anywhere, so every decoding constant (2**63, 2**118,
    2**-8 folds) must be exact; the result matches float64 to float32 accumulation error."""
    gen = torch.Generator().manual_seed(7 + m)
    x = torch.randn(m, 256, generator=gen).to(torch.bfloat16).float()
    w_packed, w_scale, w_scale_2 = random_nvfp4(40, 256, gen)
    ref = x.double() @ nvfp4_dequant_f64(w_packed, w_scale, w_scale_2).T
    out = nvfp4_gemv(x, w_packed, w_scale, w_scale_2, None, **plan)
    assert out.dtype == torch.float32
    assert float((out.double() - ref).abs().max() / ref.abs().max()) < 1e-6


def _assert_close(out, ref):
    # bf16 truncation (under 2**-7 relative) plus fp32 accumulation error (1e-5 of the largest value)
    bound = ref.abs() * 2**-7 + 1e-5 * ref.abs().max()
    assert ((out.double() - ref).abs() <= bound).all(), float(((out.double() - ref).abs() / bound).max())


def test_plan_rejects_cuda_core_mode_for_several_rows():
    with pytest.raises(ValueError, match="M == 1"):
        gemv_plan(4, 64, 256, mode=0)


def test_plan_rejects_uneven_split():
    with pytest.raises(ValueError, match="multiple of BLOCK_K"):
        gemv_plan(1, 64, 192, block_k=64, split=2)
