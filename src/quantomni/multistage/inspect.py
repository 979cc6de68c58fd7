"""``quantomni inspect DIR`` for multi-stage omni models: stages, their parts and the plan.

The model is built on the meta device (no weights read), so this is instant for any size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from quantomni.models.qwen3_omni import ADAPTER, STAGES
from quantomni.multistage.stages import (present_stages, read_root_config, resolve_stage_quantization,
                                         thinker_prequantized_config)


def inspect_multistage(model, quantization=None, quantization_config=None, linear_backend="auto",
                       dtype="bfloat16", device=None, experts_format: str = "auto") -> dict[str, Any]:
    from accelerate import init_empty_weights
    from transformers import AutoConfig, Qwen3OmniMoeForConditionalGeneration

    from quantomni.multistage.moe_quant import EXPERT_FORMAT_BY_METHOD, fused_experts
    from quantomni.pipeline.backends import BackendRequest
    from quantomni.pipeline.omni import merge_quantization_args
    from quantomni.pipeline.planner import plan_component
    from quantomni.pipeline.runtime import resolve_device, resolve_dtype

    root = Path(model)
    root_cfg = read_root_config(root)
    stages = present_stages(root_cfg)
    qcfg = merge_quantization_args(quantization, quantization_config)
    per_stage = resolve_stage_quantization(qcfg, stages)
    pre = thinker_prequantized_config(root, root_cfg)
    if pre is not None and per_stage.get("thinker") is not None:
        raise ValueError(f"{root}: the thinker is pre-quantized ({pre[1]}); do not also pass a quantization for it")
    config = AutoConfig.from_pretrained(str(root), local_files_only=True)
    with init_empty_weights():
        meta = Qwen3OmniMoeForConditionalGeneration(config)
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    backends = BackendRequest.parse(linear_backend)
    out_stages: dict[str, Any] = {}
    plans = {}
    for spec in STAGES:
        mod = getattr(meta, spec.attr, None)
        if mod is None:
            continue
        parts = {}
        for part, path in spec.parts:
            sub = mod.get_submodule(path) if path else mod
            parts[part] = {"class": type(sub).__name__, "parameters": sum(p.numel() for p in sub.parameters())}
        entry: dict[str, Any] = {"class": type(mod).__name__, "description": spec.description, "parts": parts,
                                 "parameters": sum(p.numel() for p in mod.parameters()), "quantization": None}
        cfg = per_stage.get(spec.name)
        if cfg is not None:
            plan = plan_component(mod, spec.name, cfg, ADAPTER, dev, dt, backends)
            plans[spec.name] = plan
            fmt = experts_format if experts_format != "auto" else EXPERT_FORMAT_BY_METHOD.get(cfg.method, "?")
            entry["quantization"] = plan.to_dict(with_layers=False)
            entry["quantization"]["experts"] = {n: f"{fmt} x{e.gate_up_proj.shape[0]}" for n, e in fused_experts(mod)}
        elif spec.name == "thinker" and pre is not None:
            mo, where = pre
            entry["quantization"] = {**mo.to_dict(), "prequantized": "modelopt", "source": where}
        out_stages[spec.name] = entry
    return {"model": str(root), "pipeline": type(meta).__name__, "architecture": ADAPTER.name,
            "stages": stages, "requested_quantization": qcfg.to_dict(), "components": out_stages, "plans": plans}


def run_inspect(args) -> int:
    from quantomni.cli.main import quantization_config_arg

    info = inspect_multistage(args.model, args.quantization, quantization_config_arg(args.quantization_config),
                              args.linear_backend, args.dtype, args.device)
    plans = info.pop("plans")
    if args.json:
        info["plans"] = {n: p.to_dict(with_layers=True) for n, p in plans.items()}
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(f"model: {info['model']}")
    print(f"pipeline: {info['pipeline']} (architecture adapter: {info['architecture']}; multi-stage)")
    print("stages:")
    for name, e in info["components"].items():
        q = e["quantization"]
        if q is None:
            qtext = "none (stays in model dtype)"
        elif "prequantized" in q:
            qtext = f"pre-quantized ModelOpt {q['quant_algo']} ({q['source']})"
        else:
            qtext = f"{q['scheme']} ({q['quantized_layers']}/{q['linear_layers']} linear layers; experts: {q['experts'] or '-'})"
        print(f"  {name:9s} {e['class']}, {e['parameters']:,} params; quantization: {qtext}")
        for part, p in e["parts"].items():
            print(f"      {part:12s} {p['class']}, {p['parameters']:,} params")
    for plan in plans.values():
        print()
        print(plan.summary())
        if not args.summary_only:
            print(plan.table())
    return 0
