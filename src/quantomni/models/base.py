"""The adapter value object. One instance per architecture, in its own module."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from quantomni.config.patterns import LayerPattern, compile_patterns, first_match


@dataclasses.dataclass(frozen=True)
class ArchitectureAdapter:
    """What quantomni must know about one model family.

    name: short id ("flux"); transformer_classes: diffusers denoiser class names it covers;
    pipeline_classes: diffusers pipeline class names; sensitive_layers: module-name patterns kept
    in BF16 by default (embedders, timestep/guidance/modulation and norm linears, final projection:
    quantizing those is what turns images into noise); guidance_param: the pipeline argument our
    ``guidance_scale`` maps to; negative_prompt: "native" (pipeline argument), "true_cfg" (needs
    ``true_cfg_scale``) or "unsupported"; call_defaults: extra pipeline arguments for image output;
    attention_dispatch: the diffusers module whose attention processors call
    ``dispatch_attention_fn`` without a mask (None: ``attention="int8"`` is not supported).
    """

    name: str
    transformer_classes: tuple[str, ...]
    pipeline_classes: tuple[str, ...]
    sensitive_layers: tuple[str, ...]
    guidance_param: str | None = "guidance_scale"
    negative_prompt: str = "native"
    true_cfg_scale: float = 4.0
    call_defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    description: str = ""
    attention_dispatch: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "call_defaults", MappingProxyType(dict(self.call_defaults)))
        object.__setattr__(self, "_patterns", compile_patterns(self.sensitive_layers, f"{self.name}.sensitive_layers"))

    def sensitive_match(self, module_name: str) -> LayerPattern | None:
        return first_match(self._patterns, module_name)  # type: ignore[attr-defined]

    def pipeline_kwargs(self, guidance_scale: float | None, negative_prompt) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(self.call_defaults)
        if guidance_scale is not None:
            if self.guidance_param is None:
                raise ValueError(f"{self.name}: this architecture takes no guidance_scale")
            kwargs[self.guidance_param] = guidance_scale
        if negative_prompt is not None:
            if self.negative_prompt == "unsupported":
                raise ValueError(f"{self.name}: this architecture does not support negative_prompt")
            kwargs["negative_prompt"] = negative_prompt
            if self.negative_prompt == "true_cfg" and "true_cfg_scale" not in kwargs:
                kwargs["true_cfg_scale"] = self.true_cfg_scale
        return kwargs


#: For components without a dedicated adapter (text encoders, VAEs) when a user explicitly
#: asks to quantize them: every Linear is eligible, nothing is sensitive.
GENERIC = ArchitectureAdapter(
    name="generic",
    transformer_classes=(),
    pipeline_classes=(),
    sensitive_layers=(),
    description="any module; no layer is treated as sensitive",
)
