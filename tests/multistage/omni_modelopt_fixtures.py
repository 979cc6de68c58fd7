"""Real NVIDIA ModelOpt exports of the tiny Qwen3-Omni, thinker language model quantized, on CPU.

``make_omni_modelopt_export(kind, out_dir, placement)`` runs ``mtq.quantize`` with the reference
recipe's exclusions (*audio_tower*, *visual*, *talker*, *code2wav*, *lm_head*, *mlp.gate*) and
``export_hf_checkpoint`` on the whole model, then copies the tokenizer. kinds:
  nvfp4  — NVFP4_DEFAULT_CFG (W4A4): dense and experts NVFP4;
  fp8    — FP8_DEFAULT_CFG;
  mixed  — dense FP8, experts NVFP4 (quant_algo MIXED_PRECISION with quantized_layers).
placement: "export" keeps what ModelOpt writes (root ``quantization_config`` + ``hf_quant_config.json``);
"text_config" moves the config to ``thinker_config.text_config.quantization_config`` (as published
Qwen3-Omni ModelOpt checkpoints carry it) and drops the sidecar.
``<out_dir>_reference_io.safetensors`` (beside the directory): ``input_ids``, ``logits_bf16`` (before quantization) and
``logits_fake_quant`` (ModelOpt's own fake-quantized thinker), float32; ``fq_q_proj``,
``fq_gate_up_3``, ``fq_down_5``: ModelOpt's fake-quantized weights of layer 0's q_proj and
experts 3 (gate_up) / 5 (down), float32.
The root model has no ``forward``; the export's dummy forward is given one that runs the thinker.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "formats"))
from modelopt_fixtures import _import_modelopt, _install_cpu_nvfp4_op  # noqa: E402

EXCLUDE = ("*audio_tower*", "*visual*", "*talker*", "*code2wav*", "*lm_head*", "*mlp.gate.*")
CALIBRATION = ("hello world, this is a calibration prompt", "the quick brown fox jumps", "numbers 1 2 3 4 5 6")
PROMPT = "A tiny omni model answers: the sky is blue because of Rayleigh scattering."


def _cfg(mtq, kind):
    if kind == "nvfp4":
        cfg = copy.deepcopy(mtq.NVFP4_DEFAULT_CFG)
    elif kind == "fp8":
        cfg = copy.deepcopy(mtq.FP8_DEFAULT_CFG)
    elif kind == "mixed":
        cfg = copy.deepcopy(mtq.FP8_DEFAULT_CFG)
        nv = copy.deepcopy(mtq.NVFP4_DEFAULT_CFG["quant_cfg"][1]["cfg"])
        for q in ("weight_quantizer", "input_quantizer"):
            cfg["quant_cfg"].append({"quantizer_name": f"*mlp.experts*{q}*", "cfg": copy.deepcopy(nv)})
    else:
        raise ValueError(f"kind {kind!r}: allowed nvfp4, fp8, mixed")
    for pat in EXCLUDE:
        cfg["quant_cfg"].append({"quantizer_name": pat, "enable": False})
    return cfg


@torch.no_grad()
def thinker_logits(model, ids):
    th = model.thinker
    return th.lm_head(th.model.language_model(input_ids=ids).last_hidden_state)[0].float()


def make_omni_modelopt_export(kind: str, out_dir, placement: str = "export") -> Path:
    from quantomni.demo_omni_models import build_qwen3_omni

    mtq, export_hf_checkpoint = _import_modelopt()
    _install_cpu_nvfp4_op()
    out = Path(out_dir)
    torch.manual_seed(0)
    bundle = build_qwen3_omni()
    model, tok = bundle.model.to(torch.bfloat16).eval(), bundle.tokenizer
    model.config.architectures = ["Qwen3OmniMoeForConditionalGeneration"]
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    ref = thinker_logits(model, ids)

    def calibrate(m):
        for p in CALIBRATION:
            m.thinker.model.language_model(input_ids=tok(p, return_tensors="pt")["input_ids"])

    mtq.quantize(model, _cfg(mtq, kind), calibrate)
    model.forward = lambda input_ids=None, **kw: model.thinker(input_ids=input_ids)
    # The export unifies the scales of layers that share an input (q/k/v, gate/up) before writing;
    # doing the same first makes the fake-quant references correspond to the exported tensors.
    from modelopt.torch.export.unified_export_hf import requantize_resmooth_fused_llm_layers

    requantize_resmooth_fused_llm_layers(model)
    fake = thinker_logits(model, ids)
    with torch.no_grad():  # ModelOpt's own fake-quantized weights of a dense layer and two experts
        layer0 = model.thinker.model.language_model.layers[0]
        ex = layer0.mlp.experts
        fq = {"fq_q_proj": layer0.self_attn.q_proj.weight_quantizer(layer0.self_attn.q_proj.weight),
              "fq_gate_up_3": ex.gate_up_proj_weight_quantizers[3](ex.gate_up_proj[3]),
              "fq_down_5": ex.down_proj_weight_quantizers[5](ex.down_proj[5])}
    export_hf_checkpoint(model, export_dir=str(out))
    tok.save_pretrained(str(out))
    if placement == "text_config":
        cfg_path = out / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["thinker_config"]["text_config"]["quantization_config"] = cfg.pop("quantization_config")
        cfg_path.write_text(json.dumps(cfg, indent=2))
        (out / "hf_quant_config.json").unlink()
    elif placement != "export":
        raise ValueError(f"placement {placement!r}: allowed export, text_config")
    fq = {k: v.float().contiguous() for k, v in fq.items()}
    save_file({"input_ids": ids, "logits_bf16": ref.contiguous(), "logits_fake_quant": fake.contiguous(), **fq},
              str(reference_path(out)))
    return out


def reference_path(model_dir) -> Path:
    """Where the reference logits of an export live (beside, not inside, the model directory)."""
    model_dir = Path(model_dir)
    return model_dir.with_name(model_dir.name + "_reference_io.safetensors")
