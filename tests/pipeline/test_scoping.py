"""Only what was asked is quantized: sensitive layers stay BF16, text encoders are untouched."""

import pytest
import torch
from torch import nn

from quantomni import build_quant_config
from quantomni.errors import QuantizationError
from quantomni.layers.linear import QuantLinear
from quantomni.models.registry import adapter_for_class, get_adapter
from quantomni.pipeline.backends import BackendRequest
from quantomni.pipeline.planner import plan_component

CPU = torch.device("cpu")


def _tiny(arch):
    import diffusers

    if arch == "flux":
        return diffusers.FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                                num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                                                guidance_embeds=True, axes_dims_rope=(4, 6, 6))
    if arch == "qwen-image":
        return diffusers.QwenImageTransformer2DModel(patch_size=2, in_channels=64, out_channels=16, num_layers=1, attention_head_dim=16,
                                                     num_attention_heads=2, joint_attention_dim=16, axes_dims_rope=(8, 4, 4))
    if arch == "sd3":
        return diffusers.SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=16, num_layers=1, attention_head_dim=16,
                                               num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=32,
                                               pooled_projection_dim=32, out_channels=16)
    if arch == "flux2":
        return diffusers.Flux2Transformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                                 num_attention_heads=2, joint_attention_dim=32, timestep_guidance_channels=32,
                                                 axes_dims_rope=(4, 4, 4, 4))
    if arch == "z-image":
        return diffusers.ZImageTransformer2DModel(in_channels=16, dim=64, n_layers=1, n_refiner_layers=1, n_heads=2, n_kv_heads=2,
                                                  cap_feat_dim=32, axes_dims=[8, 12, 12], axes_lens=[64, 32, 32])
    if arch == "wan":
        return diffusers.WanTransformer3DModel(num_attention_heads=2, attention_head_dim=16, text_dim=32, freq_dim=32, ffn_dim=64,
                                               num_layers=1)
    raise AssertionError(arch)


# layers that must stay BF16 and layers that must be quantized, per architecture
EXPECT = {
    "flux": (["x_embedder", "context_embedder", "time_text_embed.timestep_embedder.linear_1", "transformer_blocks.0.norm1.linear",
              "transformer_blocks.0.norm1_context.linear", "single_transformer_blocks.0.norm.linear", "norm_out.linear", "proj_out"],
             ["transformer_blocks.0.attn.to_q", "transformer_blocks.0.ff.net.2", "single_transformer_blocks.0.proj_out",
              "single_transformer_blocks.0.proj_mlp"]),
    "qwen-image": (["img_in", "txt_in", "transformer_blocks.0.img_mod.1", "transformer_blocks.0.txt_mod.1", "norm_out.linear", "proj_out",
                    "time_text_embed.timestep_embedder.linear_2"],
                   ["transformer_blocks.0.attn.to_q", "transformer_blocks.0.img_mlp.net.2", "transformer_blocks.0.attn.to_add_out"]),
    "sd3": (["context_embedder", "transformer_blocks.0.norm1.linear", "norm_out.linear", "proj_out", "time_text_embed.text_embedder.linear_1"],
            ["transformer_blocks.0.attn.to_q", "transformer_blocks.0.ff.net.0.proj"]),
    "flux2": (["x_embedder", "context_embedder", "double_stream_modulation_img.linear", "single_stream_modulation.linear", "norm_out.linear",
               "proj_out", "time_guidance_embed.timestep_embedder.linear_1"],
              ["transformer_blocks.0.attn.to_q", "transformer_blocks.0.ff.linear_in", "single_transformer_blocks.0.attn.to_qkv_mlp_proj"]),
    "z-image": (["all_x_embedder.2-1", "all_final_layer.2-1.linear", "t_embedder.mlp.0", "cap_embedder.1", "layers.0.adaLN_modulation.0"],
                ["layers.0.attention.to_q", "layers.0.feed_forward.w1", "noise_refiner.0.attention.to_out.0"]),
    "wan": (["condition_embedder.time_embedder.linear_1", "condition_embedder.time_proj", "condition_embedder.text_embedder.linear_2", "proj_out"],
            ["blocks.0.attn1.to_q", "blocks.0.attn2.to_k", "blocks.0.ffn.net.0.proj"]),
}


@pytest.mark.parametrize("arch", sorted(EXPECT))
@pytest.mark.parametrize("method", ["fp8", "int8"])
def test_adapters_keep_sensitive_layers(arch, method):
    model = _tiny(arch)
    adapter = adapter_for_class(type(model).__name__)
    assert adapter.name == arch
    cfg = build_quant_config(method).components["denoiser"]
    plan = plan_component(model, "transformer", cfg, adapter, CPU, torch.bfloat16, BackendRequest())
    by_name = {r.name: r for r in plan.records}
    kept, quantized = EXPECT[arch]
    for name in kept:
        assert not by_name[name].quantized, f"{arch}: {name} must stay BF16"
        assert by_name[name].reason.startswith("sensitive")
    for name in quantized:
        assert by_name[name].quantized, f"{arch}: {name} must be quantized"
        assert by_name[name].backend in ("torch", "int_mm")
    assert 0 < plan.quantized_count < len(plan.records)


def test_ignored_layers_globs_and_regexes_and_precedence():
    model = _tiny("flux")
    adapter = get_adapter("flux")
    cfg = build_quant_config({"method": "fp8", "ignored_layers": ["*.ff.*", r"re:.*attn\.to_(q|k)", "x_embedder"]}).components["denoiser"]
    plan = plan_component(model, "transformer", cfg, adapter, CPU, torch.bfloat16, BackendRequest())
    by_name = {r.name: r for r in plan.records}
    assert by_name["transformer_blocks.0.ff.net.2"].reason == "ignored_layers: *.ff.*"
    assert by_name["transformer_blocks.0.attn.to_q"].reason.startswith("ignored_layers: re:")
    assert by_name["transformer_blocks.0.attn.to_v"].quantized
    # ignored_layers wins over the sensitive rule when both match
    assert by_name["x_embedder"].reason == "ignored_layers: x_embedder"


def test_skip_sensitive_false_quantizes_them():
    model = _tiny("flux")
    cfg = build_quant_config({"method": "int8", "skip_sensitive_layers": False}).components["denoiser"]
    plan = plan_component(model, "transformer", cfg, get_adapter("flux"), CPU, torch.bfloat16, BackendRequest())
    assert plan.quantized_count == len(plan.records)


def test_zero_quantized_layers_is_an_error():
    model = _tiny("flux")
    cfg = build_quant_config({"method": "fp8", "ignored_layers": ["*"]}).components["denoiser"]
    with pytest.raises(QuantizationError, match="no layer would be quantized"):
        plan_component(model, "transformer", cfg, get_adapter("flux"), CPU, torch.bfloat16, BackendRequest())


def test_unknown_denoiser_class_is_an_error():
    with pytest.raises(ValueError, match="no quantomni adapter for 'UNet2DConditionModel'"):
        adapter_for_class("UNet2DConditionModel")


def test_omni_quantizes_only_the_denoiser(demo_model_dir):
    from quantomni import Omni

    omni = Omni(demo_model_dir("flux"), quantization="fp8", device="cpu", progress=False)
    pipe = omni.pipe
    assert any(isinstance(m, QuantLinear) for m in pipe.transformer.modules())
    for comp in ("text_encoder", "text_encoder_2", "vae"):
        module = getattr(pipe, comp)
        assert not any(isinstance(m, QuantLinear) for m in module.modules()), comp
        assert all(p.dtype == torch.bfloat16 for p in module.parameters()), comp
    assert isinstance(pipe.transformer.proj_out, nn.Linear) and pipe.transformer.proj_out.weight.dtype == torch.bfloat16
    assert pipe.transformer.transformer_blocks[0].attn.to_q.weight.dtype == torch.float8_e4m3fn
    info = omni.describe()
    assert info["components"]["transformer"]["method"] == "fp8"
    assert info["components"]["transformer"]["quantized_layers"] == omni.plans["transformer"].quantized_count > 0
    assert info["components"]["text_encoder"]["method"] is None
    records = omni.plans["transformer"].records
    assert all(r.backend == "torch" for r in records if r.quantized)


def test_explicit_text_encoder_quantization(demo_model_dir):
    from quantomni import Omni

    omni = Omni(demo_model_dir("flux"), quantization={"transformer": None, "text_encoder_2": "int8"}, device="cpu", progress=False)
    assert any(isinstance(m, QuantLinear) for m in omni.pipe.text_encoder_2.modules())
    assert not any(isinstance(m, QuantLinear) for m in omni.pipe.transformer.modules())
    assert omni.generate("a cat", height=32, width=32, num_inference_steps=1, seed=0).images[0].size == (32, 32)
