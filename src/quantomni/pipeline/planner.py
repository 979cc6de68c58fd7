"""Build a ComponentPlan for a module and swap its Linear layers for QuantLinear."""

from __future__ import annotations

import torch
from torch import nn

from quantomni.config.base import QuantMethodConfig
from quantomni.config.patterns import compile_patterns, first_match
from quantomni.errors import QuantizationError
from quantomni.kernels.base import KernelSpec, select_linear_kernel
from quantomni.layers.linear import QuantLinear
from quantomni.models.base import ArchitectureAdapter
from quantomni.pipeline.backends import BackendRequest
from quantomni.pipeline.plan import ComponentPlan, LayerRecord


def linear_layers(module: nn.Module):
    for name, child in module.named_modules():
        if isinstance(child, nn.Linear):
            yield name, child


def plan_component(
    module: nn.Module,
    component: str,
    cfg: QuantMethodConfig | None,
    adapter: ArchitectureAdapter,
    device: torch.device,
    dtype: torch.dtype,
    backends: BackendRequest,
) -> ComponentPlan:
    """Decide, per Linear layer, whether it is quantized, with which method and which kernel.

    Pre-quantized methods: the checkpoint decides (``checkpoint_layer_reason``).
    Online methods, precedence (first rule that applies wins):
      1. ``ignored_layers`` pattern matches -> kept ("ignored_layers").
      2. adapter marks the layer sensitive and ``skip_sensitive_layers`` -> kept ("sensitive").
      3. otherwise quantized; the kernel is the best available ("auto") or the one requested.
    Raises QuantizationError if a quantization was requested and no layer would be quantized.
    """
    class_name = type(module).__name__
    records: list[LayerRecord] = []
    assignments = {}
    if cfg is None:
        for name, lin in linear_layers(module):
            records.append(LayerRecord(component, name, lin.in_features, lin.out_features, False, None, None, None, "not requested"))
        return ComponentPlan(component, class_name, adapter.name, None, None, records)

    ignored = compile_patterns(cfg.ignored_layers, f"{cfg.method}.ignored_layers")
    for name, lin in linear_layers(module):
        k, n = lin.in_features, lin.out_features
        why_kept = _kept_reason(cfg, adapter, ignored, name, k, n)
        if why_kept is not None:
            records.append(LayerRecord(component, name, k, n, False, None, None, None, why_kept))
            continue
        method = cfg.get_linear_method(name, k, n)
        spec = KernelSpec(method.format, k, n, dtype, device, method.scheme)
        kernel, why = select_linear_kernel(spec, backends.for_format(method.format))
        assignments[name] = (method, kernel)
        source = "checkpoint; " if cfg.prequantized else ""
        records.append(LayerRecord(component, name, k, n, True, cfg.method, method.scheme.describe(), kernel.name,
                                   f"quantized: {source}{why}"))
    plan = ComponentPlan(component, class_name, adapter.name, cfg.method, cfg.scheme_name(), records, assignments)
    if plan.quantized_count == 0:
        raise QuantizationError(
            f"{cfg.method} was requested for {component} ({class_name}) but no layer would be quantized "
            f"({len(records)} linear layers: {dict(plan.kept_reasons())}). Check ignored_layers / "
            f"skip_sensitive_layers; refusing to run a silently unquantized model."
        )
    return plan


def _kept_reason(cfg, adapter, ignored, name: str, k: int, n: int) -> str | None:
    """Why a layer stays in the model dtype, or None if it is quantized (rules in plan_component)."""
    if cfg.prequantized:
        # The checkpoint already decided which layers are quantized; its weights exist only in that form.
        why = cfg.checkpoint_layer_reason(name, k, n)
        return None if why is None else f"checkpoint: {why}"
    hit = first_match(ignored, name)
    if hit is not None:
        return f"ignored_layers: {hit.text}"
    sens = adapter.sensitive_match(name) if cfg.skip_sensitive_layers else None
    if sens is not None:
        return f"sensitive: {adapter.name} {sens.text}"
    return None


def replace_linear(module: nn.Module, name: str, method, kernel, dtype: torch.dtype) -> QuantLinear:
    """Put a QuantLinear (placeholder tensors) where the nn.Linear ``name`` is; returns it."""
    parent_name, _, child_name = name.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    old = getattr(parent, child_name)
    ql = QuantLinear(old.in_features, old.out_features, old.bias is not None, method, name, dtype)
    ql.kernel = kernel
    setattr(parent, child_name, ql)
    return ql


def swap_in_quant_linears(module: nn.Module, plan: ComponentPlan, dtype: torch.dtype) -> dict[str, QuantLinear]:
    """Replace every planned nn.Linear with a QuantLinear (tensors are placeholders until loaded)."""
    return {name: replace_linear(module, name, method, kernel, dtype) for name, (method, kernel) in plan.assignments.items()}
