"""Tiny diffusers denoisers of every supported architecture, and their state dicts renamed to the
original-repo naming (the reverse of quantomni's maps; diffusers' own converters check each one)."""

from __future__ import annotations

import re
from typing import Mapping

import torch

from quantomni.formats.gguf_names import flux2 as flux2_names
from quantomni.formats.gguf_names import sd3 as sd3_names
from quantomni.formats.gguf_names import wan as wan_names

Tensors = dict[str, torch.Tensor]


def _swap(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a])


def _randomised(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    return model.eval()


def tiny_model(arch: str):
    import diffusers as d

    torch.manual_seed(0)
    if arch == "flux":
        m = d.FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                     attention_head_dim=32, num_attention_heads=2, joint_attention_dim=32,
                                     pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(8, 12, 12))
    elif arch == "qwen_image":
        m = d.QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=1,
                                          attention_head_dim=32, num_attention_heads=2, joint_attention_dim=32,
                                          axes_dims_rope=(8, 12, 12))
    elif arch == "sd3":
        m = d.SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=32,
                                    num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=64,
                                    pooled_projection_dim=32, out_channels=4, pos_embed_max_size=16,
                                    qk_norm="rms_norm", dual_attention_layers=(0,))
    elif arch == "flux2":
        m = d.Flux2Transformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                      attention_head_dim=32, num_attention_heads=2, joint_attention_dim=32,
                                      axes_dims_rope=(8, 8, 8, 8))
    elif arch == "z_image":
        m = d.ZImageTransformer2DModel(in_channels=4, dim=64, n_layers=1, n_refiner_layers=1, n_heads=2,
                                       n_kv_heads=2, cap_feat_dim=32, axes_dims=[8, 12, 12], axes_lens=[64, 32, 32])
    elif arch == "wan":
        m = d.WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32,
                                    in_channels=4, out_channels=4, text_dim=32, freq_dim=32, ffn_dim=64,
                                    num_layers=1, image_dim=32, added_kv_proj_dim=64)
    else:
        raise ValueError(arch)
    return _randomised(m)


def _invert(table: Mapping[str, str]) -> dict[str, str]:
    return {v: k for k, v in table.items()}


def _block_rename(sd: Tensors, out: Tensors, diff_prefix: str, orig_prefix: str, inv: Mapping[str, str]) -> None:
    for k in list(sd):
        m = re.fullmatch(rf"{re.escape(diff_prefix)}\.(\d+)\.(.+)", k)
        if m and m[2] in inv:
            out[f"{orig_prefix}.{m[1]}.{inv[m[2]]}"] = sd.pop(k)


def _fuse(sd: Tensors, out: Tensors, diff_prefix: str, orig_prefix: str, parts: tuple[str, ...], fused: str) -> None:
    """Concatenate diffusers' split projections back into the original fused tensor (rows)."""
    idx = sorted({int(k.split(".")[1]) for k in sd if k.startswith(diff_prefix + ".")})
    for i in idx:
        for p in ("weight", "bias"):
            names = [f"{diff_prefix}.{i}.{x}.{p}" for x in parts]
            if all(n in sd for n in names):
                out[f"{orig_prefix}.{i}.{fused}.{p}"] = torch.cat([sd.pop(n) for n in names])


def to_original(arch: str, state_dict: Mapping[str, torch.Tensor]) -> Tensors:
    sd, out = dict(state_dict), {}
    if arch == "flux":
        import sys
        from pathlib import Path

        sys.path.insert(0, str(Path(__file__).parent))
        from gguf_fixtures import flux_diffusers_to_bfl

        n_d = len({k.split(".")[1] for k in sd if k.startswith("transformer_blocks.")})
        n_s = len({k.split(".")[1] for k in sd if k.startswith("single_transformer_blocks.")})
        return flux_diffusers_to_bfl(sd, n_d, n_s)
    if arch == "wan":
        for k, v in _invert(wan_names._TOP).items():
            if k in sd:
                out[v] = sd.pop(k)
        _block_rename(sd, out, "blocks", "blocks", _invert(wan_names._BLOCK))
    elif arch == "flux2":
        for p in ("weight", "bias"):
            if f"norm_out.linear.{p}" in sd:
                out[f"final_layer.adaLN_modulation.1.{p}"] = _swap(sd.pop(f"norm_out.linear.{p}"))
        for k, v in _invert(flux2_names._TOP).items():
            if k in sd:
                out[v] = sd.pop(k)
        for q, fused in flux2_names._DOUBLE_QKV.items():
            _fuse(sd, out, "transformer_blocks", "double_blocks", fused, q)
        _block_rename(sd, out, "transformer_blocks", "double_blocks", _invert(flux2_names._DOUBLE))
        _block_rename(sd, out, "single_transformer_blocks", "single_blocks", _invert(flux2_names._SINGLE))
    elif arch == "sd3":
        last = max(int(k.split(".")[1]) for k in sd if k.startswith("transformer_blocks."))
        for p in ("weight", "bias"):
            out[f"final_layer.adaLN_modulation.1.{p}"] = _swap(sd.pop(f"norm_out.linear.{p}"))
            out[f"joint_blocks.{last}.context_block.adaLN_modulation.1.{p}"] = _swap(
                sd.pop(f"transformer_blocks.{last}.norm1_context.linear.{p}"))
        for k, v in _invert(sd3_names._TOP).items():
            if k in sd:
                out[v] = sd.pop(k)
        for q, fused in sd3_names._QKV.items():
            _fuse(sd, out, "transformer_blocks", "joint_blocks", fused, q)
        inv = _invert(sd3_names._BLOCK)
        inv.update({f"norm1_context.linear.{p}": f"context_block.adaLN_modulation.1.{p}" for p in ("weight", "bias")})
        _block_rename(sd, out, "transformer_blocks", "joint_blocks", inv)
    elif arch == "z_image":
        for k in list(sd):
            for new, old in (("all_x_embedder.2-1.", "x_embedder."), ("all_final_layer.2-1.", "final_layer.")):
                if k.startswith(new):
                    out[old + k[len(new):]] = sd.pop(k)
        for prefix in ("layers", "noise_refiner", "context_refiner"):
            _fuse(sd, out, prefix, prefix, ("attention.to_q", "attention.to_k", "attention.to_v"), "attention.qkv")
            _block_rename(sd, out, prefix, prefix, {
                "attention.to_out.0.weight": "attention.out.weight", "attention.to_out.0.bias": "attention.out.bias",
                "attention.norm_q.weight": "attention.q_norm.weight", "attention.norm_k.weight": "attention.k_norm.weight",
            })
        out["norm_final.weight"] = torch.ones(1)  # present in released files, unused by diffusers
    else:
        raise ValueError(f"{arch} has no original naming")
    out.update(sd)  # names identical in both namings
    return out


def diffusers_converter(arch: str):
    from diffusers.loaders import single_file_utils as s

    return {
        "wan": s.convert_wan_transformer_to_diffusers,
        "flux2": s.convert_flux2_transformer_checkpoint_to_diffusers,
        "sd3": s.convert_sd3_transformer_checkpoint_to_diffusers,
        "z_image": s.convert_z_image_transformer_checkpoint_to_diffusers,
    }[arch]
