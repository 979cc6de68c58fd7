"""Interpreter cases for the INT8/FP8 scaled GEMMs; run by test_triton_w8a8_gemm.py in a subprocess.

Tolerances: float32 output must match the float64 reference to 1e-6 relative (int32 accumulation
is exact; the epilogue is float32). bf16 output must be within one bf16 ulp (the interpreter
truncates fp32->bf16 instead of rounding to nearest, so half an ulp is not enough here).
"""
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402
import torch  # noqa: E402

from quantomni.kernels.triton.fp8_gemm import fp8_linear, fp8_scaled_mm  # noqa: E402
from quantomni.kernels.triton.int8_gemm import int8_linear, int8_scaled_mm  # noqa: E402
from triton_kernel_refs import rel_err  # noqa: E402

SHAPES = [(1, 40, 48), (5, 9, 100), (33, 70, 96), (17, 31, 64)]


def _operands(m, n, k, dtype, gen):
    if dtype == torch.int8:
        x_q = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=gen)
        w_q = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=gen)
    else:
        x_q = (torch.randn(m, k, generator=gen) * 50).to(torch.float8_e4m3fn)
        w_q = (torch.randn(n, k, generator=gen) * 50).to(torch.float8_e4m3fn)
    xs = torch.rand(m, 1, generator=gen) + 0.1
    ws = torch.rand(n, generator=gen) + 0.1
    bias = torch.randn(n, generator=gen)
    return x_q, w_q, xs, ws, bias


def _ref(x_q, w_q, xs, ws, bias):
    out = (x_q.double() @ w_q.double().T) * xs.double().reshape(-1, 1) * ws.double().reshape(1, -1)
    return out + bias.double() if bias is not None else out


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_int8_exact_f32_out(m, n, k):
    gen = torch.Generator().manual_seed(m + n + k)
    x_q, w_q, xs, ws, bias = _operands(m, n, k, torch.int8, gen)
    out = int8_scaled_mm(x_q, w_q, xs, ws, bias, torch.float32)
    assert out.shape == (m, n) and out.dtype == torch.float32
    assert rel_err(out, _ref(x_q, w_q, xs, ws, bias)) < 1e-6


@pytest.mark.parametrize("m,n,k", [s for s in SHAPES if s[2] % 16 == 0])
def test_fp8_exact_f32_out(m, n, k):
    gen = torch.Generator().manual_seed(3 * m + n + k)
    x_q, w_q, xs, ws, bias = _operands(m, n, k, torch.float8_e4m3fn, gen)
    out = fp8_scaled_mm(x_q, w_q, xs, ws, bias, torch.float32)
    assert rel_err(out, _ref(x_q, w_q, xs, ws, bias)) < 1e-6


def test_bf16_out_within_one_ulp_and_scalar_scales():
    gen = torch.Generator().manual_seed(11)
    x_q, w_q, _, _, _ = _operands(9, 20, 64, torch.int8, gen)
    out = int8_scaled_mm(x_q, w_q, 0.02, torch.tensor(0.5), None)  # per-tensor scales, no bias
    ref = _ref(x_q, w_q, torch.tensor([0.02]), torch.tensor([0.5]), None)
    assert out.dtype == torch.bfloat16
    ulp = 2.0 ** (torch.floor(torch.log2(ref.abs().clamp_min(1e-30))) - 7)
    assert ((out.double() - ref).abs() <= ulp).all()


def test_non_contiguous_activation_rows():
    gen = torch.Generator().manual_seed(5)
    big = torch.randint(-127, 128, (6, 80), dtype=torch.int8, generator=gen)
    x_q = big[:, :48]  # row stride 80, unit column stride
    w_q = torch.randint(-127, 128, (24, 48), dtype=torch.int8, generator=gen)
    out = int8_scaled_mm(x_q, w_q, torch.ones(6, 1), torch.ones(24), None, torch.float32)
    assert rel_err(out, _ref(x_q, w_q, torch.ones(6, 1), torch.ones(24), None)) < 1e-6


@pytest.mark.parametrize("linear,tol", [(int8_linear, 0.02), (fp8_linear, 0.06)])
def test_dynamic_linear_close_to_float(linear, tol):
    """Quantize x per token and w per channel, then compare with the float GEMM (quantization error)."""
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(7, 64, generator=gen)
    w = torch.randn(24, 64, generator=gen)
    qmax, dt = (127.0, torch.int8) if linear is int8_linear else (448.0, torch.float8_e4m3fn)
    ws = w.abs().amax(dim=1) / qmax
    w_q = (w / ws[:, None]).round().to(dt) if dt == torch.int8 else (w / ws[:, None]).to(dt)
    bias = torch.randn(24, generator=gen)
    out = linear(x, w_q, ws, bias, torch.float32)
    assert rel_err(out, x.double() @ w.double().T + bias.double()) < tol
