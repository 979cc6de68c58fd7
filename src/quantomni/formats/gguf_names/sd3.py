"""SD3 / SD3.5: original MMDiT names (``joint_blocks.N.x_block...``) and diffusers ``SD3Transformer2DModel``.

Fused ``attn.qkv`` (and SD3.5-medium's ``attn2.qkv``) split by rows. The last joint block is
context-pre-only: its context adaLN, like the final layer's, is (shift, scale) in the original and
(scale, shift) in diffusers, hence SWAP_HALVES.
"""

from __future__ import annotations

import re

from .base import SWAP_HALVES, ArchNameMap, rename, with_params
from .flux import split_qkv

_TOP = {
    "pos_embed": "pos_embed.pos_embed",
    **with_params({
        "x_embedder.proj": "pos_embed.proj",
        "t_embedder.mlp.0": "time_text_embed.timestep_embedder.linear_1",
        "t_embedder.mlp.2": "time_text_embed.timestep_embedder.linear_2",
        "y_embedder.mlp.0": "time_text_embed.text_embedder.linear_1",
        "y_embedder.mlp.2": "time_text_embed.text_embedder.linear_2",
        "context_embedder": "context_embedder",
        "final_layer.linear": "proj_out",
    }),
}
_BLOCK = {
    **with_params({
        "x_block.attn.proj": "attn.to_out.0",
        "context_block.attn.proj": "attn.to_add_out",
        "x_block.attn2.proj": "attn2.to_out.0",
        "x_block.adaLN_modulation.1": "norm1.linear",
        "x_block.mlp.fc1": "ff.net.0.proj",
        "x_block.mlp.fc2": "ff.net.2",
        "context_block.mlp.fc1": "ff_context.net.0.proj",
        "context_block.mlp.fc2": "ff_context.net.2",
    }),
    "x_block.attn.ln_q.weight": "attn.norm_q.weight",
    "x_block.attn.ln_k.weight": "attn.norm_k.weight",
    "context_block.attn.ln_q.weight": "attn.norm_added_q.weight",
    "context_block.attn.ln_k.weight": "attn.norm_added_k.weight",
    "x_block.attn2.ln_q.weight": "attn2.norm_q.weight",
    "x_block.attn2.ln_k.weight": "attn2.norm_k.weight",
}
_QKV = {
    "x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v"),
}


class SD3NameMap(ArchNameMap):
    arch = "sd3"
    diffusers_class = "SD3Transformer2DModel"
    aliases = ("sd3", "sd3.5", "mmdit")
    diffusers_signature = ("pos_embed.proj.weight", "transformer_blocks.0.norm1_context.linear.weight")
    original_signature = ("x_embedder.proj.weight", "joint_blocks.0.x_block.attn.qkv.weight")

    def convert_original(self, name, shape, shapes):
        if name in _TOP:
            return rename(_TOP[name], name, shape)
        if name.startswith("final_layer.adaLN_modulation.1."):
            return rename("norm_out.linear." + name.rsplit(".", 1)[1], name, shape, SWAP_HALVES)
        m = re.fullmatch(r"joint_blocks\.(\d+)\.(.+)", name)
        if not m:
            return None
        prefix, local = f"transformer_blocks.{m[1]}.", m[2]
        if local in _BLOCK:
            return rename(prefix + _BLOCK[local], name, shape)
        module, _, param = local.rpartition(".")
        if module in _QKV:
            return split_qkv(name, shape, prefix, _QKV[module], param)
        if module == "context_block.adaLN_modulation.1":
            last = max(int(k.split(".")[1]) for k in shapes if k.startswith("joint_blocks."))
            swap = SWAP_HALVES if int(m[1]) == last else None
            return rename(f"{prefix}norm1_context.linear.{param}", name, shape, swap)
        return None
