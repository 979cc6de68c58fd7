"""Triton NVFP4 backend (Hopper weight-dequantizing path) against the float64 reference."""

import os
import sys

import pytest
import torch

from quantomni.kernels.base import KernelSpec, select_linear_kernel
from quantomni.schemes import Nvfp4Scheme


def test_gemv_interpreter_cases():
    pytest.importorskip("triton")
    sys.path.insert(0, os.path.dirname(__file__))
    from triton_kernel_refs import run_interpreter_cases

    run_interpreter_cases("nvfp4_gemv_cases.py")


def test_selection_on_cpu_falls_to_torch_with_reason():
    spec = KernelSpec("nvfp4", 128, 64, torch.bfloat16, torch.device("cpu"), Nvfp4Scheme(weight_only=True))
    kernel, why = select_linear_kernel(spec, "auto")
    assert kernel.name == "torch" and "triton" in why


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("m", [1, 5, 16, 17, 300])
@pytest.mark.parametrize("k,n", [(64, 32), (128, 33), (3072, 1536), (768, 2048)])
def test_triton_nvfp4_matches_reference(m, k, n):
    from quantomni.kernels.nvfp4_ref import nvfp4_dequantize, nvfp4_quantize
    from quantomni.kernels.nvfp4_triton import TritonNvfp4Kernel

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("sm_89+")
    w = torch.randn(n, k, device="cuda") / k**0.5
    packed, ws, ws2 = nvfp4_quantize(w)

    class L:
        pass

    layer = L()
    layer.weight, layer.weight_scale, layer.weight_scale_2 = packed, ws, ws2
    layer.bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    out = TritonNvfp4Kernel.apply(layer, x)
    ref = x.double() @ nvfp4_dequantize(packed, ws, ws2, torch.float64).t() + layer.bias.double()
    assert out.shape == (m, n) and torch.isfinite(out).all()
    assert float((out.double() - ref).norm() / ref.norm()) < 1e-2
