"""Qwen-Image: ``QwenImageTransformer2DModel``.

The original release is already in diffusers naming (and community GGUF files keep it), so only
that naming is supported; common prefixes such as ``model.diffusion_model.`` are stripped.
"""

from .base import ArchNameMap


class QwenImageNameMap(ArchNameMap):
    arch = "qwen_image"
    diffusers_class = "QwenImageTransformer2DModel"
    aliases = ("qwen_image", "qwenimage", "qwen-image", "qwen")
    diffusers_signature = ("txt_norm.weight", "img_in.weight", "transformer_blocks.0.img_mod.1.weight")
