"""The Triton NVFP4 expert dequantizer against the torch one (CPU: TRITON_INTERPRET=1; and CUDA).

Tolerance: float32 output bit-identical; bfloat16 within one bf16 rounding (rel <= 2^-7) of the
float32 result (the interpreter's float->bf16 cast truncates; CUDA rounds to nearest).
"""

import pytest
import torch

triton = pytest.importorskip("triton")


def _experts(device="cpu", g=3, n=24, k=160):
    from quantomni.kernels.nvfp4_ref import nvfp4_quantize

    torch.manual_seed(0)
    # magnitudes spread over 1e5 so block scales span the E4M3 range (subnormals included)
    w = torch.randn(g, n, k) * torch.logspace(-3, 2, g).view(g, 1, 1)
    w[:, :, :16] *= 1e-4
    qs = [nvfp4_quantize(w[i]) for i in range(g)]
    packed = torch.stack([q[0] for q in qs]).to(device)
    scales = torch.stack([q[1] for q in qs]).to(device)
    globals_ = torch.stack([q[2].expand(n) for q in qs]).to(device)
    return packed, scales, globals_


def _check(device):
    from quantomni.kernels.moe_nvfp4_triton import dequant_nvfp4_experts_triton
    from quantomni.kernels.moe_torch import dequant_nvfp4_experts

    w, s, s2 = _experts(device)
    assert int(((s.view(torch.uint8) >> 3) & 15).eq(0).sum()) > 0  # subnormal block scales exercised
    ref = dequant_nvfp4_experts(w, s, s2, torch.float32)
    assert torch.equal(dequant_nvfp4_experts_triton(w, s, s2, torch.float32), ref)
    out = dequant_nvfp4_experts_triton(w, s, s2, torch.bfloat16).float()
    nz = ref != 0
    assert torch.equal(out[~nz], ref[~nz])
    assert float(((out - ref).abs()[nz] / ref.abs()[nz]).max()) <= 2**-7


def test_triton_dequant_interpreted(monkeypatch):
    from quantomni.kernels import moe_nvfp4_triton

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    moe_nvfp4_triton._kernel.cache_clear()
    try:
        _check("cpu")
        with pytest.raises(ValueError, match="shapes"):
            w, s, s2 = _experts()
            moe_nvfp4_triton.dequant_nvfp4_experts_triton(w, s[..., :1], s2, torch.float32)
    finally:
        moe_nvfp4_triton._kernel.cache_clear()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_triton_dequant_cuda():
    _check("cuda")
