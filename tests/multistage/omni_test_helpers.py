"""Shared numeric helpers for the multistage tests (imported by name; pytest puts this folder on sys.path)."""

import torch


def logits_agreement(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(relative L2 error, top-1 agreement) of logits [T, V]; NaN fails."""
    assert torch.isfinite(out).all(), "quantized logits have NaN/Inf"
    rel = float((out.double() - ref.double()).norm() / ref.double().norm())
    top1 = float((out.argmax(-1) == ref.argmax(-1)).float().mean())
    return rel, top1


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(out).all(), "output has NaN/Inf"
    return float((out.double() - ref.double()).norm() / ref.double().norm())
