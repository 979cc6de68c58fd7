"""NVIDIA ModelOpt pre-quantized checkpoints: detection, config parsing, per-layer schemes.

Why: a ModelOpt export selects its own quantization (the checkpoint already holds FP8 / NVFP4 /
INT8 weights and scales); the engine must recognise it from the component directory alone and
know, for every Linear layer, which layout to expect. Tensor layouts and fused-shard scale
unification live in ``modelopt_tensors`` and are re-exported here.

Where the config comes from (first found wins):

* ``config.json`` -> ``quantization_config`` (what ModelOpt's diffusers export writes):
  ``quant_method``, ``quant_algo``, ``producer``, ``config_groups``, ``ignore``,
  ``quantized_layers``;
* ``hf_quant_config.json`` (ModelOpt's LLM sidecar): ``producer`` at the top level and
  ``quantization: {quant_algo, kv_cache_quant_algo, group_size, exclude_modules,
  quantized_layers}``.

Ignore patterns (``ignore`` / ``exclude_modules``) are ``fnmatch`` patterns (case-sensitive). A
module ``name`` is ignored when a pattern ``p`` matches ``name`` itself, or ``p + ".*"`` matches
it (``p`` names a parent module: ``"model.visual"`` ignores ``"model.visual.blocks.0.qkv"``), or
``p`` matches ``name + ".weight"`` (quantizer-style patterns such as ``"*proj_out.*"``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import torch

from .modelopt_tensors import (  # noqa: F401  (re-exported API)
    MODELOPT_TENSOR_SUFFIXES,
    ModelOptTensorError,
    TensorSpec,
    clamp_nan_block_scales,
    expected_tensors,
    fuse_shards,
    group_layer_tensors,
    optional_tensors,
    unify_fused_shards,
    validate_layer_tensors,
)

MODELOPT_QUANT_METHODS = ("modelopt", "modelopt_fp4", "modelopt_mixed")

# Per-layer algorithms (what a LayerScheme can be) and the runtime method each selects.
LAYER_ALGOS = ("FP8", "FP8_PER_CHANNEL_PER_TOKEN", "NVFP4", "W4A16_NVFP4", "W8A8_SQ_PER_CHANNEL")
RUNTIME_METHOD_BY_ALGO = {
    "FP8": "modelopt",
    "FP8_PER_CHANNEL_PER_TOKEN": "modelopt",
    "NVFP4": "modelopt_fp4",
    "W4A16_NVFP4": "modelopt_fp4",
    "MIXED_PRECISION": "modelopt_mixed",
    "W8A8_SQ_PER_CHANNEL": "modelopt",
}
SUPPORTED_QUANT_ALGOS = tuple(RUNTIME_METHOD_BY_ALGO)
NVFP4_GROUP_SIZE = 16

CONFIG_JSON = "config.json"
SIDECAR_JSON = "hf_quant_config.json"


class ModelOptConfigError(ValueError):
    """A ModelOpt quantization config is unsupported or malformed (names field and value)."""


@dataclass(frozen=True)
class LayerScheme:
    """How one Linear layer is stored. ``algo`` in LAYER_ALGOS; ``group_size`` 16 for NVFP4."""

    algo: str
    group_size: int | None = None

    def __post_init__(self):
        if self.algo not in LAYER_ALGOS:
            raise ModelOptConfigError(
                f"layer quant_algo={self.algo!r} is not supported; allowed: {', '.join(LAYER_ALGOS)}"
            )
        if self.is_nvfp4 and self.group_size != NVFP4_GROUP_SIZE:
            raise ModelOptConfigError(
                f"group_size={self.group_size!r} for {self.algo}: only {NVFP4_GROUP_SIZE} is supported"
            )

    @property
    def is_fp8(self) -> bool:
        return self.algo in ("FP8", "FP8_PER_CHANNEL_PER_TOKEN")

    @property
    def is_nvfp4(self) -> bool:
        return self.algo in ("NVFP4", "W4A16_NVFP4")

    @property
    def is_int8(self) -> bool:
        return self.algo == "W8A8_SQ_PER_CHANNEL"

    @property
    def runtime_method(self) -> str:
        return RUNTIME_METHOD_BY_ALGO[self.algo]

    @property
    def weight_dtype(self) -> torch.dtype:
        """dtype of the stored ``weight`` tensor."""
        if self.is_fp8:
            return torch.float8_e4m3fn
        if self.is_nvfp4:
            return torch.uint8
        return torch.int8

    @property
    def per_channel_weight_scale(self) -> bool:
        """``weight_scale`` is [out] (per output channel) rather than a scalar / block grid."""
        return self.algo in ("FP8_PER_CHANNEL_PER_TOKEN", "W8A8_SQ_PER_CHANNEL")

    @property
    def has_input_scale(self) -> bool:
        """Static activation scale stored (False: per-token dynamic or weight-only)."""
        return self.algo in ("FP8", "NVFP4", "W8A8_SQ_PER_CHANNEL")

    @property
    def has_weight_scale_2(self) -> bool:
        return self.is_nvfp4

    @property
    def dynamic_activation(self) -> bool:
        """Activations are quantized per token at run time (FP8_PER_CHANNEL_PER_TOKEN)."""
        return self.algo == "FP8_PER_CHANNEL_PER_TOKEN"

    @property
    def weight_only(self) -> bool:
        return self.algo == "W4A16_NVFP4"

    @property
    def may_have_pre_quant_scale(self) -> bool:
        """SmoothQuant exports carry ``pre_quant_scale`` [in] (INT8_DEFAULT_CFG exports omit it)."""
        return self.is_int8


@dataclass(frozen=True)
class ModelOptConfig:
    """Parsed ModelOpt checkpoint config of one component directory."""

    runtime_method: str
    quant_algo: str
    producer: dict | None
    ignore: tuple[str, ...]
    quantized_layers: dict[str, LayerScheme] = field(default_factory=dict)
    group_size: int | None = None
    kv_cache_quant_algo: str | None = None
    source: str = CONFIG_JSON

    def is_ignored(self, module_name: str) -> bool:
        """True when an ignore pattern matches (see the module docstring for the rules)."""
        return any(
            fnmatchcase(module_name, pat)
            or fnmatchcase(module_name, pat + ".*")
            or fnmatchcase(module_name + ".weight", pat)
            for pat in self.ignore
        )

    def scheme_for(self, module_name: str) -> LayerScheme | None:
        """The storage scheme of Linear ``module_name``; None means it stays unquantized.

        Ask only about Linear modules (names as in the checkpoint, without ``.weight``).
        MIXED_PRECISION: layers not listed in ``quantized_layers`` are unquantized.
        """
        if self.is_ignored(module_name):
            return None
        if self.quant_algo == "MIXED_PRECISION":
            return self.quantized_layers.get(module_name)
        return LayerScheme(self.quant_algo, self.group_size)

    def describe_layers(self, linear_names) -> dict[str, str]:
        """``{name: quant_algo or "BF16"}`` for the given Linear names (for ``inspect``)."""
        out = {}
        for name in linear_names:
            s = self.scheme_for(name)
            out[name] = "BF16" if s is None else s.algo
        return out

    def to_dict(self) -> dict:
        """JSON-ready summary (for ``inspect`` and logs)."""
        return {
            "runtime_method": self.runtime_method,
            "quant_algo": self.quant_algo,
            "producer": self.producer,
            "ignore": list(self.ignore),
            "quantized_layers": {
                k: {"quant_algo": s.algo, **({"group_size": s.group_size} if s.group_size else {})}
                for k, s in self.quantized_layers.items()
            },
            "group_size": self.group_size,
            "kv_cache_quant_algo": self.kv_cache_quant_algo,
            "source": self.source,
        }


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelOptConfigError(f"{path}: not valid JSON ({exc})") from exc


def read_quantization_config(component_dir: str | Path) -> tuple[dict, str] | None:
    """The raw quantization config of a component and the file it came from, or None.

    Returns ``(config.json["quantization_config"], "config.json")`` when present, else
    ``(hf_quant_config.json contents, "hf_quant_config.json")``, else None. Nothing is
    interpreted here, so a caller can report what a non-ModelOpt checkpoint carries.
    """
    d = Path(component_dir)
    cfg_path = d / CONFIG_JSON
    if cfg_path.is_file():
        cfg = _read_json(cfg_path)
        qc = cfg.get("quantization_config") if isinstance(cfg, dict) else None
        if qc is not None:
            if not isinstance(qc, dict):
                raise ModelOptConfigError(
                    f"{cfg_path}: quantization_config must be an object, got {type(qc).__name__}"
                )
            return qc, CONFIG_JSON
    side = d / SIDECAR_JSON
    if side.is_file():
        sc = _read_json(side)
        if not isinstance(sc, dict):
            raise ModelOptConfigError(f"{side}: must hold a JSON object, got {type(sc).__name__}")
        return sc, SIDECAR_JSON
    return None


def is_modelopt_config(raw: dict) -> bool:
    """ModelOpt when quant_method (or method) names a ModelOpt method or producer.name is modelopt."""
    method = raw.get("quant_method", raw.get("method"))
    if isinstance(method, str) and method.lower() in MODELOPT_QUANT_METHODS:
        return True
    producer = raw.get("producer")
    return isinstance(producer, dict) and str(producer.get("name", "")).lower() == "modelopt"


def _flatten(raw: dict, source: str) -> dict:
    """Bring the sidecar form (fields under ``quantization``) to the config.json field names."""
    if source != SIDECAR_JSON:
        return raw
    q = raw.get("quantization")
    if not isinstance(q, dict):
        raise ModelOptConfigError(
            f"{SIDECAR_JSON}: field 'quantization' must be an object, got {q!r}"
        )
    flat = dict(q)
    if "exclude_modules" in flat:
        flat["ignore"] = flat.pop("exclude_modules")
    flat["producer"] = raw.get("producer")
    return flat


def _parse_algo(value: Any, field_name: str, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ModelOptConfigError(f"{field_name}={value!r}: must be a non-empty string")
    algo = value.strip().upper()
    if algo not in allowed:
        raise ModelOptConfigError(
            f"{field_name}={value!r} is not supported; supported: {', '.join(allowed)}"
        )
    return algo


def _parse_group_size(value: Any, field_name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ModelOptConfigError(f"{field_name}={value!r}: must be a positive integer")
    return value


def _config_group_size(flat: dict) -> int | None:
    """group_size from the top level, else from config_groups.*.weights.group_size."""
    if flat.get("group_size") is not None:
        return _parse_group_size(flat["group_size"], "group_size")
    groups = flat.get("config_groups")
    if groups is None:
        return None
    if not isinstance(groups, dict):
        raise ModelOptConfigError(f"config_groups={groups!r}: must be an object")
    for gname, group in groups.items():
        weights = group.get("weights") if isinstance(group, dict) else None
        if isinstance(weights, dict) and weights.get("group_size") is not None:
            return _parse_group_size(
                weights["group_size"], f"config_groups.{gname}.weights.group_size"
            )
    return None


def _parse_ignore(value: Any, field_name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)) or not all(isinstance(p, str) for p in value):
        raise ModelOptConfigError(f"{field_name}={value!r}: must be a list of strings")
    return tuple(value)


def _parse_quantized_layers(value: Any) -> dict[str, LayerScheme]:
    if not isinstance(value, dict) or not value:
        raise ModelOptConfigError(
            f"quantized_layers={value!r}: MIXED_PRECISION needs a non-empty object "
            f"mapping layer names to {{quant_algo, group_size}}"
        )
    layers = {}
    for name, entry in value.items():
        fname = f"quantized_layers[{name!r}]"
        if not isinstance(entry, dict):
            raise ModelOptConfigError(f"{fname}={entry!r}: must be an object with quant_algo")
        algo = _parse_algo(entry.get("quant_algo"), f"{fname}.quant_algo", LAYER_ALGOS)
        gs = _parse_group_size(entry.get("group_size"), f"{fname}.group_size")
        if algo in ("NVFP4", "W4A16_NVFP4"):
            gs = NVFP4_GROUP_SIZE if gs is None else gs
            if gs != NVFP4_GROUP_SIZE:
                raise ModelOptConfigError(
                    f"{fname}.group_size={gs}: {algo} supports only {NVFP4_GROUP_SIZE}"
                )
        else:
            gs = None
        layers[name] = LayerScheme(algo, gs)
    return layers


def parse_modelopt_config(raw: dict, source: str = CONFIG_JSON) -> ModelOptConfig:
    """Validate a raw ModelOpt config (either form) into a ModelOptConfig."""
    flat = _flatten(raw, source)
    algo = _parse_algo(flat.get("quant_algo"), "quant_algo", SUPPORTED_QUANT_ALGOS)
    producer = flat.get("producer")
    if producer is not None and not isinstance(producer, dict):
        raise ModelOptConfigError(f"producer={producer!r}: must be an object")
    kv = flat.get("kv_cache_quant_algo")
    if kv is not None and not isinstance(kv, str):
        raise ModelOptConfigError(f"kv_cache_quant_algo={kv!r}: must be a string or null")
    group_size = _config_group_size(flat)
    if algo in ("NVFP4", "W4A16_NVFP4"):
        group_size = NVFP4_GROUP_SIZE if group_size is None else group_size
        if group_size != NVFP4_GROUP_SIZE:
            raise ModelOptConfigError(
                f"group_size={group_size}: {algo} supports only {NVFP4_GROUP_SIZE}"
            )
    elif algo != "MIXED_PRECISION":
        group_size = None
    layers = _parse_quantized_layers(flat.get("quantized_layers")) if algo == "MIXED_PRECISION" else {}
    return ModelOptConfig(
        runtime_method=RUNTIME_METHOD_BY_ALGO[algo],
        quant_algo=algo,
        producer=producer,
        ignore=_parse_ignore(flat.get("ignore"), "exclude_modules" if source == SIDECAR_JSON else "ignore"),
        quantized_layers=layers,
        group_size=group_size,
        kv_cache_quant_algo=kv,
        source=source,
    )


def read_modelopt_config(component_dir: str | Path) -> ModelOptConfig | None:
    """The component's ModelOpt config; None if it has no quantization config or another method.

    Raises ModelOptConfigError for a ModelOpt config with an unsupported quant_algo or
    malformed fields. Use ``read_quantization_config`` to see what a non-ModelOpt config holds.
    """
    found = read_quantization_config(component_dir)
    if found is None:
        return None
    raw, source = found
    probe = raw
    if source == SIDECAR_JSON:
        q = raw.get("quantization")
        probe = {**(q if isinstance(q, dict) else {}), "producer": raw.get("producer")}
    if not is_modelopt_config(probe):
        return None
    try:
        return parse_modelopt_config(raw, source)
    except ModelOptConfigError as exc:
        raise ModelOptConfigError(f"{Path(component_dir) / source}: {exc}") from None
