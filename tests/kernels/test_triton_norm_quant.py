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
