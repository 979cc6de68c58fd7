"""Wan 2.x: original names (``blocks.N.self_attn.q``) and diffusers ``WanTransformer3DModel``.

A one-to-one rename (no splits). The original's ``norm3`` (the affine cross-attention norm) is
diffusers' ``norm2`` and vice versa; modulation tensors become ``scale_shift_table``. The 5-D
patch-embedding conv exceeds GGUF's 4 dims: converters store it reshaped and record the true shape
(``comfy.gguf.orig_shape.<name>``), which ``source_shapes`` in gguf_tensors applies.
"""

from __future__ import annotations

import re

from .base import ArchNameMap, rename, with_params

_TOP = {
    "head.modulation": "scale_shift_table",
    **with_params({
        "patch_embedding": "patch_embedding",
        "text_embedding.0": "condition_embedder.text_embedder.linear_1",
        "text_embedding.2": "condition_embedder.text_embedder.linear_2",
        "time_embedding.0": "condition_embedder.time_embedder.linear_1",
        "time_embedding.2": "condition_embedder.time_embedder.linear_2",
        "time_projection.1": "condition_embedder.time_proj",
        "head.head": "proj_out",
        "img_emb.proj.0": "condition_embedder.image_embedder.norm1",
        "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
        "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
        "img_emb.proj.4": "condition_embedder.image_embedder.norm2",
    }),
}
_ATTN = {"q": "to_q", "k": "to_k", "v": "to_v", "o": "to_out.0", "k_img": "add_k_proj", "v_img": "add_v_proj"}
_NORMS = {"norm_q": "norm_q", "norm_k": "norm_k", "norm_k_img": "norm_added_k"}
_BLOCK = {
    "modulation": "scale_shift_table",
    **with_params({"norm3": "norm2", "norm2": "norm3", "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2"}),
    **with_params({f"{a}.{k}": f"{b}.{v}" for a, b in (("self_attn", "attn1"), ("cross_attn", "attn2"))
                   for k, v in {**_ATTN, **_NORMS}.items()}),
}


class WanNameMap(ArchNameMap):
    arch = "wan"
    diffusers_class = "WanTransformer3DModel"
    aliases = ("wan", "wan2", "wan2.1", "wan2.2")
    diffusers_signature = ("blocks.0.attn1.to_q.weight", "condition_embedder.time_proj.weight")
    original_signature = ("blocks.0.self_attn.q.weight", "head.head.weight")

    def convert_original(self, name, shape, shapes):
        if name in _TOP:
            return rename(_TOP[name], name, shape)
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
        if m and m[2] in _BLOCK:
            return rename(f"blocks.{m[1]}.{_BLOCK[m[2]]}", name, shape)
        return None
