"""Helpers shared by tests (imported as a plain module; conftest.py files only hold fixtures)."""

from __future__ import annotations

import pytest
import torch

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative L2 error in float64; NaN/Inf in ``out`` fails the test."""
    out, ref = out.double(), ref.double()
    assert torch.isfinite(out).all(), "output has NaN/Inf"
    return float((out - ref).norm() / ref.norm())
