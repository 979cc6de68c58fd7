"""Interpreter cases for the GGUF Q8_0 fused dequant GEMM; run by test_triton_gguf_gemm.py.

Reference: float64 dequant (d * qs), rounded once to bf16 (the kernel's documented weight rounding,
as GGUF runtimes that dequantize to the compute dtype do), float64 matmul; tolerance 1e-6 with
float32 output. Also within 1% of the unrounded float64 reference.
"""
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402
import torch  # noqa: E402

from quantomni.kernels.triton.gguf_gemm import q8_0_mm  # noqa: E402
from triton_kernel_refs import random_q8_0, rel_err  # noqa: E402


@pytest.mark.parametrize("m,n,k", [(1, 24, 64), (5, 40, 96), (33, 20, 160), (17, 9, 32)])
def test_matches_reference(m, n, k):
    gen = torch.Generator().manual_seed(m + n + k)
    x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
    w_packed, w_f64 = random_q8_0(n, k, gen)
    bias = torch.randn(n, generator=gen)
    out = q8_0_mm(x, w_packed, bias, torch.float32)
    ref_rounded = x.double() @ w_f64.to(torch.bfloat16).double().T + bias.double()
    assert rel_err(out, ref_rounded) < 1e-6
    assert rel_err(out, x.double() @ w_f64.T + bias.double()) < 1e-2


def test_no_bias_bf16_out():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 64, generator=gen).to(torch.bfloat16)
    w_packed, w_f64 = random_q8_0(16, 64, gen)
    out = q8_0_mm(x, w_packed)
    assert out.dtype == torch.bfloat16
    assert rel_err(out, x.double() @ w_f64.T) < 1e-2


@pytest.mark.parametrize("m,n,k", [(1, 8, 256), (5, 20, 512), (17, 9, 256)])
def test_q4_k_matches_gguf_dequantize(m, n, k):
    """Reference: the gguf package's own Q4_K dequantizer, rounded to bf16, float64 matmul."""
    gguf = pytest.importorskip("gguf")
    from gguf.quants import dequantize

    from quantomni.kernels.triton.gguf_gemm import q4_k_mm
    from triton_kernel_refs import random_q4_k

    gen = torch.Generator().manual_seed(m + n + k)
    w_packed = random_q4_k(n, k, gen)
    w_ref = torch.from_numpy(dequantize(w_packed.numpy(), gguf.GGMLQuantizationType.Q4_K)).reshape(n, k)
    x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
    bias = torch.randn(n, generator=gen)
    out = q4_k_mm(x, w_packed, bias, torch.float32)
    ref = x.double() @ w_ref.to(torch.bfloat16).double().T + bias.double()
    assert rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("kind", ["q8_0", "q4_k"])
@pytest.mark.parametrize("m", [1, 19])
def test_prepared_group_layout_matches_block_layout(kind, m):
    """Repacked (vector-friendly) layout gives the same result as reading the GGUF blocks."""
    import gguf
    from gguf.quants import dequantize

    from quantomni.kernels.triton import group_affine_gemm as ga
    from quantomni.kernels.triton.gguf_gemm import q4_k_mm
    from triton_kernel_refs import random_q4_k

    gen = torch.Generator().manual_seed(m)
    n, k = 20, 512
    if kind == "q8_0":
        raw, _ = random_q8_0(n, k, gen)
        prepared, direct, qtype = ga.prepare_q8_0_weight(raw), q8_0_mm, gguf.GGMLQuantizationType.Q8_0
    else:
        raw = random_q4_k(n, k, gen)
        prepared, direct, qtype = ga.prepare_q4_k_weight(raw), q4_k_mm, gguf.GGMLQuantizationType.Q4_K
    w_ref = torch.from_numpy(dequantize(raw.numpy(), qtype)).reshape(n, k)
    x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
    bias = torch.randn(n, generator=gen)
    out = ga.group_affine_mm(x, prepared, bias, torch.float32)
    ref = x.double() @ w_ref.to(torch.bfloat16).double().T + bias.double()
    assert rel_err(out, ref) < 1e-5
    assert rel_err(out, direct(x, raw, bias, torch.float32).double()) < 1e-5
