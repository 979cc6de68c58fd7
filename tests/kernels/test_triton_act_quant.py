"""Per-token FP8/INT8 activation quant kernel.

The numerical cases (triton_interp_cases/act_quant_cases.py) run on the Triton CPU interpreter in a
subprocess. What the interpreter cannot check: the GPU's float32 -> float8 cast instruction (the
interpreter rounds fp8 wrongly, so under it the kernel stores clamped float32 and torch casts; the
GPU test below covers the real cast).
"""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
pytest.importorskip("triton")

from quantomni.kernels.triton import act_quant  # noqa: E402
from quantomni.kernels.triton._common import KernelInputError  # noqa: E402
from triton_kernel_refs import run_interpreter_cases  # noqa: E402


def test_interpreter_cases():
    run_interpreter_cases("act_quant_cases.py")


@pytest.fixture
def interp(monkeypatch):
    # validation runs before any kernel is built, so no interpreter is needed in-process
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _ref(x, qmax, dtype):
    xf = x.float()
    s = (xf.abs().amax(dim=1, keepdim=True) / qmax).clamp(min=1e-12)
    if dtype == torch.int8:
        q = torch.round(xf / s).clamp(-127, 127).to(torch.int8)
    else:
        q = (xf / s).clamp(-448, 448).to(torch.float8_e4m3fn)
    return q, s


def test_rejects_bad_input():
    with pytest.raises(KernelInputError, match="x has dtype torch.int8"):
        act_quant.per_token_quant_fp8(torch.zeros(2, 4, dtype=torch.int8))
    with pytest.raises(KernelInputError, match="expected 2 dimensions"):
        act_quant.per_token_quant_int8(torch.zeros(2, 4, 3))


def test_cpu_tensor_rejected_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(KernelInputError, match="need a CUDA tensor"):
        act_quant.per_token_quant_fp8(torch.randn(2, 4))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_matches_torch_odd_shapes():
    gen = torch.Generator(device="cuda").manual_seed(0)
    for m, k in [(1, 3072), (37, 3000), (5, 12288), (3, 20000)]:
        x = torch.randn(m, k, device="cuda", generator=gen, dtype=torch.bfloat16) * 4
        for fn, qmax, dt in ((act_quant.per_token_quant_int8, 127.0, torch.int8),
                             (act_quant.per_token_quant_fp8, 448.0, torch.float8_e4m3fn)):
            q, s = fn(x)
            q_ref, s_ref = _ref(x, qmax, dt)
            torch.testing.assert_close(s, s_ref, rtol=1e-6, atol=0)
            mismatch = (q.view(torch.uint8) != q_ref.view(torch.uint8)).float().mean().item()
            assert mismatch < 1e-3, (fn.__name__, m, k, mismatch)  # ties under 1-ulp division differences
