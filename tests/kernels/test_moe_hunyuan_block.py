"""A HunyuanImage-3.0-shaped MoE block (transformers' HunYuanMoEV1Moe: float32 router ``gate.wg``,
fused experts, shared MLP) quantized the mixed way: experts NVFP4, dense (shared MLP) FP8.

Tolerance: block output rel L2 error vs BF16 < 0.2 (NVFP4 W4A16 experts + FP8 W8A8 shared MLP;
measured 0.13 with both MoE backends), routing identical (the router is never touched).
"""

import pytest
import torch
from torch import nn


def _block(seed=0):
    from transformers import HunYuanMoEV1Config
    from transformers.models.hunyuan_v1_moe.modeling_hunyuan_v1_moe import HunYuanMoEV1Moe

    cfg = HunYuanMoEV1Config(hidden_size=64, intermediate_size=64, num_experts=8, moe_topk=2, num_attention_heads=4,
                             num_key_value_heads=2, head_dim=16, vocab_size=128, num_hidden_layers=1)
    cfg._experts_implementation = "eager"
    torch.manual_seed(seed)
    block = HunYuanMoEV1Moe(cfg, layer_idx=0)
    with torch.no_grad():
        for name, p in block.named_parameters():
            p.normal_(0.0, 0.5 if "wg" in name else 0.1)
    wrapper = nn.Module()
    wrapper.mlp = block  # module names as in the full model: "mlp.gate.wg", "mlp.shared_mlp.*"
    return wrapper.to(torch.bfloat16).requires_grad_(False), block


def _route(block, x):
    return block.gate(x.reshape(-1, x.shape[-1]))[2]


@pytest.mark.parametrize("backend", ["torch", "grouped"])
def test_mixed_nvfp4_experts_fp8_dense_block(backend, rng_seed):
    from quantomni.methods.fp8 import Fp8Config
    from quantomni.models.qwen3_omni import ADAPTER
    from quantomni.multistage.moe_quant import quantize_moe_component
    from quantomni.pipeline.backends import BackendRequest

    ref_wrapper, ref_block = _block()
    q_wrapper, q_block = _block()
    q_block.gate.wg.float()  # transformers keeps this router in float32; .to(bf16) above cast it
    ref_block.gate.wg.float()
    x = torch.randn(2, 9, 64, dtype=torch.bfloat16)
    ref = ref_block(x)
    plan = quantize_moe_component(q_wrapper, "transformer", Fp8Config(), ADAPTER, torch.device("cpu"), torch.bfloat16,
                                  BackendRequest.parse("auto"), experts_format="nvfp4", moe_backend=backend)
    quantized = {r.name: r for r in plan.records if r.quantized}
    assert set(quantized) == {"mlp.shared_mlp.gate_proj", "mlp.shared_mlp.up_proj", "mlp.shared_mlp.down_proj",
                              "mlp.experts.gate_up_proj", "mlp.experts.down_proj"}
    assert "nvfp4 experts" in quantized["mlp.experts.gate_up_proj"].scheme
    assert q_block.shared_mlp.gate_proj.weight.dtype == torch.float8_e4m3fn
    assert q_block.experts.gate_up.weight.dtype == torch.uint8
    assert type(q_block.gate.wg) is nn.Linear and q_block.gate.wg.weight.dtype == torch.float32  # router untouched
    assert torch.equal(_route(q_block, x), _route(ref_block, x))
    out = q_block(x)
    assert torch.isfinite(out).all()
    rel = float((out.float() - ref.float()).norm() / ref.float().norm())
    print(f"hunyuan-shaped block {backend}: rel {rel:.4f}")
    assert 1e-3 < rel < 0.2, rel
