"""Quantized thinker logits against the BF16 thinker on the same prompt.

Tolerances (tiny random model, 135-token prompt, logits over the whole sequence):
  FP8 W8A8 (dense + experts):          rel L2 error < 0.08, top-1 agreement >= 0.90  (measured 0.035 / 0.98)
  INT8 W8A8:                           rel L2 error < 0.04, top-1 agreement >= 0.95  (measured 0.012 / 1.00)
  FP8 dense + NVFP4 W4A16 experts:     rel L2 error < 0.12, top-1 agreement >= 0.85  (measured 0.038 / 0.99)
"""

import pytest

PROMPT = "The quick brown fox jumps over the lazy dog. " * 3


@pytest.fixture(scope="module")
def bf16_logits(omni_engine):
    return omni_engine(None).thinker_logits(PROMPT)


@pytest.mark.parametrize("spec, kw, max_rel, min_top1", [
    ("fp8", {}, 0.08, 0.90),
    ("int8", {}, 0.04, 0.95),
    ("fp8", {"experts_format": "nvfp4"}, 0.12, 0.85),
    ("fp8", {"moe_backend": "grouped"}, 0.08, 0.90),
])
def test_quantized_thinker_logits_close_to_bf16(omni_engine, bf16_logits, spec, kw, max_rel, min_top1):
    from omni_test_helpers import logits_agreement

    out = omni_engine(spec, **kw).thinker_logits(PROMPT)
    rel, top1 = logits_agreement(out, bf16_logits)
    print(f"{spec} {kw}: rel {rel:.4f} top1 {top1:.3f}")
    assert 1e-4 < rel < max_rel  # quantized (not identical) yet close
    assert top1 >= min_top1
