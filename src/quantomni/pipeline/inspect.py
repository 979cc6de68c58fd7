"""Describe a model directory and the quantization plan it would get, without loading weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quantomni.config.base import DENOISER_COMPONENTS
from quantomni.models.base import GENERIC
from quantomni.models.registry import adapter_for_class
from quantomni.pipeline.backends import BackendRequest
from quantomni.pipeline.loader import build_empty_model
from quantomni.pipeline.model_index import read_model_index
from quantomni.pipeline.omni import resolve_quant_config
from quantomni.pipeline.planner import plan_component
from quantomni.pipeline.runtime import resolve_device, resolve_dtype


def inspect_model(model, quantization=None, quantization_config=None, linear_backend="auto", dtype="bfloat16",
                  device=None, gguf_model=None, force_cutlass_fp8=False) -> dict[str, Any]:
    """Return components, detected/requested quantization and the per-layer plan (meta device only).

    Pre-quantized checkpoints (a ``gguf_model`` file, or ModelOpt components detected from their
    config) are checked against the model (architecture, tensor names and shapes); no tensor data is
    dequantized.
    """
    from quantomni.pipeline.prequantized import describe_detected, force_scaled_mm_fp8, route_prequantized

    root = Path(model)
    cfg = resolve_quant_config(quantization, quantization_config, gguf_model)
    index = read_model_index(root)
    cfg, detected = route_prequantized(root, index.components, cfg)
    resolved = cfg.resolve(list(index.components))
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    backends = BackendRequest.parse(linear_backend)
    if force_cutlass_fp8:
        backends = force_scaled_mm_fp8(backends, dev)
    adapter = adapter_for_class(index.pipeline_class, generic_ok=True)
    components = {}
    plans = {}
    for name, (library, class_name) in index.components.items():
        entry: dict[str, Any] = {"library": library, "class": class_name, "quantization": None}
        is_model = (root / name / "config.json").is_file()
        if is_model and library == "diffusers" and (name in resolved or name in DENOISER_COMPONENTS):
            method_cfg = resolved.get(name)
            if method_cfg is not None and method_cfg.prequantized:
                method_cfg.open_tensor_source(root / name)  # validates the checkpoint against this component
                if hasattr(method_cfg, "summary"):
                    entry["checkpoint"] = method_cfg.summary()
            module = build_empty_model(index.component_class(name), root / name)
            comp_adapter = adapter if name in DENOISER_COMPONENTS else GENERIC
            plan = plan_component(module, name, resolved.get(name), comp_adapter, dev, dt, backends)
            plans[name] = plan
            entry["quantization"] = plan.to_dict(with_layers=False)
            entry["parameters"] = sum(p.numel() for p in module.parameters())
            if name in detected:
                entry["detected"] = describe_detected(detected[name], plan)
        elif name in resolved and resolved[name] is not None:
            entry["quantization"] = {"method": resolved[name].method, "note": "planned at load (non-diffusers component)"}
        components[name] = entry
    return {
        "model": str(root),
        "pipeline": index.pipeline_class,
        "architecture": adapter.name,
        "requested_quantization": cfg.to_dict(),
        "detected_quantization": {c: d.modelopt.to_dict() for c, d in detected.items()},
        "components": components,
        "plans": plans,
    }
