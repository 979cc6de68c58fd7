"""QuantMoEExperts against transformers' BF16/FP32 fused experts: both backends, all formats.

Tolerances (relative L2 error of the experts' output vs the float experts, fresh random inputs):
  fp8 (W8A8 per-expert per-channel, dynamic per-token FP8 activations) < 0.09   (typ. 0.05)
  int8 (W8A8)                                                          < 0.04   (typ. 0.02)
  nvfp4 (W4A16, per-expert 16-element block scales)                    < 0.22   (typ. 0.14)
The grouped backend must match the reference loop to float rounding (rel < 1e-5 in fp32).
"""

import pytest
import torch

from quantomni.kernels.moe_torch import (dequant_experts, fake_quant_act, grouped_mm_available, register_expert_dequantizer,
                                         select_moe_backend)
from quantomni.layers.moe import ExpertWeights, QuantMoEExperts

TOL = {"fp8": 0.09, "int8": 0.04, "nvfp4": 0.22}
ACT = {"fp8": "fp8_token", "int8": "int8_token", "nvfp4": "none"}


def _experts(e=8, h=64, i=32, seed=0):
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeThinkerTextExperts

    from quantomni.demo_omni_models import omni_tokenizer, qwen3_omni_config

    cfg = qwen3_omni_config(omni_tokenizer(), hidden=h, experts=e).thinker_config.text_config
    cfg.moe_intermediate_size = i
    cfg._experts_implementation = "eager"
    ex = Qwen3OmniMoeThinkerTextExperts(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # distinct magnitudes per expert so a wrong per-expert scale shows up
        ex.gate_up_proj.copy_(torch.randn(ex.gate_up_proj.shape, generator=g) * torch.linspace(0.05, 0.5, e).view(e, 1, 1))
        ex.down_proj.copy_(torch.randn(ex.down_proj.shape, generator=g) * torch.linspace(0.5, 0.05, e).view(e, 1, 1))
    return ex.requires_grad_(False)


def _routing(t, e, k):
    idx = torch.stack([torch.randperm(e)[:k] for _ in range(t)])
    w = torch.softmax(torch.randn(t, k), -1)
    return idx, w


@pytest.fixture(scope="module")
def experts():
    return _experts()


@pytest.mark.parametrize("fmt", ["fp8", "int8", "nvfp4"])
def test_quantized_experts_close_to_float(experts, fmt, rng_seed):
    from omni_moe_helpers import rel

    x = torch.randn(37, 64)
    idx, w = _routing(37, 8, 2)
    ref = experts(x, idx, w)
    outs = {}
    for backend in ("torch", "grouped"):
        q = QuantMoEExperts.from_module(experts, fmt, ACT[fmt], backend)
        outs[backend] = q(x, idx, w)
        assert rel(outs[backend], ref) < TOL[fmt], (fmt, backend, rel(outs[backend], ref))
    assert rel(outs["grouped"], outs["torch"]) < 1e-5
    assert q.quantized_bytes() < (experts.gate_up_proj.numel() + experts.down_proj.numel()) * 2


def test_per_expert_scales_and_storage(experts):
    q = QuantMoEExperts.from_module(experts, "fp8", "fp8_token")
    assert q.gate_up.weight.shape == (8, 64, 64) and q.gate_up.weight_scale.shape == (8, 64)
    # expert magnitudes were spread 10x: their scales must differ accordingly
    per_expert = q.gate_up.weight_scale.amax(1)
    assert per_expert[-1] / per_expert[0] > 5
    n = QuantMoEExperts.from_module(experts, "nvfp4", "none")
    assert n.down.weight.dtype == torch.uint8 and n.down.weight.shape == (8, 64, 16)
    assert n.down.weight_scale.shape == (8, 64, 2) and n.down.weight_scale_2.shape == (8, 64)
    # dequantizing selected experts by index equals slicing the full dequantization
    idx = torch.tensor([5, 1])
    assert torch.equal(dequant_experts(n.down, idx, torch.float32), dequant_experts(n.down, None, torch.float32)[idx])


def test_unused_experts_and_single_token(experts):
    x = torch.randn(1, 64)
    idx = torch.tensor([[3, 6]])
    w = torch.tensor([[0.7, 0.3]])
    q = QuantMoEExperts.from_module(experts, "int8", "int8_token", "grouped")
    ref = experts(x, idx, w)
    assert float((q(x, idx, w) - ref).norm() / ref.norm()) < TOL["int8"]


def test_static_activation_modes():
    x = torch.randn(6, 32) * 3
    scales = torch.full((6,), float(x.abs().amax() / 448))
    y = fake_quant_act(x, "fp8_static", scales)
    assert float((y - x).norm() / x.norm()) < 0.06
    y4 = fake_quant_act(x, "nvfp4_static", torch.full((6,), float(x.abs().amax() / (6 * 448))))
    assert 0.01 < float((y4 - x).norm() / x.norm()) < 0.2
    with pytest.raises(ValueError, match="needs a per-expert input_scale"):
        ExpertWeights("fp8", "fp8_static", torch.zeros(1, 2, 2, dtype=torch.float8_e4m3fn), torch.ones(1, 2))


def test_bad_inputs_are_named(experts):
    with pytest.raises(ValueError, match="expert format"):
        QuantMoEExperts.from_module(experts, "fp4", "none")
    bad = _experts(h=48)  # K=48 is not a multiple of 32
    with pytest.raises(ValueError, match="K % 32"):
        QuantMoEExperts.from_module(bad, "nvfp4", "none")
    nan = _experts()
    nan.down_proj[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        QuantMoEExperts.from_module(nan, "fp8", "fp8_token")
    with pytest.raises(ValueError, match="moe_backend"):
        select_moe_backend("cutlass", torch.device("cpu"), torch.bfloat16)


def test_backend_selection_on_cpu():
    name, grouped_mm, why = select_moe_backend("auto", torch.device("cpu"), torch.bfloat16)
    assert name == "torch" and not grouped_mm
    name, grouped_mm, why = select_moe_backend("grouped", torch.device("cpu"), torch.bfloat16)
    assert name == "grouped" and not grouped_mm and "padded bmm" in why
    ok, why = grouped_mm_available(torch.device("cpu"), torch.bfloat16)
    assert not ok and "CUDA" in why
    from quantomni.kernels.moe_torch import grouped_mm_can_implement

    assert grouped_mm_can_implement((2048, 1536, 768))[0]
    ok, why = grouped_mm_can_implement((2048, 1540, 770))
    assert not ok and "[1540, 770]" in why


def test_pluggable_nvfp4_dequantizer(experts):
    from quantomni.kernels import moe_torch

    calls = []

    def spy(w, s, s2, dtype):
        calls.append(w.shape[0])
        return moe_torch.dequant_nvfp4_experts(w, s, s2, dtype)

    q = QuantMoEExperts.from_module(experts, "nvfp4", "none", "grouped")
    x = torch.randn(4, 64)
    idx, w = _routing(4, 8, 2)
    before = q(x, idx, w)
    register_expert_dequantizer("nvfp4", spy)
    try:
        after = q(x, idx, w)
    finally:
        register_expert_dequantizer("nvfp4", moe_torch.dequant_nvfp4_experts)
    assert calls and torch.equal(before, after)
    assert max(calls) == len(torch.unique(idx))  # only the active experts are dequantized


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("fmt", ["fp8", "nvfp4"])
def test_grouped_gpu_matches_reference(experts, fmt):
    from omni_moe_helpers import rel

    dev = torch.device("cuda")
    ex = _experts().to(dev).to(torch.bfloat16)
    x = torch.randn(64, 64, device=dev, dtype=torch.bfloat16)
    idx, w = _routing(64, 8, 2)
    idx, w = idx.to(dev), w.to(dev, torch.bfloat16)
    ref = QuantMoEExperts.from_module(ex, fmt, ACT[fmt], "torch").to(dev)(x, idx, w)
    out = QuantMoEExperts.from_module(ex, fmt, ACT[fmt], "grouped").to(dev)(x, idx, w)
    assert rel(out, ref) < 0.02


def test_grouped_mm_layout_matches_padded_bmm():
    """torch._grouped_mm (CPU fallback in recent torch) gets the same operands as on CUDA."""
    from quantomni.kernels.moe_torch import _group_matmul

    if not hasattr(torch, "_grouped_mm"):
        pytest.skip("this torch has no torch._grouped_mm")
    rows = torch.randn(11, 64, dtype=torch.bfloat16)
    counts = torch.tensor([3, 1, 7])
    w = torch.randn(3, 32, 64, dtype=torch.bfloat16)
    ref = torch.cat([rows[:3] @ w[0].t(), rows[3:4] @ w[1].t(), rows[4:] @ w[2].t()]).float()
    for grouped in (False, True):
        out = _group_matmul(rows, counts, w, grouped).float()
        assert float((out - ref).norm() / ref.norm()) < 1e-2


def test_dropped_slots_and_empty_batches(experts):
    """Index E marks a dropped slot (transformers skips it); zero tokens give an empty output."""
    q = {b: QuantMoEExperts.from_module(experts, "int8", "int8_token", b) for b in ("torch", "grouped")}
    x = torch.randn(5, 64)
    idx = torch.tensor([[1, 8], [8, 8], [2, 3], [8, 0], [4, 5]])
    w = torch.rand(5, 2)
    ref = experts(x, idx, w)
    for b, mod in q.items():
        out = mod(x, idx, w)
        assert torch.equal(out[1], torch.zeros(64))
        assert float((out - ref).norm() / ref.norm()) < TOL["int8"], b
        empty = mod(torch.randn(0, 64), torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 2))
        assert empty.shape == (0, 64)
