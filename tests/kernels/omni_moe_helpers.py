"""Numeric helper for the MoE kernel tests."""

import torch


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(out).all(), "output has NaN/Inf"
    return float((out.double() - ref.double()).norm() / ref.double().norm())
