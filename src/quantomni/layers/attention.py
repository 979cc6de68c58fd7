"""Quantized attention in a diffusers denoiser: ``attention="int8"`` (INT8 Q K^T, FP8 P V).

How it plugs in: the architectures that support it route every attention through diffusers'
``dispatch_attention_fn(..., backend=processor._attention_backend)``. ``install`` sets that
``_attention_backend`` on each attention processor of the denoiser to a ``QuantizedAttention``
object, and wraps the ``dispatch_attention_fn`` name of the architecture's diffusers module once:
calls whose backend is a QuantizedAttention go to the chosen kernel (kernels/attention.py), every
other call goes to diffusers unchanged (other models in the process are not affected).

Calls the kernel cannot take (an attention mask, causal attention, dropout, grouped-query heads,
context parallelism, a head dim the GPU kernel does not support) raise QuantizationError: a user who
asked for quantized attention never silently gets BF16 attention.
"""
from __future__ import annotations

import dataclasses
import importlib
import logging

import torch

from quantomni.errors import QuantizationError
from quantomni.kernels.attention import AttentionKernel, select_attention_kernel

logger = logging.getLogger(__name__)

#: attention modes: "sdpa" = the model's own attention (diffusers' backend choice), "int8" = quantized
ATTENTION_MODES = ("sdpa", "int8")
GPU_HEAD_DIMS = (64, 128)


@dataclasses.dataclass(frozen=True)
class AttentionPlan:
    mode: str
    kernel: str | None = None
    processors: int = 0
    reason: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class QuantizedAttention:
    """Stands in a processor's ``_attention_backend``; the wrapped dispatch calls it."""

    def __init__(self, kernel: AttentionKernel):
        self.kernel = kernel

    def __call__(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                 enable_gqa=False, parallel_config=None):
        if attn_mask is not None:
            raise QuantizationError("attention='int8' does not take attention masks, and this call passes one; "
                                    "use attention='sdpa' for this model or input")
        if is_causal or dropout_p:
            raise QuantizationError("attention='int8' supports non-causal attention without dropout only")
        if parallel_config is not None:
            raise QuantizationError("attention='int8' does not support diffusers' context parallelism")
        if query.shape[2] != key.shape[2]:
            raise QuantizationError(f"attention='int8' does not support grouped-query attention "
                                    f"({query.shape[2]} query heads, {key.shape[2]} key heads)")
        return self.kernel.fn(query, key, value, scale)

    def __repr__(self) -> str:
        return f"QuantizedAttention(kernel={self.kernel.name!r})"


def _wrapped_dispatch(original):
    def dispatch_attention_fn(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                              enable_gqa=False, attention_kwargs=None, *, backend=None, parallel_config=None):
        if isinstance(backend, QuantizedAttention):
            return backend(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, parallel_config)
        return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                        enable_gqa=enable_gqa, attention_kwargs=attention_kwargs, backend=backend,
                        parallel_config=parallel_config)

    dispatch_attention_fn._quantomni_original = original
    return dispatch_attention_fn


def _patch_dispatch(module_name: str) -> None:
    mod = importlib.import_module(module_name)
    current = getattr(mod, "dispatch_attention_fn", None)
    if current is None:
        raise QuantizationError(f"attention='int8': {module_name} has no dispatch_attention_fn (diffusers version?)")
    if not hasattr(current, "_quantomni_original"):
        mod.dispatch_attention_fn = _wrapped_dispatch(current)


def _head_dim(module) -> int | None:
    if getattr(module, "head_dim", None):
        return int(module.head_dim)
    heads, inner = getattr(module, "heads", None), getattr(module, "inner_dim", None)
    if heads and inner:
        return int(inner) // int(heads)
    return None


def validate_mode(mode) -> str:
    if not isinstance(mode, str) or mode.strip().lower() not in ATTENTION_MODES:
        raise ValueError(f"attention: unknown mode {mode!r}; choose from {list(ATTENTION_MODES)}")
    return mode.strip().lower()


def install(denoiser: torch.nn.Module, mode: str, adapter, device, dtype: torch.dtype | None = None) -> AttentionPlan:
    """Route the denoiser's attention through the quantized kernel (mode "int8"); "sdpa" changes nothing.
    ``dtype``: the denoiser's activation dtype, checked against the kernel where given."""
    mode = validate_mode(mode)
    if mode == "sdpa":
        return AttentionPlan("sdpa", reason="the model's own attention")
    if denoiser is None:
        raise QuantizationError("attention='int8' needs a pipeline with a denoiser")
    if not adapter.attention_dispatch:
        raise QuantizationError(f"attention='int8' is not supported for architecture {adapter.name!r} (supported: "
                                f"architectures whose attention has no mask and goes through diffusers' "
                                f"dispatch_attention_fn: flux, wan)")
    kernel = select_attention_kernel(device)
    if kernel.name != "torch" and dtype is not None and dtype not in (torch.bfloat16, torch.float16):
        raise QuantizationError(f"attention='int8' on the GPU takes bfloat16 or float16 activations; the model runs in {dtype}")
    backend = QuantizedAttention(kernel)
    _patch_dispatch(adapter.attention_dispatch)
    count = 0
    for name, module in denoiser.named_modules():
        proc = getattr(module, "processor", None)
        if proc is None or not hasattr(proc, "_attention_backend"):
            continue
        hd = _head_dim(module)
        if kernel.name != "torch" and hd is not None and hd not in GPU_HEAD_DIMS:
            raise QuantizationError(f"attention='int8': {name} has head dim {hd}; the GPU kernel supports {GPU_HEAD_DIMS}")
        proc._attention_backend = backend
        count += 1
    if count == 0:
        raise QuantizationError(f"attention='int8': no attention processor found in {type(denoiser).__name__}")
    plan = AttentionPlan("int8", kernel.name, count, kernel.reason)
    logger.info("attention: INT8 QK^T + FP8 PV on %d attention modules, kernel %s (%s)", count, kernel.name, kernel.reason)
    return plan
