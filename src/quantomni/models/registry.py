"""Adapter registry: adapter name -> module (lazy). Adding an architecture = one file + one line."""

from __future__ import annotations

import importlib

from quantomni.models.base import GENERIC, ArchitectureAdapter

_ADAPTERS: dict[str, str] = {
    "flux": "quantomni.models.flux",
    "flux2": "quantomni.models.flux2",
    "qwen-image": "quantomni.models.qwen_image",
    "sd3": "quantomni.models.sd3",
    "z-image": "quantomni.models.z_image",
    "wan": "quantomni.models.wan",
    "qwen3-omni": "quantomni.models.qwen3_omni",
}


def registered_adapters() -> list[str]:
    return sorted(_ADAPTERS)


def get_adapter(name: str) -> ArchitectureAdapter:
    if name not in _ADAPTERS:
        raise ValueError(f"unknown architecture {name!r}; supported: {registered_adapters()}")
    return importlib.import_module(_ADAPTERS[name]).ADAPTER


def adapter_for_class(class_name: str, *, generic_ok: bool = False) -> ArchitectureAdapter:
    """Adapter for a diffusers class name (denoiser or pipeline class)."""
    for name in _ADAPTERS:
        adapter = get_adapter(name)
        if class_name in adapter.transformer_classes or class_name in adapter.pipeline_classes:
            return adapter
    if generic_ok:
        return GENERIC
    supported = sorted(c for n in _ADAPTERS for c in get_adapter(n).transformer_classes)
    raise ValueError(f"no quantomni adapter for {class_name!r}; supported denoiser classes: {supported}")
