"""NVFP4 W4A16 GEMM for Hopper: E2M1 unpack + E4M3 block scales in registers, BF16 MMA.

Numerical cases: triton_interp_cases/nvfp4_gemm_cases.py on the CPU interpreter (subprocess).
Requirement: K % 16 == 0 (scale block); other K are rejected. Not checkable on CPU: bf16 wgmma
numerics (the interpreter runs that dot in fp32 on the same exactly-representable weights), speed.
"""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
pytest.importorskip("triton")

from quantomni.kernels.triton._common import KernelInputError  # noqa: E402
from quantomni.kernels.triton.nvfp4_gemm import nvfp4_w4a16_mm  # noqa: E402
from triton_kernel_refs import nvfp4_dequant_f64, random_nvfp4, rel_err, run_interpreter_cases  # noqa: E402


def test_interpreter_cases():
    run_interpreter_cases("nvfp4_gemm_cases.py")


@pytest.fixture
def interp(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # lets CPU tensors reach the checks, which run first


def _args(m=2, n=8, k=32):
    gen = torch.Generator().manual_seed(0)
    w_packed, w_scale, w_scale_2 = random_nvfp4(n, k, gen)
    return torch.zeros(m, k, dtype=torch.bfloat16), w_packed, w_scale, w_scale_2


def test_rejects_k_not_multiple_of_16(interp):
    x = torch.zeros(2, 24, dtype=torch.bfloat16)
    w = torch.zeros(8, 12, dtype=torch.uint8)
    s = torch.zeros(8, 1).to(torch.float8_e4m3fn)
    with pytest.raises(KernelInputError, match="multiple of 16"):
        nvfp4_w4a16_mm(x, w, s, torch.tensor([1.0]))


def test_rejects_bad_shapes_and_dtypes(interp):
    x, w, s, s2 = _args()
    with pytest.raises(KernelInputError, match="w_scale has shape"):
        nvfp4_w4a16_mm(x, w, s[:, :1], s2)
    with pytest.raises(KernelInputError, match="x has K=64"):
        nvfp4_w4a16_mm(torch.zeros(2, 64, dtype=torch.bfloat16), w, s, s2)
    with pytest.raises(KernelInputError, match="x has dtype torch.float32"):
        nvfp4_w4a16_mm(x.float(), w, s, s2)
    with pytest.raises(KernelInputError, match="w_scale_2"):
        nvfp4_w4a16_mm(x, w, s, 0.5)
    with pytest.raises(KernelInputError, match="split_k"):
        nvfp4_w4a16_mm(x, w, s, s2, split_k=0)


def test_weight_memory_at_most_0_3x_bf16():
    _, w, s, _ = _args(n=3072, k=3072)
    assert (w.numel() + s.numel()) / (3072 * 3072 * 2) <= 0.3  # 4.5 bits per weight: 0.28x


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("m,n,k", [(1, 3072, 3072), (7, 1000, 3008), (16, 520, 4096), (300, 3072, 3072)])
def test_gpu_against_reference(m, n, k):
    gen = torch.Generator().manual_seed(m)
    w_packed, w_scale, w_scale_2 = random_nvfp4(n, k, gen)
    x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
    bias = torch.randn(n, generator=gen)
    ref = x.double() @ nvfp4_dequant_f64(w_packed, w_scale, w_scale_2).T + bias.double()
    out = nvfp4_w4a16_mm(x.cuda(), w_packed.cuda(), w_scale.cuda(), w_scale_2.cuda(), bias.cuda(), torch.float32)
    assert rel_err(out.cpu(), ref) < 1e-5
