"""FLUX.2: original BFL names and diffusers ``Flux2Transformer2DModel`` names.

Unlike FLUX.1, diffusers keeps the single-block fused projection (``attn.to_qkv_mlp_proj``), so only
the double blocks' qkv are split by rows; the final adaLN still needs SWAP_HALVES.
"""

from __future__ import annotations

import re

from .base import ArchNameMap, rename, with_params
from .flux import convert_bfl_top_and_double

_PARAMS = ("weight", "bias")  # FLUX.2 layers have no biases, but accept them if present
_TOP = with_params({
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_guidance_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_guidance_embed.timestep_embedder.linear_2",
    "guidance_in.in_layer": "time_guidance_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_guidance_embed.guidance_embedder.linear_2",
    "double_stream_modulation_img.lin": "double_stream_modulation_img.linear",
    "double_stream_modulation_txt.lin": "double_stream_modulation_txt.linear",
    "single_stream_modulation.lin": "single_stream_modulation.linear",
    "final_layer.linear": "proj_out",
}, _PARAMS)
_DOUBLE = {
    **with_params({
        "img_attn.proj": "attn.to_out.0",
        "txt_attn.proj": "attn.to_add_out",
        "img_mlp.0": "ff.linear_in",
        "img_mlp.2": "ff.linear_out",
        "txt_mlp.0": "ff_context.linear_in",
        "txt_mlp.2": "ff_context.linear_out",
    }, _PARAMS),
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
    **with_params({"linear1": "attn.to_qkv_mlp_proj", "linear2": "attn.to_out"}, _PARAMS),
    "norm.query_norm.scale": "attn.norm_q.weight",
    "norm.key_norm.scale": "attn.norm_k.weight",
}


class Flux2NameMap(ArchNameMap):
    arch = "flux2"
    diffusers_class = "Flux2Transformer2DModel"
    aliases = ("flux2", "flux.2", "flux")  # some converters label FLUX.2 files "flux"; the names decide
    diffusers_signature = ("double_stream_modulation_img.linear.weight", "single_transformer_blocks.0.attn.to_qkv_mlp_proj.weight")
    original_signature = ("double_stream_modulation_img.lin.weight", "single_blocks.0.linear1.weight")

    def convert_original(self, name, shape, shapes):
        done, entries = convert_bfl_top_and_double(name, shape, _TOP, _DOUBLE, _DOUBLE_QKV)
        if done:
            return entries
        m = re.fullmatch(r"single_blocks\.(\d+)\.(.+)", name)
        if m and m[2] in _SINGLE:
            return rename(f"single_transformer_blocks.{m[1]}.{_SINGLE[m[2]]}", name, shape)
        return None
