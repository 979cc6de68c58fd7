"""FLUX.1 (dev/schnell): original BFL names and diffusers ``FluxTransformer2DModel`` names.

BFL fuses q/k/v (``img_attn.qkv``, ``txt_attn.qkv``) and, in single blocks, q/k/v plus the MLP
input (``linear1``); diffusers keeps them apart, so those become row ranges of the fused tensor.
BFL's final adaLN emits (shift, scale) while diffusers' ``norm_out.linear`` emits (scale, shift):
that tensor gets SWAP_HALVES.
"""

from __future__ import annotations

import re

from .base import SWAP_HALVES, ArchNameMap, GGUFNameError, rename, split_rows, with_params

_TOP = with_params({
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer.linear": "proj_out",
})

_DOUBLE = {
    **with_params({
        "img_mod.lin": "norm1.linear",
        "txt_mod.lin": "norm1_context.linear",
        "img_attn.proj": "attn.to_out.0",
        "txt_attn.proj": "attn.to_add_out",
        "img_mlp.0": "ff.net.0.proj",
        "img_mlp.2": "ff.net.2",
        "txt_mlp.0": "ff_context.net.0.proj",
        "txt_mlp.2": "ff_context.net.2",
    }),
    "img_attn.norm.query_norm.scale": "attn.norm_q.weight",
    "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
    "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
    "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
}
_DOUBLE_QKV = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}

_SINGLE = {
    **with_params({"linear2": "proj_out", "modulation.lin": "norm.linear"}),
    "norm.query_norm.scale": "attn.norm_q.weight",
    "norm.key_norm.scale": "attn.norm_k.weight",
}


def split_qkv(source: str, shape: tuple[int, ...], prefix: str, names: tuple[str, str, str], param: str):
    if shape[0] % 3:
        raise GGUFNameError(f"fused qkv {source!r} has {shape[0]} rows, not a multiple of 3")
    n = shape[0] // 3
    return split_rows(source, shape, [(f"{prefix}{t}.{param}", n) for t in names])


def convert_bfl_top_and_double(name, shape, top, double, double_qkv):
    """The part of BFL naming FLUX.1 and FLUX.2 share: top-level tensors, the final modulation
    (halves swapped for diffusers' norm_out) and double blocks (fused qkv split by rows).
    Returns (handled, entries); entries is None for an unknown double-block tensor."""
    if name in top:
        return True, rename(top[name], name, shape)
    if name.startswith("final_layer.adaLN_modulation.1."):
        return True, rename("norm_out.linear." + name.rsplit(".", 1)[1], name, shape, SWAP_HALVES)
    m = re.fullmatch(r"double_blocks\.(\d+)\.(.+)", name)
    if not m:
        return False, None
    prefix, local = f"transformer_blocks.{m[1]}.", m[2]
    if local in double:
        return True, rename(prefix + double[local], name, shape)
    module, _, param = local.rpartition(".")
    if module in double_qkv:
        return True, split_qkv(name, shape, prefix, double_qkv[module], param)
    return True, None


class FluxNameMap(ArchNameMap):
    arch = "flux"
    diffusers_class = "FluxTransformer2DModel"
    aliases = ("flux",)
    diffusers_signature = (
        "single_transformer_blocks.0.proj_mlp.weight",
        "time_text_embed.timestep_embedder.linear_1.weight",
        "transformer_blocks.0.norm1.linear.weight",
    )
    original_signature = ("double_blocks.0.img_mod.lin.weight", "single_blocks.0.linear1.weight")

    def convert_original(self, name, shape, shapes):
        done, entries = convert_bfl_top_and_double(name, shape, _TOP, _DOUBLE, _DOUBLE_QKV)
        if done:
            return entries
        m = re.fullmatch(r"single_blocks\.(\d+)\.(.+)", name)
        if m:
            prefix, local = f"single_transformer_blocks.{m[1]}.", m[2]
            if local in _SINGLE:
                return rename(prefix + _SINGLE[local], name, shape)
            if local in ("linear1.weight", "linear1.bias"):
                weight = shapes.get(f"single_blocks.{m[1]}.linear1.weight")
                if weight is None or len(weight) != 2:
                    raise GGUFNameError(f"{name!r}: needs single_blocks.{m[1]}.linear1.weight (2-D) to size the split")
                hidden = weight[1]
                param = local.rsplit(".", 1)[1]
                parts = [(f"{prefix}attn.to_{x}.{param}", hidden) for x in "qkv"]
                return split_rows(name, shape, parts + [(f"{prefix}proj_mlp.{param}", shape[0] - 3 * hidden)])
        return None
