"""The omni engine on CUDA: FP8 thinker (scaled_mm + grouped experts) against BF16 on the GPU."""

import pytest
import torch

import transformers

_TRANSFORMERS = tuple(int(v) for v in transformers.__version__.split(".")[:2])
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    # the GPU image has transformers 5.17, whose Qwen3-Omni layout the engine refuses with a clear error
    pytest.mark.skipif(_TRANSFORMERS < (5, 24), reason="Qwen3-Omni support needs transformers >= 5.24"),
]


PROMPT = "The quick brown fox jumps over the lazy dog. " * 3


@pytest.mark.parametrize("spec, kw", [("fp8", {}), ("fp8", {"experts_format": "nvfp4"})])
def test_quantized_thinker_on_cuda(omni_dir, spec, kw):
    from omni_test_helpers import logits_agreement

    from quantomni import Omni

    base = Omni(omni_dir, device="cuda", progress=False)
    ref = base.thinker_logits(PROMPT)
    omni = Omni(omni_dir, quantization=spec, device="cuda", progress=False, moe_backend="grouped", **kw)
    from quantomni.layers.moe import QuantMoEExperts

    # found by type: the module path differs between transformers releases (5.17 vs 5.24)
    experts = next(m for m in omni.model.modules() if isinstance(m, QuantMoEExperts))
    assert experts.gate_up.weight.is_cuda
    rel, top1 = logits_agreement(omni.thinker_logits(PROMPT), ref)
    assert rel < 0.12 and top1 > 0.85, (rel, top1)
    r = omni.chat([{"role": "user", "content": "hi"}], max_tokens=8, temperature=0, ignore_eos=True)
    assert r.completion_tokens == 8
