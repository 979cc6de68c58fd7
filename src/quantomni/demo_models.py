"""Built-in tiny random-weight pipelines (no hub access): the embedded default for the demo,
the tests and the CPU benchmarks. Tokenizers are built in memory.

``write_demo_model(dir, arch)`` saves a complete diffusers-format pipeline directory.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

DEMO_ARCHS = ("flux", "qwen-image", "sd3", "qwen3-omni")


def _byte_vocab() -> list[str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return list(bytes_to_unicode().values())


def clip_tokenizer():
    from transformers import CLIPTokenizer

    bu = _byte_vocab()
    vocab: dict[str, int] = {}
    for tok in ["<|startoftext|>", "<|endoftext|>"] + bu + [c + "</w>" for c in bu]:
        vocab.setdefault(tok, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def t5_tokenizer():
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -5.0) for c in string.ascii_letters + string.digits + string.punctuation]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def _clip_text(tok, with_projection: bool, hidden: int = 32, proj: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        projection_dim=proj, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id,
        max_position_embeddings=77,
    )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(cfg)


def _t5(tok, d_model: int = 32):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=len(tok), d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                   relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1))


def _flux_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[32, 32, 64, 64], layers_per_block=1, latent_channels=16, norm_num_groups=32, sample_size=64,
        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611,
    )


def _flow_scheduler(dynamic: bool = True):
    from diffusers import FlowMatchEulerDiscreteScheduler

    if dynamic:
        return FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                               base_image_seq_len=256, max_image_seq_len=4096)
    return FlowMatchEulerDiscreteScheduler(shift=3.0)


def build_flux():
    from diffusers import FluxPipeline, FluxTransformer2DModel

    tok = clip_tokenizer()
    tok2 = t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=32, num_attention_heads=4,
        joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(8, 12, 12),
    )
    return FluxPipeline(scheduler=_flow_scheduler(), vae=_flux_vae(), text_encoder=_clip_text(tok, False), tokenizer=tok,
                        text_encoder_2=_t5(tok2), tokenizer_2=tok2, transformer=transformer)


def build_sd3():
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    tok = clip_tokenizer()
    tok3 = t5_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=32, num_attention_heads=4,
        joint_attention_dim=32, caption_projection_dim=128, pooled_projection_dim=64, out_channels=16, pos_embed_max_size=32,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=_flow_scheduler(dynamic=False), vae=_flux_vae(),
        text_encoder=_clip_text(tok, True), tokenizer=tok, text_encoder_2=_clip_text(tok, True), tokenizer_2=tok,
        text_encoder_3=_t5(tok3), tokenizer_3=tok3,
    )


def build_qwen_image():
    from diffusers import AutoencoderKLQwenImage, QwenImagePipeline, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer

    bu = _byte_vocab()
    tok = Qwen2Tokenizer(vocab={c: i for i, c in enumerate(bu)}, merges=[])
    specials = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "<|endoftext|>"]
    tok.add_special_tokens({"additional_special_tokens": specials})
    ids = {s: tok.convert_tokens_to_ids(s) for s in specials}
    vocab = len(tok)
    text_cfg = {
        "hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 2, "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
        "rope_theta": 1e6, "vocab_size": vocab, "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
    }
    cfg = Qwen2_5_VLConfig(
        text_config=text_cfg, vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2,
                                             "out_hidden_size": 16},
        hidden_size=16, vocab_size=vocab, vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
    )
    text_encoder = Qwen2_5_VLForConditionalGeneration(cfg)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=64, out_channels=16, num_layers=2, attention_head_dim=32, num_attention_heads=4,
        joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 12, 12),
    )
    vae = AutoencoderKLQwenImage(base_dim=16, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                                 temperal_downsample=[False, True, True], latents_mean=[0.0] * 16, latents_std=[1.0] * 16)
    return QwenImagePipeline(transformer=transformer, scheduler=_flow_scheduler(), vae=vae, text_encoder=text_encoder,
                             tokenizer=tok)


def build_qwen3_omni():
    from quantomni.demo_omni_models import build_qwen3_omni as build

    return build()


_BUILDERS = {"flux": build_flux, "sd3": build_sd3, "qwen-image": build_qwen_image, "qwen3-omni": build_qwen3_omni}


def write_demo_model(out_dir: str | Path, arch: str = "flux", seed: int = 0) -> Path:
    """Build a tiny random-weight pipeline of ``arch`` and save it (safetensors) to ``out_dir``."""
    if arch not in _BUILDERS:
        raise ValueError(f"arch: unknown demo architecture {arch!r}; choose from {list(DEMO_ARCHS)}")
    out = Path(out_dir)
    torch.manual_seed(seed)
    pipe = _BUILDERS[arch]()
    pipe.save_pretrained(str(out), safe_serialization=True)
    return out
