"""INT8 and FP8 scaled GEMMs with fused epilogue (scales, bias, cast).

Numerical cases: triton_interp_cases/w8a8_gemm_cases.py on the CPU interpreter (subprocess).
Not checkable on CPU: tensor-core (wgmma) numerics, fp8 fast accumulation, speed.
"""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
pytest.importorskip("triton")

from quantomni.kernels.triton._common import KernelInputError  # noqa: E402
from quantomni.kernels.triton.fp8_gemm import fp8_scaled_mm  # noqa: E402
from quantomni.kernels.triton.int8_gemm import int8_scaled_mm  # noqa: E402
from triton_kernel_refs import rel_err, run_interpreter_cases  # noqa: E402


def test_interpreter_cases():
    run_interpreter_cases("w8a8_gemm_cases.py")


@pytest.fixture
def interp(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # lets CPU tensors reach the checks, which run first


def test_rejects_mismatched_k(interp):
    x = torch.zeros(4, 32, dtype=torch.int8)
    w = torch.zeros(8, 48, dtype=torch.int8)
    with pytest.raises(KernelInputError, match="K=32 but w_q"):
        int8_scaled_mm(x, w, torch.ones(4, 1), torch.ones(8))


def test_int32_k_limit_applies_to_int8_only(interp):
    from quantomni.kernels.triton.int8_gemm import MAX_K, _check_operands

    k = MAX_K + 16
    x = torch.ones(1, k, dtype=torch.int8)
    with pytest.raises(KernelInputError, match="int32 accumulation could overflow"):
        _check_operands(x, x, torch.int8)
    xf = x.to(torch.float8_e4m3fn)
    a, b = _check_operands(xf, xf, torch.float8_e4m3fn)  # float32 accumulation: no K limit
    assert a.shape == b.shape == (1, k)


def test_rejects_wrong_scale_shape_and_dtype(interp):
    x = torch.zeros(4, 32, dtype=torch.int8)
    w = torch.zeros(8, 32, dtype=torch.int8)
    with pytest.raises(KernelInputError, match="w_scale has shape"):
        int8_scaled_mm(x, w, torch.ones(4, 1), torch.ones(7))
    with pytest.raises(KernelInputError, match="x_scale has dtype"):
        int8_scaled_mm(x, w, torch.ones(4, 1, dtype=torch.float16), torch.ones(8))
    with pytest.raises(KernelInputError, match="bias has shape"):
        int8_scaled_mm(x, w, torch.ones(4, 1), torch.ones(8), bias=torch.ones(9))
    with pytest.raises(KernelInputError, match="out_dtype"):
        int8_scaled_mm(x, w, torch.ones(4, 1), torch.ones(8), out_dtype=torch.int32)


def test_scale_shapes_accepted_and_rejected():
    from quantomni.kernels.triton._common import scale_vector

    for shape in [(5,), (5, 1), (1, 5)]:
        v = scale_vector("w_scale", torch.arange(5.0).reshape(shape), 5, torch.device("cpu"))
        assert v.shape == (5,) and v.tolist() == [0, 1, 2, 3, 4]
    v = scale_vector("w_scale", 0.25, 5, torch.device("cpu"))
    assert v.shape == (5,) and v.stride(0) == 0
    with pytest.raises(KernelInputError, match=r"w_scale has shape \(5, 2\)"):
        scale_vector("w_scale", torch.ones(5, 2), 10, torch.device("cpu"))


def test_fp8_rejects_k_not_multiple_of_16(interp):
    x = torch.zeros(4, 40).to(torch.float8_e4m3fn)
    w = torch.zeros(8, 40).to(torch.float8_e4m3fn)
    with pytest.raises(KernelInputError, match="K % 16 == 0"):
        fp8_scaled_mm(x, w, torch.ones(4, 1), torch.ones(8))


def test_fp8_rejects_int8_operands(interp):
    x = torch.zeros(4, 32, dtype=torch.int8)
    with pytest.raises(KernelInputError, match="x_q has dtype torch.int8"):
        fp8_scaled_mm(x, x, torch.ones(4, 1), torch.ones(4))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("m,n,k", [(1, 3072, 3072), (77, 1000, 3000), (300, 520, 4096)])
def test_gpu_against_reference(m, n, k):
    gen = torch.Generator(device="cuda").manual_seed(m)
    xs = torch.rand(m, 1, device="cuda", generator=gen) + 0.1
    ws = torch.rand(n, device="cuda", generator=gen) + 0.1
    bias = torch.randn(n, device="cuda", generator=gen)
    x8 = torch.randint(-127, 128, (m, k), device="cuda", dtype=torch.int8, generator=gen)
    w8 = torch.randint(-127, 128, (n, k), device="cuda", dtype=torch.int8, generator=gen)
    ref = (x8.double() @ w8.double().T) * xs.double() * ws.double() + bias.double()
    assert rel_err(int8_scaled_mm(x8, w8, xs, ws, bias, torch.float32), ref) < 1e-6
    if k % 16 == 0:
        xf = torch.randn(m, k, device="cuda", generator=gen).to(torch.float8_e4m3fn)
        wf = torch.randn(n, k, device="cuda", generator=gen).to(torch.float8_e4m3fn)
        ref = (xf.double() @ wf.double().T) * xs.double() * ws.double() + bias.double()
        # fp8 wgmma accumulates with reduced precision (fast accumulation)
        assert rel_err(fp8_scaled_mm(xf, wf, xs, ws, bias, torch.bfloat16), ref) < 1e-2


def test_benchmark_script_variants_under_interpreter():
    """benchmarks/bench_triton_kernels.py's variants vs their references (tiny CPU shapes)."""
    run_interpreter_cases("bench_variants_cases.py")
