"""Load one model component with its quantization applied while the checkpoint streams in.

The denoiser is built on the meta device, planned, its Linear layers swapped for QuantLinear, and
then the safetensors tensors are read one at a time: a quantized layer's BF16 weight lives only
until that layer is quantized, so peak memory is about the quantized model plus one BF16 layer.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from quantomni.config.base import QuantMethodConfig
from quantomni.errors import CheckpointError
from quantomni.formats.safetensors_io import find_weight_files
from quantomni.formats.sources import SafetensorsSource
from quantomni.models.base import ArchitectureAdapter
from quantomni.pipeline.backends import BackendRequest
from quantomni.pipeline.plan import ComponentPlan
from quantomni.pipeline.planner import plan_component, replace_linear, swap_in_quant_linears

logger = logging.getLogger("quantomni")


@dataclasses.dataclass
class LoadStats:
    component: str
    load_time_s: float = 0.0
    tensors: int = 0
    checkpoint_bytes: int = 0
    weight_bytes: int = 0  # resident bytes of the component's parameters and buffers


def module_bytes(module: nn.Module) -> int:
    seen = set()
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        if t is None or t.device.type == "meta" or id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


def build_empty_model(model_cls, component_dir: Path) -> nn.Module:
    """Instantiate ``model_cls`` from its config with parameters on the meta device."""
    from accelerate import init_empty_weights

    try:
        config = model_cls.load_config(str(component_dir))
    except Exception as exc:
        raise CheckpointError(f"cannot read model config in {component_dir}: {exc}") from exc
    with init_empty_weights(include_buffers=False):
        return model_cls.from_config(config)


def _split(name: str) -> tuple[str, str]:
    owner, _, leaf = name.rpartition(".")
    return owner, leaf


def load_component_streaming(
    component: str,
    component_dir: Path,
    model_cls,
    cfg: QuantMethodConfig | None,
    adapter: ArchitectureAdapter,
    device: torch.device,
    dtype: torch.dtype,
    backends: BackendRequest,
    progress: bool = True,
    on_tensor: Callable[[str], None] | None = None,
) -> tuple[nn.Module, ComponentPlan, LoadStats]:
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    component_dir = Path(component_dir)
    source = cfg.open_tensor_source(component_dir) if cfg is not None else None
    if source is None:
        source = SafetensorsSource(find_weight_files(component_dir))
    names = source.names()
    model = build_empty_model(model_cls, component_dir)
    plan = plan_component(model, component, cfg, adapter, device, dtype, backends)
    quant_layers = swap_in_quant_linears(model, plan, dtype)
    keep_fp32 = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())

    # Expected checkpoint keys: QuantLinear tensors plus every other parameter / persistent buffer.
    expected: dict[str, tuple[str, object]] = {}
    for lname, ql in quant_layers.items():
        for suffix in ql.method.expected_tensors(ql):
            expected[f"{lname}.{suffix}"] = ("quant", ql)
    for pname, _ in model.named_parameters():
        owner, _ = _split(pname)
        if owner not in quant_layers:
            expected[pname] = ("param", None)
    for bname, buf in model.named_buffers():
        owner, leaf = _split(bname)
        if owner in quant_layers:
            continue
        mod = model.get_submodule(owner) if owner else model
        if leaf not in getattr(mod, "_non_persistent_buffers_set", set()):
            expected[bname] = ("buffer", None)

    missing = sorted(set(expected) - set(names))
    unexpected = sorted(set(names) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{component}: checkpoint {source.description} does not match {type(model).__name__}: "
            f"missing {len(missing)} tensor(s) {missing[:10]}{' ...' if len(missing) > 10 else ''}, "
            f"unexpected {len(unexpected)} tensor(s) {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}"
        )

    stats = LoadStats(component)
    bar = tqdm(total=len(names), desc=f"Loading {component}", unit="tensor", disable=not progress, leave=False)
    try:
        for name, tensor in source.iter_tensors():
            stats.tensors += 1
            stats.checkpoint_bytes += tensor.numel() * tensor.element_size()
            kind, ql = expected[name]
            if kind == "quant":
                _, suffix = _split(name)
                ql.method.load_tensor(ql, suffix, tensor)
                del tensor
                if ql.method.is_complete(ql):
                    finish_layer(ql, device)
            else:
                _assign(model, name, tensor, kind, dtype, device, keep_fp32)
                del tensor
            bar.update(1)
            if on_tensor is not None:
                on_tensor(name)
    finally:
        bar.close()

    not_ready = [n for n, ql in quant_layers.items() if not ql.ready]
    if not_ready:
        raise CheckpointError(f"{component}: layers never received all their tensors: {not_ready[:10]}")
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    stats.weight_bytes = module_bytes(model)
    stats.load_time_s = time.perf_counter() - t0
    return model, plan, stats


def finish_layer(ql, device) -> None:
    """The method processes the loaded tensors, then the chosen kernel may re-lay them out."""
    ql.method.process_weights_after_loading(ql, device)
    if ql.kernel is not None:
        ql.kernel.process_loaded(ql)


def _assign(model, name, tensor, kind, dtype, device, keep_fp32):
    owner, leaf = _split(name)
    mod = model.get_submodule(owner) if owner else model
    current = getattr(mod, leaf)
    if tuple(current.shape) != tuple(tensor.shape):
        raise CheckpointError(
            f"tensor {name!r}: checkpoint shape {tuple(tensor.shape)} does not match model shape {tuple(current.shape)}"
        )
    if tensor.is_floating_point():
        target = torch.float32 if any(m in name.split(".") for m in keep_fp32) else dtype
        tensor = tensor.to(dtype=target)
    tensor = tensor.to(device)
    if kind == "param":
        mod._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)
    else:
        mod._buffers[leaf] = tensor


def quantize_module_in_place(
    module: nn.Module,
    component: str,
    cfg: QuantMethodConfig,
    adapter: ArchitectureAdapter,
    device: torch.device,
    dtype: torch.dtype,
    backends: BackendRequest,
) -> ComponentPlan:
    """Quantize an already-loaded module layer by layer (text encoders and other non-streamed
    components). Each BF16 Linear is freed as soon as its quantized replacement exists."""
    plan = plan_component(module, component, cfg, adapter, device, dtype, backends)
    for name, (method, kernel) in plan.assignments.items():
        old = module.get_submodule(name)
        weight, bias = old.weight.detach(), (old.bias.detach() if old.bias is not None else None)
        ql = replace_linear(module, name, method, kernel, dtype)
        del old
        method.load_tensor(ql, "weight", weight)
        if bias is not None:
            method.load_tensor(ql, "bias", bias)
        del weight, bias
        finish_layer(ql, device)
    return plan
