"""Quantize a MoE component online: dense Linear layers with the method, fused experts with an
expert format (same as the method, or another: e.g. FP8 dense + NVFP4 experts), router untouched.

Why separate: the omni thinker and any transformers MoE block (HunyuanImage-3's
HunYuanMoEV1Moe, Qwen3-MoE, ...) share this path; ``protected`` names modules that must never
be quantized whatever the options say (the thinker's audio/vision encoders).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from quantomni.config.base import QuantMethodConfig
from quantomni.config.patterns import compile_patterns, first_match
from quantomni.errors import QuantizationError
from quantomni.layers.moe import QuantMoEExperts
from quantomni.models.base import ArchitectureAdapter
from quantomni.pipeline.loader import quantize_module_in_place
from quantomni.pipeline.plan import ComponentPlan, LayerRecord
from quantomni.pipeline.planner import plan_component

#: experts_format values; "auto" follows the method
EXPERT_CHOICES = ("auto", "fp8", "int8", "nvfp4", "none")
EXPERT_FORMAT_BY_METHOD = {"fp8": "fp8", "int8": "int8", "nvfp4": "nvfp4"}
ACT_BY_FORMAT = {"fp8": "fp8_token", "int8": "int8_token", "nvfp4": "none"}


def is_fused_experts(module: nn.Module) -> bool:
    """transformers 5 fused experts: 3-D ``gate_up_proj`` [E, 2I, H] and ``down_proj`` [E, H, I]."""
    gu, dn = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    return isinstance(gu, torch.Tensor) and isinstance(dn, torch.Tensor) and gu.dim() == 3 and dn.dim() == 3


def fused_experts(module: nn.Module):
    for name, child in module.named_modules():
        if is_fused_experts(child):
            yield name, child


def expert_format(component: str, cfg: QuantMethodConfig, experts_format: str) -> str:
    if experts_format not in EXPERT_CHOICES:
        raise ValueError(f"experts_format: got {experts_format!r}; allowed: {list(EXPERT_CHOICES)}")
    if experts_format != "auto":
        return experts_format
    fmt = EXPERT_FORMAT_BY_METHOD.get(cfg.method)
    if fmt is None:
        raise ValueError(f"quantization.{component}: method {cfg.method!r} has no expert format; pass experts_format "
                         f"(one of {list(EXPERT_CHOICES[1:])})")
    return fmt


def quantize_moe_component(module: nn.Module, component: str, cfg: QuantMethodConfig, adapter: ArchitectureAdapter,
                           device: torch.device, dtype: torch.dtype, backends, experts_format: str = "auto",
                           moe_backend: str = "auto", protected: tuple[str, ...] = ()) -> ComponentPlan:
    """Quantize ``module`` in place; returns its plan (Linear records + one record per expert projection).

    Raises QuantizationError if a quantized layer would land in ``protected`` or nothing is quantized.
    """
    if cfg.prequantized:
        raise ValueError(f"quantization.{component}: {cfg.method} is a pre-quantized format; it comes from the checkpoint")
    fmt = expert_format(component, cfg, experts_format)
    try:
        dry = plan_component(module, component, cfg, adapter, device, dtype, backends)
    except QuantizationError:
        if fmt == "none" or not list(fused_experts(module)):
            raise
        dry = None  # experts-only quantization: every Linear is ignored/sensitive
    guard = compile_patterns(protected)
    wrong = [n for n in (dry.assignments if dry else ()) if first_match(guard, n)]
    if wrong:
        raise QuantizationError(
            f"quantization.{component}: would quantize {len(wrong)} protected layer(s) (e.g. {wrong[0]!r}, matching "
            f"{list(protected)}: the audio/vision encoders stay {dtype}); keep skip_sensitive_layers=true or list "
            f"them in ignored_layers")
    if dry is None:
        kept = plan_component(module, component, None, adapter, device, dtype, backends).records
        records = [dataclasses.replace(r, reason="kept: ignored_layers / sensitive (experts-only)") for r in kept]
        plan = ComponentPlan(component, type(module).__name__, adapter.name, cfg.method, cfg.scheme_name(), records)
    else:
        plan = quantize_module_in_place(module, component, cfg, adapter, device, dtype, backends)
    _quantize_experts(module, component, cfg, plan, fmt, moe_backend, device, dtype, guard)
    if plan.quantized_count == 0:
        raise QuantizationError(f"quantization.{component}: {cfg.method} was requested but nothing was quantized")
    return plan


def _quantize_experts(module, component, cfg, plan, fmt, moe_backend, device, dtype, guard) -> None:
    ignored = compile_patterns(cfg.ignored_layers)
    for name in [n for n, _ in fused_experts(module)]:  # names only: each BF16 module is freed once replaced
        experts = module.get_submodule(name)
        hit = first_match(ignored, name) or first_match(guard, name)
        if fmt == "none" or hit is not None:
            why = "experts_format=none" if fmt == "none" else f"ignored_layers: {hit.text}"
            plan.records.append(LayerRecord(component, name, experts.gate_up_proj.shape[-1],
                                            experts.gate_up_proj.shape[-2], False, None, None, None, why))
            continue
        experts.to(device)  # quantize where it will run (the host may be far slower)
        q = QuantMoEExperts.from_module(experts, fmt, ACT_BY_FORMAT[fmt], moe_backend, f"{component}.{name}")
        q.to(device)
        layout = q.prepare(device)
        backend, grouped_mm, why = q.backend_info(device, dtype)
        parent_name, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, child, q)
        del experts
        for proj, ew in (("gate_up_proj", q.gate_up), ("down_proj", q.down)):
            plan.records.append(LayerRecord(
                component, f"{name}.{proj}", ew.in_features, ew.out_features, True, cfg.method,
                f"{fmt} experts x{ew.num_experts} A:{ew.act}",
                f"moe-{backend}" + ("+grouped_mm" if grouped_mm else ""), f"quantized experts: {why}; {layout}"))
