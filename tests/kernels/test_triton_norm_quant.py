"""Fused LayerNorm + AdaLN modulation + per-token quant (producer-side activation quant).
Numerical cases: triton_interp_cases/norm_quant_cases.py on the CPU interpreter (subprocess)."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
pytest.importorskip("triton")

from quantomni.kernels.triton._common import KernelInputError  # noqa: E402
from quantomni.kernels.triton.norm_quant import layernorm_modulate_quant  # noqa: E402
from triton_kernel_refs import run_interpreter_cases  # noqa: E402


def test_interpreter_cases():
    run_interpreter_cases("norm_quant_cases.py")


@pytest.fixture
def interp(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def test_rejects_bad_modulation(interp):
    x = torch.zeros(4, 16)
    with pytest.raises(KernelInputError, match=r"shift is \(8,\)"):
        layernorm_modulate_quant(x, torch.zeros(8), torch.zeros(16))
    with pytest.raises(KernelInputError, match="not a multiple of the 3 batches"):
        layernorm_modulate_quant(x, torch.zeros(3, 16), torch.zeros(3, 16))
    with pytest.raises(KernelInputError, match="out_dtype"):
        layernorm_modulate_quant(x, torch.zeros(16), torch.zeros(16), torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.int8])
def test_gpu_against_torch(dtype):
    gen = torch.Generator(device="cuda").manual_seed(0)
    m, k, b = 4096 + 7, 3072, 1
    x = torch.randn(m, k, device="cuda", generator=gen).to(torch.bfloat16)
    shift = torch.randn(k, device="cuda", generator=gen).to(torch.bfloat16) * 0.3
    scale = torch.randn(k, device="cuda", generator=gen).to(torch.bfloat16) * 0.3
    q, s = layernorm_modulate_quant(x, shift, scale, dtype)
    y = torch.nn.functional.layer_norm(x.float(), (k,), eps=1e-6) * (1 + scale.float()) + shift.float()
    s_ref = (y.abs().amax(dim=1, keepdim=True) / (127.0 if dtype == torch.int8 else 448.0)).clamp(min=1e-12)
    torch.testing.assert_close(s, s_ref, rtol=1e-4, atol=0)
    deq = q.float() * s
    assert ((deq - y).abs().amax(dim=1, keepdim=True) <= s * (1.0 if dtype == torch.int8 else 32.0)).all()
