"""GGUF Q8_0 / Q4_K fused dequantize + GEMM, reading the file's blocks directly.

Numerical cases: triton_interp_cases/gguf_gemm_cases.py on the CPU interpreter (subprocess).
Requirements: K % 32 == 0 for Q8_0, K % 256 == 0 for Q4_K. Not checkable on CPU: wgmma numerics, speed.
"""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
pytest.importorskip("triton")

from quantomni.kernels.triton._common import KernelInputError  # noqa: E402
from quantomni.kernels.triton.gguf_gemm import q4_k_mm, q8_0_mm  # noqa: E402
from triton_kernel_refs import random_q8_0, rel_err, run_interpreter_cases  # noqa: E402


def test_interpreter_cases():
    run_interpreter_cases("gguf_gemm_cases.py")


@pytest.fixture
def interp(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def test_rejects_k_not_multiple_of_32(interp):
    with pytest.raises(KernelInputError, match="K % 32 == 0"):
        q8_0_mm(torch.zeros(2, 48, dtype=torch.bfloat16), torch.zeros(4, 51, dtype=torch.uint8))


def test_rejects_wrong_row_bytes(interp):
    with pytest.raises(KernelInputError, match="holds 68 bytes"):
        q8_0_mm(torch.zeros(2, 64, dtype=torch.bfloat16), torch.zeros(4, 64, dtype=torch.uint8))


def test_q4_k_rejects_bad_k_and_row_bytes(interp):
    with pytest.raises(KernelInputError, match="K % 256 == 0"):
        q4_k_mm(torch.zeros(2, 384, dtype=torch.bfloat16), torch.zeros(4, 216, dtype=torch.uint8))
    with pytest.raises(KernelInputError, match="holds 144 bytes"):
        q4_k_mm(torch.zeros(2, 256, dtype=torch.bfloat16), torch.zeros(4, 136, dtype=torch.uint8))


def test_matches_gguf_library_dequantize():
    """Our fixture's byte layout agrees with the gguf package's own Q8_0 dequantizer."""
    gguf = pytest.importorskip("gguf")
    from gguf.quants import dequantize

    gen = torch.Generator().manual_seed(0)
    w_packed, w_f64 = random_q8_0(4, 64, gen)
    deq = dequantize(w_packed.numpy(), gguf.GGMLQuantizationType.Q8_0)
    assert torch.allclose(torch.from_numpy(deq).double().reshape(4, 64), w_f64, rtol=0, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("m,n,k", [(1, 3072, 3072), (7, 1000, 3008), (300, 520, 4096)])
def test_gpu_against_reference(m, n, k):
    gen = torch.Generator().manual_seed(m)
    w_packed, w_f64 = random_q8_0(n, k, gen)
    x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
    ref = x.double() @ w_f64.to(torch.bfloat16).double().T
    out = q8_0_mm(x.cuda(), w_packed.cuda(), None, torch.float32)
    assert rel_err(out.cpu(), ref) < 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("m", [1, 16, 300])
def test_gpu_q4_k_and_repacked_layouts(m):
    gguf = pytest.importorskip("gguf")
    from gguf.quants import dequantize

    from quantomni.kernels.triton.group_affine_gemm import group_affine_mm, prepare_q4_k_weight, prepare_q8_0_weight
    from triton_kernel_refs import random_q4_k

    gen = torch.Generator().manual_seed(m)
    n, k = 520, 3072
    q4 = random_q4_k(n, k, gen)
    w4 = torch.from_numpy(dequantize(q4.numpy(), gguf.GGMLQuantizationType.Q4_K)).reshape(n, k)
    q8, w8 = random_q8_0(n, k, gen)
    x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
    for raw, w_ref, direct, prep in ((q4, w4, q4_k_mm, prepare_q4_k_weight), (q8, w8, q8_0_mm, prepare_q8_0_weight)):
        ref = x.double() @ w_ref.to(torch.bfloat16).double().T
        assert rel_err(direct(x.cuda(), raw.cuda(), None, torch.float32).cpu(), ref) < 1e-5
        assert rel_err(group_affine_mm(x.cuda(), prep(raw.cuda()), None, torch.float32).cpu(), ref) < 1e-5
