"""Tiny random-weight Qwen3-Omni (thinker + talker + code2wav) built with transformers' own classes.

Why: tests, the demo and the CPU benchmarks need a real multi-stage omni directory without any
download. Dimensions keep every thinker text Linear and expert matrix K a multiple of 32 so FP8,
INT8 and NVFP4 (which needs K % 32 == 0) all apply. The tokenizer is a byte-level BPE with no
merges, built in memory, with ChatML specials and a chat template.
"""

from __future__ import annotations

from pathlib import Path

import torch

OMNI_SPECIALS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_start|>", "<|audio_end|>", "<|audio_pad|>",
    "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "<tts_pad>", "<tts_bos>", "<tts_eos>",
)

#: ChatML, as Qwen models use; ``add_generation_prompt`` opens the assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def omni_tokenizer():
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_chars = list(bytes_to_unicode().values())
    tok = Qwen2Tokenizer(vocab={c: i for i, c in enumerate(byte_chars)}, merges=[])
    tok.add_special_tokens({"additional_special_tokens": list(OMNI_SPECIALS)})
    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|endoftext|>"
    tok.chat_template = CHAT_TEMPLATE
    return tok


def qwen3_omni_config(tok, *, hidden: int = 32, layers: int = 2, experts: int = 8, top_k: int = 2,
                      audio_output: bool = True):
    """A Qwen3OmniMoeConfig with tiny stages; token ids point at the tokenizer's specials."""
    from transformers import Qwen3OmniMoeConfig

    ids = {s: tok.convert_tokens_to_ids(s) for s in OMNI_SPECIALS}
    vocab = len(tok)
    rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 1, 1], "interleaved": True,
            "mrope_interleaved": True}
    text = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=64, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=2, head_dim=8, moe_intermediate_size=32,
                num_experts=experts, num_experts_per_tok=top_k, decoder_sparse_step=1, rope_parameters=rope,
                max_position_embeddings=1024, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"])
    audio = dict(num_mel_bins=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32, d_model=16,
                 output_dim=hidden, n_window=4, n_window_infer=8, conv_chunksize=8, downsample_hidden_size=8,
                 max_source_positions=64)
    vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, patch_size=4, spatial_merge_size=2,
                  temporal_patch_size=2, out_hidden_size=hidden, num_position_embeddings=64,
                  deepstack_visual_indexes=[0])
    mm_ids = dict(audio_token_id=ids["<|audio_pad|>"], image_token_id=ids["<|image_pad|>"],
                  video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                  audio_start_token_id=ids["<|audio_start|>"])
    thinker = dict(text_config=text, audio_config=audio, vision_config=vision, **mm_ids)
    # transformers suppresses the talker's last 1024 ids (its specials) while generating: the vocab
    # is codebook (64) + 1024, and the codec control ids sit in that top range.
    talker_text = dict(vocab_size=64 + 1024, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=1, head_dim=8, moe_intermediate_size=16, num_experts=4,
                       num_experts_per_tok=2, shared_expert_intermediate_size=16, rope_parameters=rope)
    predictor = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                     num_key_value_heads=1, head_dim=8, num_code_groups=4)
    # spatial_merge_size is read by the talker but not declared by its config class (transformers 5.24)
    talker = dict(text_config=talker_text, code_predictor_config=predictor, num_code_groups=4,
                  thinker_hidden_size=hidden, accept_hidden_layer=layers - 1, codec_eos_token_id=1082,
                  codec_nothink_id=1083, codec_think_bos_id=1084, codec_think_eos_id=1085, codec_pad_id=1080,
                  codec_bos_id=1081, speaker_id={"ethan": 1086}, spatial_merge_size=2, **mm_ids)
    code2wav = dict(codebook_size=64, hidden_size=16, num_attention_heads=2, num_key_value_heads=2,
                    intermediate_size=32, num_hidden_layers=1, num_quantizers=4, upsample_rates=[2, 2],
                    upsampling_ratios=[2], decoder_dim=16, sliding_window=8, max_position_embeddings=256)
    return Qwen3OmniMoeConfig(
        thinker_config=thinker, talker_config=talker, code2wav_config=code2wav, enable_audio_output=audio_output,
        im_start_token_id=ids["<|im_start|>"], im_end_token_id=ids["<|im_end|>"],
        tts_pad_token_id=ids["<tts_pad>"], tts_bos_token_id=ids["<tts_bos>"], tts_eos_token_id=ids["<tts_eos>"],
        # real Qwen vocabularies have one token per role word; here the role's first byte follows <|im_start|>
        system_token_id=tok.convert_tokens_to_ids("s"), user_token_id=tok.convert_tokens_to_ids("u"),
        assistant_token_id=tok.convert_tokens_to_ids("a"),
    )


class OmniDemoBundle:
    """Model + tokenizer with the ``save_pretrained`` that ``write_demo_model`` expects."""

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer

    def save_pretrained(self, out_dir: str, safe_serialization: bool = True) -> None:
        self.model.save_pretrained(out_dir, safe_serialization=safe_serialization)
        self.tokenizer.save_pretrained(out_dir)


def _spread_weights(model) -> None:
    """Random init gives every expert nearly the same |W|max; scale each expert / layer by its own
    factor so per-expert and per-channel scales differ (and a wrong scale index shows in tests)."""
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 3:  # fused experts [E, N, K]
                p.mul_(torch.empty(p.shape[0], 1, 1).uniform_(0.5, 2.0, generator=g))
            elif p.dim() == 2 and "embed" not in name:
                p.mul_(torch.empty(p.shape[0], 1).uniform_(0.5, 2.0, generator=g))


def build_qwen3_omni(audio_output: bool = True) -> OmniDemoBundle:
    from transformers import Qwen3OmniMoeForConditionalGeneration

    tok = omni_tokenizer()
    model = Qwen3OmniMoeForConditionalGeneration(qwen3_omni_config(tok, audio_output=audio_output))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("mlp.gate.weight"):  # the router starts at zeros: routing would be a tie
                p.normal_(0.0, 0.5)
            elif p.dim() == 3:
                # transformers 5.24 leaves the talker's fused experts uninitialised (torch.empty): garbage
                # or NaN would be saved. Initialise every fused-expert tensor like the thinker's.
                p.normal_(0.0, 0.02)
        bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise RuntimeError(f"tiny Qwen3-Omni has non-finite initial weights in {bad[:5]}")
    _spread_weights(model)
    return OmniDemoBundle(model, tok)


def write_qwen3_omni(out_dir: str | Path, seed: int = 0, audio_output: bool = True) -> Path:
    out = Path(out_dir)
    torch.manual_seed(seed)
    build_qwen3_omni(audio_output).save_pretrained(str(out))
    return out
