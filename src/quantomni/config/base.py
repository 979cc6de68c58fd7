"""Configuration value objects.

``QuantMethodConfig`` is the base of every method's config (one subclass per method file). It is a
frozen dataclass validated in ``__post_init__``; it serialises to a plain dict with its method name.
``PipelineQuantConfig`` maps pipeline components to a method config (or ``None`` = keep dtype).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

from quantomni.config.patterns import compile_patterns

CONFIG_VERSION = 1

#: Alias that expands, at load time, to whichever denoiser components the pipeline has.
DENOISER = "denoiser"
DENOISER_COMPONENTS = ("transformer", "transformer_2", "unet")
#: Components that hold weights and may be named in a per-component spec.
QUANTIZABLE_COMPONENTS = (
    DENOISER,
    *DENOISER_COMPONENTS,
    "text_encoder",
    "text_encoder_2",
    "text_encoder_3",
    "image_encoder",
    "vae",
    # stages of multi-stage omni models
    "thinker",
    "talker",
    "code2wav",
)
#: Components without weights: they may only be given ``None``.
WEIGHTLESS_COMPONENTS = (
    "tokenizer",
    "tokenizer_2",
    "tokenizer_3",
    "scheduler",
    "feature_extractor",
    "image_processor",
    "processor",
)


@dataclasses.dataclass(frozen=True)
class QuantMethodConfig:
    """Options shared by every method.

    ignored_layers: module-name patterns (fnmatch globs, or ``re:`` regexes) kept unquantized.
    skip_sensitive_layers: keep the architecture adapter's sensitive layers (embedders,
        timestep/guidance/modulation linears, final projection) in the original dtype.
    """

    method: ClassVar[str] = ""
    #: True for methods whose weights come quantized from the checkpoint (ModelOpt, GGUF).
    prequantized: ClassVar[bool] = False
    #: True when one config holds the weights of exactly one component (a GGUF file): the
    #: ``denoiser`` alias may then not expand to two denoisers (Wan 2.2's transformer/transformer_2).
    single_component: ClassVar[bool] = False

    ignored_layers: tuple[str, ...] = ()
    skip_sensitive_layers: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "ignored_layers", tuple(self.ignored_layers or ()))
        compile_patterns(self.ignored_layers, f"{self.method}.ignored_layers")
        if not isinstance(self.skip_sensitive_layers, bool):
            raise ValueError(
                f"{self.method}.skip_sensitive_layers: expected true or false, got {self.skip_sensitive_layers!r}"
            )
        self.validate()

    # -- hooks for subclasses ------------------------------------------------------------
    def validate(self) -> None:
        """Check cross-field consistency; raise ValueError naming the field and value."""

    def scheme_name(self) -> str:
        """Short human description, e.g. ``fp8 e4m3 W:channel A:dynamic-token``."""
        return self.method

    def get_linear_method(self, layer_name: str, in_features: int, out_features: int):
        """Return the LinearMethodBase that quantizes this layer (see quantomni.methods.base)."""
        raise NotImplementedError

    # -- hooks for pre-quantized checkpoints (ModelOpt, GGUF) ---------------------------
    def checkpoint_layer_reason(self, layer_name: str, in_features: int, out_features: int) -> str | None:
        """For ``prequantized`` methods the checkpoint decides scope: return None if the layer is
        stored quantized, else why it is kept (e.g. "stored as BF16 in the checkpoint")."""
        return None

    def open_tensor_source(self, component_dir):
        """Return a TensorSource (quantomni.formats.sources) to read this component from, or None
        to read the component directory's own safetensors."""
        return None

    # -- (de)serialisation ---------------------------------------------------------------
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, options: Mapping[str, Any]) -> "QuantMethodConfig":
        allowed = cls.field_names()
        unknown = sorted(k for k in options if k not in allowed and k != "method")
        if unknown:
            raise ValueError(
                f"{cls.method}: unknown option(s) {unknown}; allowed options: {sorted(allowed)}"
            )
        kwargs = {k: v for k, v in options.items() if k != "method"}
        for k, v in list(kwargs.items()):
            if isinstance(v, list):
                kwargs[k] = tuple(v)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return out


@dataclasses.dataclass(frozen=True)
class PipelineQuantConfig:
    """Which method each pipeline component gets. Built only by ``build_quant_config``.

    ``components`` maps a component name (or the ``"denoiser"`` alias) to a method config or
    ``None`` (explicitly unquantized). Components not named keep their dtype.
    """

    components: Mapping[str, QuantMethodConfig | None] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "components", MappingProxyType(dict(self.components)))

    @property
    def is_quantized(self) -> bool:
        return any(cfg is not None for cfg in self.components.values())

    def resolve(self, present: list[str] | tuple[str, ...]) -> dict[str, QuantMethodConfig | None]:
        """Map the pipeline's actual components to configs.

        ``denoiser`` expands to the denoiser components present; an explicitly named component
        overrides the alias. A named component that the pipeline lacks is an error.
        """
        present = tuple(present)
        resolved: dict[str, QuantMethodConfig | None] = {}
        if DENOISER in self.components:
            denoisers = [c for c in DENOISER_COMPONENTS if c in present]
            if not denoisers and self.components[DENOISER] is not None:
                raise ValueError(
                    f"quantization targets the denoiser, but the pipeline has none of "
                    f"{list(DENOISER_COMPONENTS)}; its components are {sorted(present)}"
                )
            alias_cfg = self.components[DENOISER]
            by_alias = [c for c in denoisers if c not in self.components]
            if alias_cfg is not None and alias_cfg.single_component and len(by_alias) > 1:
                raise ValueError(
                    f"{alias_cfg.method}: one file holds one denoiser, but this pipeline has {len(by_alias)} "
                    f"({', '.join(by_alias)}); give each its own, e.g. "
                    + "{" + ", ".join(f'"{c}": {{"method": "{alias_cfg.method}", "path": ...}}' for c in by_alias) + "}"
                )
            for c in denoisers:
                resolved[c] = alias_cfg
        for name, cfg in self.components.items():
            if name == DENOISER:
                continue
            if name not in present:
                raise ValueError(
                    f"quantization config names component {name!r}, which this pipeline does not have; "
                    f"its components are {sorted(present)}"
                )
            resolved[name] = cfg
        return resolved

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": CONFIG_VERSION,
            "components": {k: (v.to_dict() if v is not None else None) for k, v in self.components.items()},
        }

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> "PipelineQuantConfig":
        from quantomni.config.build import build_quant_config

        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"quantization config is not valid JSON: {exc}") from exc
        return build_quant_config(data)

    def describe(self) -> str:
        if not self.is_quantized:
            return "none"
        parts = [f"{k}={v.scheme_name() if v else 'none'}" for k, v in self.components.items()]
        return ", ".join(parts)
