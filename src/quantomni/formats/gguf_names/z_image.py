"""Z-Image: original names and diffusers ``ZImageTransformer2DModel``.

The original fuses ``attention.qkv`` (split by rows), names the output ``attention.out`` and the
q/k norms ``q_norm``/``k_norm``, and has ``x_embedder``/``final_layer`` that diffusers keys by patch
size (``all_x_embedder.2-1``: patch 2, frame patch 1, the released model's). Its unused
``norm_final.weight`` is ignored.
"""

from __future__ import annotations

import re

from .base import ArchNameMap, rename
from .flux import split_qkv

_PATCH_KEY = "2-1"
_LOCAL = {
    "attention.out.weight": "attention.to_out.0.weight",
    "attention.out.bias": "attention.to_out.0.bias",
    "attention.q_norm.weight": "attention.norm_q.weight",
    "attention.k_norm.weight": "attention.norm_k.weight",
}


class ZImageNameMap(ArchNameMap):
    arch = "z_image"
    diffusers_class = "ZImageTransformer2DModel"
    aliases = ("z_image", "zimage", "z-image")
    diffusers_signature = ("layers.0.attention.to_q.weight", "cap_embedder.1.weight")
    original_signature = ("layers.0.attention.qkv.weight", "cap_embedder.1.weight")
    ignored_original = (r"norm_final\.weight",)

    def convert_original(self, name, shape, shapes):
        for old in ("x_embedder.", "final_layer."):
            if name.startswith(old):
                return rename(f"all_{old[:-1]}.{_PATCH_KEY}.{name[len(old):]}", name, shape)
        m = re.fullmatch(r"(layers|noise_refiner|context_refiner)\.(\d+)\.(.+)", name)
        if not m:
            return None
        prefix, local = f"{m[1]}.{m[2]}.", m[3]
        if local in _LOCAL:
            return rename(prefix + _LOCAL[local], name, shape)
        if local == "attention.qkv.weight":
            return split_qkv(name, shape, prefix, ("attention.to_q", "attention.to_k", "attention.to_v"), "weight")
        return None
