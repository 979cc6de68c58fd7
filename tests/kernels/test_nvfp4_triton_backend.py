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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("m", [1, 3, 16])
def test_ptx_decode_equals_float_decode_bitwise(m):
    """The inline-PTX decode (bf16x2 bit placement + FMA, bf16 subnormals for code 1) must give the
    same bf16 weights as the float32 decode: every byte value, every finite E4M3 scale byte (zero and
    subnormal scales included), hence bit-identical outputs without split-K."""
    from quantomni.kernels.nvfp4_ref import nvfp4_dequantize
    from quantomni.kernels.triton.nvfp4_fast import nvfp4_gemv

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("sm_89+")
    n, k = 200, 2048
    gen = torch.Generator(device="cuda").manual_seed(m)
    packed = torch.randint(0, 256, (n, k // 2), device="cuda", generator=gen, dtype=torch.int32).to(torch.uint8)
    packed[0, :128] = torch.arange(128, device="cuda", dtype=torch.uint8) * 2 + torch.tensor([0, 1], device="cuda",
                                                                                          dtype=torch.uint8).repeat(64)
    scale_bytes = torch.randint(0, 0x7F, (n, k // 16), device="cuda", generator=gen, dtype=torch.int32).to(torch.uint8)
    scale_bytes[1, :0x7F] = torch.arange(0x7F, device="cuda", dtype=torch.uint8)  # every finite E4M3 value
    ws = scale_bytes.view(torch.float8_e4m3fn)
    ws2 = torch.tensor(0.0371, device="cuda")
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=gen)
    ref = x.double() @ nvfp4_dequantize(packed, ws, ws2, torch.float64).t()
    for bn, bk in ((64, 128), (128, 256)):
        a = nvfp4_gemv(x, packed, ws, ws2, mode=2, block_n=bn, block_k=bk, split=1, decode_asm=True)
        b = nvfp4_gemv(x, packed, ws, ws2, mode=2, block_n=bn, block_k=bk, split=1, decode_asm=False)
        assert torch.isfinite(a).all() and torch.equal(a, b)
        assert float((a.double() - ref).norm() / ref.norm()) < 1e-2
    c = nvfp4_gemv(x, packed, ws, ws2, mode=2, split=4, decode_asm=True)
    assert float((c.double() - ref).norm() / ref.norm()) < 1e-2
    # float32 out: no bf16 output rounding, so a wrong decoding constant cannot hide (1e-5, not 1e-2)
    for mode in ((0, 2) if m == 1 else (2,)):
        f = nvfp4_gemv(x.float(), packed, ws, ws2, mode=mode, split=1)
        assert float((f.double() - ref).abs().max() / ref.abs().max()) < 1e-5
    if m == 1:  # mode 0 reads x as bf16 pairs through inline PTX (x x 2**63 in one bf16x2 multiply)
        a = nvfp4_gemv(x, packed, ws, ws2, mode=0, split=1, decode_asm=True)
        b = nvfp4_gemv(x, packed, ws, ws2, mode=0, split=1, decode_asm=False)
        assert torch.isfinite(a).all() and torch.equal(a, b)
        x_nan = x.clone()
        x_nan[0, 5] = float("nan")
        assert torch.isnan(nvfp4_gemv(x_nan, packed, ws, ws2, mode=0, split=1)).all()
