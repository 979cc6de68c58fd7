"""Method registry: name -> config class, imported lazily.

Adding a method is one new file under ``quantomni/methods/`` plus one line in ``_METHODS``.
"""

from __future__ import annotations

import importlib

#: method name -> "module:ConfigClass"
_METHODS: dict[str, str] = {
    "fp8": "quantomni.methods.fp8:Fp8Config",
    "int8": "quantomni.methods.int8:Int8Config",
    "gguf": "quantomni.methods.gguf:GgufConfig",
    "modelopt": "quantomni.methods.modelopt_fp8:ModelOptFp8Config",
    "modelopt_fp4": "quantomni.methods.modelopt_nvfp4:ModelOptFp4Config",
    "modelopt_mixed": "quantomni.methods.modelopt_mixed:ModelOptMixedConfig",
}


def register_method(name: str, target: str, *, overwrite: bool = False) -> None:
    """Register ``name`` -> ``"package.module:ConfigClass"`` (used by plug-ins and tests)."""
    if not overwrite and name in _METHODS and _METHODS[name] != target:
        raise ValueError(f"method {name!r} is already registered to {_METHODS[name]}")
    _METHODS[name] = target


def registered_methods() -> list[str]:
    return sorted(_METHODS)


def get_method_config_class(name: str, field: str = "method"):
    if name not in _METHODS:
        raise ValueError(f"{field}: unknown quantization method {name!r}; registered methods: {registered_methods()}")
    module_name, _, attr = _METHODS[name].partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    if getattr(cls, "method", None) != name:
        raise RuntimeError(f"registry entry {name!r} points to {cls!r} whose method is {cls.method!r}")
    return cls
