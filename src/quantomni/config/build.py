"""``build_quant_config``: the one entry point from any accepted spec to a PipelineQuantConfig."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quantomni.config.base import (
    CONFIG_VERSION,
    DENOISER,
    QUANTIZABLE_COMPONENTS,
    WEIGHTLESS_COMPONENTS,
    PipelineQuantConfig,
    QuantMethodConfig,
)

_NONE_NAMES = ("none", "")


def build_quant_config(spec: Any = None) -> PipelineQuantConfig:
    """Turn a quantization spec into one immutable, validated pipeline config.

    Accepted forms:
      * ``None`` or ``"none"``: nothing quantized.
      * a method name (``"fp8"``, ``"int8"``, ...): that method for the denoiser, defaults.
      * a method dict ``{"method": "fp8", "weight_granularity": "channel", ...}``: the denoiser.
      * a per-component dict ``{"transformer": "fp8", "text_encoder": None}``; values take any
        of the forms above (``None`` keeps that component in its dtype).
      * the serialised form ``{"version": 1, "components": {...}}`` (``PipelineQuantConfig.to_dict``).
      * a ``QuantMethodConfig`` (for the denoiser) or a ``PipelineQuantConfig`` (returned as is).

    Every invalid spec raises ``ValueError`` naming the field, the value and what is allowed.
    """
    if isinstance(spec, PipelineQuantConfig):
        return spec
    method_cfg = _method_config(spec, field="quantization")
    if method_cfg is not _NOT_A_METHOD:
        return PipelineQuantConfig({DENOISER: method_cfg} if method_cfg is not None else {})
    if isinstance(spec, Mapping):
        if "components" in spec or "version" in spec:
            return _from_serialised(spec)
        return PipelineQuantConfig(_per_component(spec))
    raise ValueError(
        f"quantization: unsupported spec of type {type(spec).__name__} ({spec!r}); expected None, a method "
        f"name, a dict with 'method', a per-component dict or a config object"
    )


_NOT_A_METHOD = object()


def _method_config(spec: Any, field: str):
    """Return a method config, None (explicitly none), or _NOT_A_METHOD for per-component dicts."""
    from quantomni.methods.registry import get_method_config_class

    if spec is None:
        return None
    if isinstance(spec, QuantMethodConfig):
        return spec
    if isinstance(spec, str):
        name = spec.strip().lower()
        if name in _NONE_NAMES:
            return None
        return get_method_config_class(name, field=field)()
    if isinstance(spec, Mapping) and "method" in spec:
        name = spec["method"]
        if name is None or (isinstance(name, str) and name.strip().lower() in _NONE_NAMES):
            extra = sorted(k for k in spec if k != "method")
            if extra:
                raise ValueError(f"{field}: options {extra} given with method 'none'")
            return None
        if not isinstance(name, str):
            raise ValueError(f"{field}.method: expected a method name string, got {name!r}")
        cls = get_method_config_class(name.strip().lower(), field=f"{field}.method")
        try:
            return cls.from_dict(spec)
        except TypeError as exc:  # wrong argument types surface as TypeError from dataclasses
            raise ValueError(f"{field}: invalid options for method {name!r}: {exc}") from exc
    return _NOT_A_METHOD


def _per_component(spec: Mapping) -> dict[str, QuantMethodConfig | None]:
    if not spec:
        return {}
    out: dict[str, QuantMethodConfig | None] = {}
    for name, value in spec.items():
        if not isinstance(name, str):
            raise ValueError(f"quantization: component names must be strings, got {name!r}")
        if name in WEIGHTLESS_COMPONENTS:
            if value is not None and not (isinstance(value, str) and value.lower() in _NONE_NAMES):
                raise ValueError(
                    f"quantization.{name}: component {name!r} has no weights to quantize; only None is allowed"
                )
            continue
        if name not in QUANTIZABLE_COMPONENTS:
            raise ValueError(
                f"quantization: unknown component {name!r}; known components: "
                f"{sorted(QUANTIZABLE_COMPONENTS)} (and weightless {sorted(WEIGHTLESS_COMPONENTS)})"
            )
        cfg = _method_config(value, field=f"quantization.{name}")
        if cfg is _NOT_A_METHOD:
            raise ValueError(
                f"quantization.{name}: expected None, a method name or a dict with 'method', got {value!r}"
            )
        out[name] = cfg
    return out


def _from_serialised(spec: Mapping) -> PipelineQuantConfig:
    version = spec.get("version", CONFIG_VERSION)
    if version != CONFIG_VERSION:
        raise ValueError(f"quantization.version: unsupported version {version!r}; supported: {CONFIG_VERSION}")
    extra = sorted(k for k in spec if k not in ("version", "components"))
    if extra:
        raise ValueError(f"quantization: unknown top-level field(s) {extra}; allowed: ['components', 'version']")
    components = spec.get("components", {})
    if not isinstance(components, Mapping):
        raise ValueError(f"quantization.components: expected a mapping, got {type(components).__name__}")
    return PipelineQuantConfig(_per_component(components))
