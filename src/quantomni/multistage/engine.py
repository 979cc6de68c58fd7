"""``OmniMultiStage``: a transformers multi-stage omni model (Qwen3-Omni) with per-stage quantization.

``Omni(model=DIR)`` returns one of these when DIR is a Qwen3-Omni directory (see
``pipeline.omni.Omni.__new__``). Only the stages named in the quantization spec are touched;
inside the thinker only the language model is (its audio/vision encoders never are); the MoE
router stays BF16 and the fused experts become ``QuantMoEExperts``.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantomni.config.base import QuantMethodConfig
from quantomni.errors import QuantizationError
from quantomni.layers.linear import QuantLinear
from quantomni.layers.moe import QuantMoEExperts
from quantomni.models.qwen3_omni import ADAPTER, AUDIO_SAMPLE_RATE, STAGES, THINKER_ENCODERS
from quantomni.multistage.moe_quant import (EXPERT_CHOICES, EXPERT_FORMAT_BY_METHOD, fused_experts,  # noqa: F401
                                            is_fused_experts, quantize_moe_component)
from quantomni.multistage.stages import (present_stages, read_root_config, resolve_stage_quantization,
                                         thinker_prequantized_config)
from quantomni.multistage.textgen import SamplingParams, TextGenerator, TextResult
from quantomni.pipeline.backends import BackendRequest
from quantomni.pipeline.loader import module_bytes
from quantomni.pipeline.plan import ComponentPlan
from quantomni.pipeline.runtime import resolve_device, resolve_dtype

logger = logging.getLogger("quantomni")


class OmniMultiStage:
    """A loaded Qwen3-Omni-style model.

    quantization / quantization_config: per-stage spec ({"thinker": "fp8", "talker": None}); a bare
        method means the thinker. A pre-quantized (ModelOpt) thinker is detected from the checkpoint.
    experts_format: how MoE experts of a quantized stage are stored: "auto" (same as the method:
        fp8 / int8), "fp8", "int8", "nvfp4" (W4A16, e.g. with fp8 dense layers: mixed precision) or
        "none" (experts stay in the model dtype).
    moe_backend: "auto" | "torch" (reference loop) | "grouped" (one batched matmul per projection).
    """

    #: the images server answers 400 on /v1/images/generations for text engines
    produces_images = False

    def __init__(self, model, quantization=None, quantization_config=None, linear_backend="auto",
                 dtype="bfloat16", device=None, progress: bool = True, model_id: str | None = None,
                 gguf_model=None, moe_backend: str = "auto", experts_format: str = "auto", attention: str = "sdpa"):
        from quantomni.kernels.moe_torch import MOE_BACKENDS
        from quantomni.pipeline.omni import merge_quantization_args

        t0 = time.perf_counter()
        if gguf_model is not None:
            raise ValueError("gguf_model: GGUF files are for diffusion denoisers; this is a multi-stage omni model")
        if attention != "sdpa":
            raise ValueError(f"attention={attention!r} applies to diffusion denoisers (FLUX, Wan); this is a "
                             "multi-stage omni model")
        if moe_backend not in MOE_BACKENDS:
            raise ValueError(f"moe_backend: unknown backend {moe_backend!r}; choose from {list(MOE_BACKENDS)}")
        if experts_format not in EXPERT_CHOICES:
            raise ValueError(f"experts_format: got {experts_format!r}; allowed: {list(EXPERT_CHOICES)}")
        self.model_dir = Path(model)
        self.model_id = model_id or self.model_dir.name
        self.dtype = resolve_dtype(dtype)
        self.device = resolve_device(device)
        self.backends = BackendRequest.parse(linear_backend)
        self.moe_backend = moe_backend
        self.experts_format = experts_format
        self.progress = progress
        self._lock = threading.Lock()
        root_cfg = read_root_config(self.model_dir)
        if root_cfg is None:
            raise ValueError(f"{self.model_dir}: not a transformers model directory (config.json missing)")
        self.stages = present_stages(root_cfg)
        self.quant_config = merge_quantization_args(quantization, quantization_config)
        self.stage_configs = resolve_stage_quantization(self.quant_config, self.stages)
        self.prequantized = thinker_prequantized_config(self.model_dir, root_cfg)
        if self.prequantized is not None and self.stage_configs.get("thinker") is not None:
            raise ValueError(
                f"{self.model_dir}: the thinker is pre-quantized ({self.prequantized[0].quant_algo}, "
                f"{self.prequantized[1]}); do not also pass a quantization for it"
            )
        self.plans: dict[str, ComponentPlan] = {}
        self.model, self.tokenizer = self._load()
        # BF16 checkpoints load on the host; each quantized layer is quantized on the device as it
        # is replaced, then the rest moves: the device never holds the whole BF16 model.
        for stage, cfg in self.stage_configs.items():
            if cfg is not None:
                self.plans[stage] = self._quantize_stage(stage, cfg)
        self.model.to(self.device).eval().requires_grad_(False)
        layouts: dict[str, int] = {}
        for mod in self.model.modules():
            if isinstance(mod, QuantMoEExperts):  # idempotent: experts quantized here were prepared already
                why = mod.prepare(self.device)
                layouts[why] = layouts.get(why, 0) + 1
        for why, n in layouts.items():
            logger.info("MoE experts (%d modules): %s", n, why)
        self.verify_stage_scopes()
        thinker = self.model.thinker
        eos = _eos_ids(thinker.config.text_config, self.tokenizer)
        self.text = TextGenerator(thinker.model.language_model, thinker.lm_head, self.tokenizer, eos, self.device)
        self.load_time_s = time.perf_counter() - t0
        for plan in self.plans.values():
            logger.info("quantization: %s", plan.summary())

    # ------------------------------------------------------------------ loading
    def _load(self):
        from transformers import AutoTokenizer, Qwen3OmniMoeForConditionalGeneration

        if self.prequantized is not None:
            from quantomni.multistage.modelopt_thinker import load_prequantized

            model, plan = load_prequantized(self.model_dir, self.prequantized[0], self.dtype, self.device,
                                            self.moe_backend, self.backends)
            self.plans["thinker"] = plan
        else:
            import transformers.utils.logging as tlog

            tlog.disable_progress_bar()
            try:
                model = Qwen3OmniMoeForConditionalGeneration.from_pretrained(
                    str(self.model_dir), dtype=self.dtype, local_files_only=True)
            finally:
                tlog.enable_progress_bar()
        model.eval().requires_grad_(False)
        if not hasattr(model.thinker.model, "language_model"):
            import transformers

            # Stage scoping, exclusions and ModelOpt names follow the layout with
            # thinker.model.language_model (transformers >= 5.24); older releases nest it differently.
            raise RuntimeError(
                f"Qwen3-Omni support needs transformers >= 5.24 (found {transformers.__version__}, whose thinker has "
                f"no model.language_model); upgrade with: pip install 'transformers>=5.24'"
            )
        tok = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
        if not getattr(tok, "chat_template", None):
            tok.chat_template = _processor_chat_template(self.model_dir)
        return model, tok

    def _quantize_stage(self, stage: str, cfg: QuantMethodConfig) -> ComponentPlan:
        spec = next(s for s in STAGES if s.name == stage)
        return quantize_moe_component(getattr(self.model, spec.attr), stage, cfg, ADAPTER, self.device, self.dtype,
                                      self.backends, self.experts_format, self.moe_backend, protected=THINKER_ENCODERS)

    # ------------------------------------------------------------------ checks and info
    def verify_stage_scopes(self) -> None:
        """Raise if any quantized module sits in a stage (or thinker encoder) that was not asked for."""
        for spec in STAGES:
            stage_mod = getattr(self.model, spec.attr, None)
            if stage_mod is None:
                continue
            asked = self.stage_configs.get(spec.name) is not None or (spec.name == "thinker" and self.prequantized)
            for name, mod in stage_mod.named_modules():
                if not isinstance(mod, (QuantLinear, QuantMoEExperts)) and not _is_quantized_module(mod):
                    continue
                full = f"{spec.attr}.{name}"
                if not asked or any(fnmatch.fnmatchcase(full, p) for p in THINKER_ENCODERS):
                    raise QuantizationError(f"{full}: quantized, but stage {spec.name!r} was not asked to be quantized")

    def stage_report(self) -> dict[str, Any]:
        out = {}
        for spec in STAGES:
            stage_mod = getattr(self.model, spec.attr, None)
            if stage_mod is None:
                continue
            parts = {}
            for part, path in spec.parts:
                sub = stage_mod.get_submodule(path) if path else stage_mod
                parts[part] = {"class": type(sub).__name__, "weight_bytes": module_bytes(sub),
                               "dtypes": dict(_dtype_counts(sub)), "quantized_modules": _count_quantized(sub)}
            plan = self.plans.get(spec.name)
            out[spec.name] = {
                "class": type(stage_mod).__name__,
                "description": spec.description,
                "method": plan.method if plan else None,
                "scheme": plan.scheme if plan else None,
                "quantized_layers": plan.quantized_count if plan else 0,
                "kernels": dict(plan.backends()) if plan else {},
                "weight_bytes": module_bytes(stage_mod),
                "parts": parts,
            }
        return out

    def describe(self) -> dict[str, Any]:
        pre = None
        if self.prequantized is not None:
            pre = {**self.prequantized[0].to_dict(), "stage": "thinker", "source": self.prequantized[1]}
        return {
            "model": self.model_id,
            "path": str(self.model_dir),
            "pipeline": type(self.model).__name__,
            "architecture": ADAPTER.name,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "load_time_s": round(self.load_time_s, 4),
            "quantization": self.quant_config.to_dict(),
            "prequantized": pre,
            "moe_backend": self.moe_backend,
            "capabilities": ["chat"] + (["audio"] if getattr(self.model, "talker", None) is not None else []),
            "components": self.stage_report(),
        }

    def component_plan(self, component: str) -> ComponentPlan | None:
        return self.plans.get(component)

    @property
    def denoiser(self):
        return None

    # ------------------------------------------------------------------ text
    def encode_messages(self, messages) -> list[int]:
        """OpenAI-style messages [{"role", "content"}] -> prompt token ids (chat template if any)."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        if not isinstance(messages, list) or not messages:
            raise ValueError("messages: expected a non-empty list of {role, content} objects")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
                raise ValueError(f"messages[{i}]: expected {{role: system|user|assistant, content: str}}, got {m!r}")
            if not isinstance(m.get("content"), str):
                raise ValueError(f"messages[{i}].content: only text content is supported, got {type(m.get('content')).__name__}")
        if getattr(self.tokenizer, "chat_template", None):
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            return list(ids)
        return self.encode_text("\n".join(m["content"] for m in messages))

    def encode_text(self, prompt: str) -> list[int]:
        if not isinstance(prompt, str) or not prompt:
            raise ValueError("prompt: expected a non-empty string")
        return list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def chat(self, messages, params: SamplingParams | None = None, raw_prompt: bool = False, **kwargs) -> TextResult:
        """Generate the assistant reply. ``kwargs`` build SamplingParams when ``params`` is None."""
        result = None
        for _, final in self.chat_stream(messages, params, raw_prompt, **kwargs):
            result = final or result
        return result

    def chat_stream(self, messages, params: SamplingParams | None = None, raw_prompt: bool = False, **kwargs):
        """Yield (text delta, None) ... then ("", TextResult). Holds the engine lock while running."""
        params = params or SamplingParams(**kwargs)
        ids = self.encode_text(messages) if raw_prompt else self.encode_messages(messages)
        with self._lock:
            yield from self.text.stream(ids, params)

    def chat_batch(self, conversations: list, params: SamplingParams | list[SamplingParams] | None = None,
                   **kwargs) -> list[TextResult]:
        """Generate replies for several conversations in one batch (one KV cache, left padding).
        ``params``: one SamplingParams for all, one per conversation, or None (built from kwargs)."""
        from quantomni.multistage.batchgen import generate_batch

        if not isinstance(conversations, list) or not conversations:
            raise ValueError("conversations: expected a non-empty list of message lists")
        if params is None:
            params = SamplingParams(**kwargs)
        plist = list(params) if isinstance(params, (list, tuple)) else [params] * len(conversations)
        prompts = [self.encode_messages(c) for c in conversations]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.text.eos_ids)
        with self._lock:
            return generate_batch(self.text, prompts, plist, pad)

    def speak(self, messages, max_tokens: int = 32, talker_max_tokens: int = 64, speaker: str | None = None,
              seed: int | None = None) -> dict[str, Any]:
        """Text + speech through thinker -> talker -> code2wav with transformers' own ``generate``
        (greedy thinker, sampled talker). Returns {"text", "token_ids", "waveform" float32 [S]}.
        ``seed`` seeds torch's global RNG (the talker samples through it) while the lock is held."""
        if getattr(self.model, "talker", None) is None:
            raise ValueError(f"{self.model_id}: this checkpoint has no talker/code2wav (enable_audio_output is false)")
        SamplingParams(max_tokens=max_tokens)  # validates max_tokens
        SamplingParams(max_tokens=talker_max_tokens)
        speakers = dict(self.model.config.talker_config.speaker_id or {})
        speaker = (speaker or next(iter(speakers), "")).lower()
        if speaker not in speakers:
            raise ValueError(f"speaker: {speaker!r} is not one of this model's speakers {sorted(speakers)}")
        ids = self.encode_messages(messages)
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        with self._lock, torch.inference_mode():
            if seed is not None:
                torch.manual_seed(seed)
            sequences, wav = self.model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), return_audio=True, speaker=speaker,
                thinker_max_new_tokens=max_tokens, talker_max_new_tokens=talker_max_tokens, thinker_do_sample=False,
                thinker_eos_token_id=sorted(self.text.eos_ids))
        new = [int(t) for t in sequences[0, len(ids):] if int(t) not in self.text.eos_ids]
        return {"text": self.tokenizer.decode(new, skip_special_tokens=True), "token_ids": new,
                "waveform": wav.reshape(-1).float().cpu(), "sample_rate": AUDIO_SAMPLE_RATE,
                "prompt_tokens": len(ids)}

    def thinker_logits(self, prompt: str) -> torch.Tensor:
        """Logits of the thinker over a plain-text prompt: float [T, V] (for accuracy checks)."""
        ids = torch.tensor([self.encode_text(prompt)], dtype=torch.long)
        with self._lock:
            return self.text.logits(ids)[0]

    def generate(self, *args, **kwargs):
        raise ValueError(f"{self.model_id} is a multi-stage omni model that produces text; use chat() "
                         f"(POST /v1/chat/completions), not image generation")

    def close(self) -> None:
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _processor_chat_template(model_dir: Path) -> str | None:
    """Qwen3-Omni repos ship the chat template with the processor (``chat_template.json``), which
    the tokenizer alone does not read; None when there is none (prompts are then plain text)."""
    import json

    path = Path(model_dir) / "chat_template.json"
    if not path.is_file():
        return None
    try:
        template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise ValueError(f"{path}: expected JSON with a 'chat_template' string ({exc})") from exc
    if template is not None and not isinstance(template, str):
        raise ValueError(f"{path}: 'chat_template' must be a string, got {type(template).__name__}")
    return template


def _is_quantized_module(mod: nn.Module) -> bool:
    return bool(getattr(mod, "is_quantized_module", False))


def _dtype_counts(module: nn.Module) -> Counter:
    c: Counter = Counter()
    for t in list(module.parameters()) + list(module.buffers()):
        if t is not None:
            c[str(t.dtype).replace("torch.", "")] += t.numel()
    return c


def _count_quantized(module: nn.Module) -> int:
    return sum(isinstance(m, (QuantLinear, QuantMoEExperts)) or _is_quantized_module(m) for m in module.modules())


def _eos_ids(text_config, tokenizer) -> list[int]:
    eos = getattr(text_config, "eos_token_id", None)
    ids = list(eos) if isinstance(eos, (list, tuple)) else [eos]
    ids.append(tokenizer.eos_token_id)
    for tok in ("<|im_end|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            ids.append(tid)
    return [i for i in ids if i is not None]


def sampling_params(**kwargs) -> SamplingParams:
    return SamplingParams(**{k: v for k, v in kwargs.items() if v is not None})


__all__ = ["OmniMultiStage", "SamplingParams", "TextResult", "sampling_params"]
