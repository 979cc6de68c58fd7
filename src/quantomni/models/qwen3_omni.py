"""Qwen3-Omni (transformers ``Qwen3OmniMoeForConditionalGeneration``): stages and exclusions.

Why a separate description: Qwen3-Omni is not a diffusers pipeline but one transformers model
holding several stages. Only the thinker's language model is meant to be quantized (as in the
reference ModelOpt recipes); its audio and vision encoders, the talker and code2wav stay BF16.
"""

from __future__ import annotations

import dataclasses

from quantomni.models.base import ArchitectureAdapter

#: config.json ``model_type`` values this adapter covers
MODEL_TYPES = ("qwen3_omni_moe",)
MODEL_CLASS = "Qwen3OmniMoeForConditionalGeneration"
#: code2wav's output sample rate (Hz) for Qwen3-Omni
AUDIO_SAMPLE_RATE = 24000

#: The reference recipe's exclusions, as fnmatch globs over full module names (``thinker.…``).
DEFAULT_EXCLUSIONS = ("*audio_tower*", "*visual*", "*talker*", "*code2wav*", "*lm_head*", "*mlp.gate*")
#: Encoders inside the thinker stage: never quantized, whatever the options say.
THINKER_ENCODERS = ("*audio_tower*", "*visual*")


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One stage: ``attr`` is its attribute on the root model; ``parts`` name its sub-modules
    (relative to the stage) for reporting; ``quantizable`` is the sub-module whose layers a
    quantization of this stage may touch (None = the whole stage)."""

    name: str
    attr: str
    parts: tuple[tuple[str, str], ...]
    quantizable: str | None
    description: str


STAGES = (
    StageSpec("thinker", "thinker",
              (("text_model", "model.language_model"), ("audio_tower", "model.audio_tower"),
               ("vision", "model.visual"), ("lm_head", "lm_head")),
              "model.language_model", "multimodal understanding; generates text (MoE language model)"),
    StageSpec("talker", "talker", (("model", "model"), ("code_predictor", "code_predictor")), None,
              "text -> codec tokens for speech"),
    StageSpec("code2wav", "code2wav", (("decoder", ""),), None, "codec tokens -> waveform"),
)

ADAPTER = ArchitectureAdapter(
    name="qwen3-omni",
    transformer_classes=(MODEL_CLASS,),
    pipeline_classes=(),
    # Layers kept in BF16 by default inside a quantized stage (names relative to the stage):
    # the LM head, every router (mlp.gate; the talker's shared_expert_gate) and the encoders.
    sensitive_layers=("*lm_head*", "*mlp.gate", "*mlp.gate.*", "*shared_expert_gate*", "*codec_head*",
                      *THINKER_ENCODERS),
    guidance_param=None,
    negative_prompt="unsupported",
    description="Qwen3-Omni thinker/talker/code2wav (transformers); thinker text model quantizable",
)
