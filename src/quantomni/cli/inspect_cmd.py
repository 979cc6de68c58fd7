"""quantomni inspect DIR [--quantization fp8] [--json] [--layers]"""

from __future__ import annotations

import json

from quantomni.cli.main import add_quantization_arguments, quantization_config_arg


def add_arguments(p):
    p.add_argument("model", help="diffusers-format model directory")
    add_quantization_arguments(p)
    p.add_argument("--json", action="store_true", help="print JSON (with every layer) instead of text")
    p.add_argument("--summary-only", action="store_true", help="omit the per-layer table")


def run(args) -> int:
    from quantomni.multistage.stages import is_multistage_dir
    from quantomni.pipeline.inspect import inspect_model

    if is_multistage_dir(args.model):
        from quantomni.multistage.inspect import run_inspect

        return run_inspect(args)

    info = inspect_model(
        args.model, args.quantization, quantization_config_arg(args.quantization_config), args.linear_backend,
        args.dtype, args.device, gguf_model=args.gguf_model, force_cutlass_fp8=args.force_cutlass_fp8,
    )
    plans = info.pop("plans")
    info["attention"] = _attention_note(args.attention, info["architecture"])
    if args.json:
        info["plans"] = {name: plan.to_dict(with_layers=True) for name, plan in plans.items()}
        print(json.dumps(info, indent=2))
        return 0
    print(f"model: {info['model']}")
    print(f"pipeline: {info['pipeline']} (architecture adapter: {info['architecture']})")
    print(f"attention: {info['attention']}")
    print("components:")
    for name, entry in info["components"].items():
        q = entry["quantization"]
        qtext = "-" if q is None else (q.get("scheme") or q.get("method") or "none")
        params = f", {entry['parameters']:,} params" if "parameters" in entry else ""
        print(f"  {name:16s} {entry['library']}.{entry['class']}{params}; quantization: {qtext}")
        ck = entry.get("checkpoint")
        if ck is not None and "weight_qtypes" in ck:
            types = ", ".join(f"{q}: {n}" for q, n in ck["weight_qtypes"].items())
            print(f"    GGUF file {ck['path']} ({ck['file_bytes']:,} bytes): architecture {ck['architecture']} "
                  f"({ck['diffusers_class']}), {ck['naming']} naming, {ck['tensors']} tensors; 2-D weights: {types}")
        if "detected" in entry:
            from collections import Counter

            d = entry["detected"]
            producer = d["producer"] or {}
            formats = Counter(d.get("layer_formats", {}).values())
            print(f"  {'':16s} detected pre-quantized checkpoint: {d['method']} quant_algo={d['quant_algo']} "
                  f"producer={producer.get('name', '?')} {producer.get('version', '')} ({d['source']}); "
                  f"layer formats: {dict(formats)}")
    for name, plan in plans.items():
        print()
        print(plan.summary())
        if not args.summary_only:
            print(plan.table())
            formats = info["components"].get(name, {}).get("detected", {}).get("layer_formats")
            if formats:
                print("stored formats: " + ", ".join(f"{layer}={fmt}" for layer, fmt in formats.items()))
    return 0


def _attention_note(mode: str, architecture: str) -> str:
    """What --attention would do at load (inspect loads no weights, so nothing is installed)."""
    if mode == "sdpa":
        return "sdpa (the model's own)"
    from quantomni.models.registry import get_adapter, registered_adapters

    if architecture in registered_adapters() and get_adapter(architecture).attention_dispatch:
        return f"{mode}: INT8 QK^T + FP8 PV on every attention of the denoiser (installed at load)"
    raise ValueError(f"--attention {mode} is not supported for architecture {architecture!r} (supported: flux, wan)")
