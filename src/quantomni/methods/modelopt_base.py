"""Shared base of the ModelOpt runtime methods (``modelopt``, ``modelopt_fp4``, ``modelopt_mixed``).

Why: a ModelOpt export already holds its quantized tensors and decides, per layer, which layout
each Linear has. The runtime methods differ only in which ``quant_algo`` they accept; they all
bind to one component directory, read its ModelOpt config once, and hand each layer a linear
method that loads the stored tensors as they are (no BF16 materialisation, no conversion).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import ClassVar

import torch

from quantomni.config.base import QuantMethodConfig
from quantomni.formats.modelopt import (
    LayerScheme,
    ModelOptConfig,
    ModelOptConfigError,
    ModelOptTensorError,
    expected_tensors,
    optional_tensors,
    read_modelopt_config,
    validate_layer_tensors,
)
from quantomni.formats.safetensors_io import find_weight_files, iter_tensors, list_tensor_names
from quantomni.formats.sources import SafetensorsSource
from quantomni.methods.base import LinearMethodBase, placeholder

logger = logging.getLogger("quantomni")

#: set to 1 to keep NaN NVFP4 block scales (then they are a load error); read at load time
SKIP_NAN_CLAMP_ENV = "QUANTOMNI_SKIP_NVFP4_NAN_CLAMP"


def nan_clamp_enabled() -> bool:
    return os.environ.get(SKIP_NAN_CLAMP_ENV, "").strip().lower() not in ("1", "true", "yes", "on")


#: attention-quantizer scales ModelOpt may export (FP8 KV / BMM); attention runs unquantized here
ATTENTION_SCALE_SUFFIXES = (".k_scale", ".v_scale")


class ModelOptSafetensorsSource(SafetensorsSource):
    """The component's safetensors, streamed; NVFP4 E4M3 block scales holding NaN bytes
    (0x7F/0xFF, written by some ModelOpt versions) are replaced by 448 (0x7E) on the way, and
    one warning lists the count and the layers once the stream ends. Attention-quantizer scales
    (``*.k_scale`` / ``*.v_scale``) are skipped: attention runs in the model dtype."""

    def names(self):
        names = super().names()
        skipped = [n for n in names if n.endswith(ATTENTION_SCALE_SUFFIXES)]
        if skipped:
            logger.info("ModelOpt: ignoring %d attention-quantizer scale(s) (e.g. %s); attention runs in the model "
                        "dtype", len(skipped), skipped[0])
        return {n: f for n, f in names.items() if not n.endswith(ATTENTION_SCALE_SUFFIXES)}

    def iter_tensors(self):
        from quantomni.kernels.nvfp4_ref import clamp_nan_e4m3_scales

        clamp = nan_clamp_enabled()
        fixed: dict[str, int] = {}
        for name, tensor in iter_tensors(self.files):
            if name.endswith(ATTENTION_SCALE_SUFFIXES):
                continue
            if clamp and name.endswith(".weight_scale") and tensor.dtype == torch.float8_e4m3fn:
                tensor, n = clamp_nan_e4m3_scales(tensor)
                if n:
                    fixed[name.rpartition(".")[0]] = n
            yield name, tensor
        if fixed:
            logger.warning(
                "ModelOpt NVFP4: replaced %d NaN block-scale byte(s) (E4M3 0x7F/0xFF) by 448 in %d layer(s): %s "
                "(set %s=1 to disable this clamp; NaN scales are then a load error)",
                sum(fixed.values()), len(fixed), ", ".join(f"{k} ({v})" for k, v in fixed.items()), SKIP_NAN_CLAMP_ENV,
            )


@dataclasses.dataclass(frozen=True)
class ModelOptMethodConfig(QuantMethodConfig):
    """A component directory exported by NVIDIA ModelOpt.

    checkpoint_dir: the component directory (config.json with a ModelOpt quantization_config, or
        hf_quant_config.json). Set by detection (``quantomni.pipeline.prequantized``); a config
        without it (``quantization="modelopt"``) only states the expectation.
    """

    prequantized: ClassVar[bool] = True
    #: quant_algo values this runtime method serves
    accepted_algos: ClassVar[tuple[str, ...]] = ()

    checkpoint_dir: str | None = None

    def validate(self) -> None:
        if self.ignored_layers:
            raise ValueError(
                f"{self.method}.ignored_layers: a ModelOpt checkpoint decides which layers are quantized "
                f"(its 'ignore' list); got {list(self.ignored_layers)}"
            )
        parsed = None
        if self.checkpoint_dir is not None:
            if not isinstance(self.checkpoint_dir, (str, Path)):
                raise ValueError(f"{self.method}.checkpoint_dir: expected a path, got {self.checkpoint_dir!r}")
            object.__setattr__(self, "checkpoint_dir", str(self.checkpoint_dir))
            parsed = read_modelopt_config(self.checkpoint_dir)
            if parsed is None:
                raise ModelOptConfigError(
                    f"{self.method}.checkpoint_dir: {self.checkpoint_dir} has no ModelOpt quantization config "
                    f"(config.json quantization_config or hf_quant_config.json)"
                )
            if parsed.quant_algo not in self.accepted_algos:
                raise ModelOptConfigError(
                    f"{self.method}: checkpoint {self.checkpoint_dir} has quant_algo={parsed.quant_algo!r}, which "
                    f"selects runtime method {parsed.runtime_method!r}; {self.method} serves {list(self.accepted_algos)}"
                )
        object.__setattr__(self, "_parsed", parsed)
        object.__setattr__(self, "_names", None)

    # -- checkpoint facts --------------------------------------------------------------
    @property
    def modelopt(self) -> ModelOptConfig:
        if self._parsed is None:
            raise ModelOptConfigError(
                f"{self.method}: not bound to a checkpoint; ModelOpt methods are detected from the component "
                f"directory's quantization config (load the export directly, without quantization=...)"
            )
        return self._parsed

    def tensor_names(self) -> set[str]:
        """Tensor names of the component's safetensors (headers only; cached)."""
        if self._names is None:
            object.__setattr__(self, "_names", set(list_tensor_names(find_weight_files(Path(self.checkpoint_dir)))))
        return self._names

    def scheme_name(self) -> str:
        if self._parsed is None:
            return f"{self.method} (from checkpoint)"
        producer = self._parsed.producer or {}
        version = f" {producer.get('name', '')} {producer.get('version', '')}".rstrip()
        return f"{self.method} {self._parsed.quant_algo}{' (' + version.strip() + ')' if version.strip() else ''}"

    # -- pre-quantized hooks -----------------------------------------------------------
    def checkpoint_layer_reason(self, layer_name, in_features, out_features):
        cfg = self.modelopt
        if cfg.is_ignored(layer_name):
            return "stored as BF16 (ModelOpt ignore list)"
        if cfg.scheme_for(layer_name) is None:
            return "stored as BF16 (not in quantized_layers)"
        return None

    def open_tensor_source(self, component_dir):
        return ModelOptSafetensorsSource(find_weight_files(Path(component_dir)))

    def get_linear_method(self, layer_name, in_features, out_features):
        scheme = self.modelopt.scheme_for(layer_name)
        if scheme is None:
            raise ModelOptConfigError(f"{self.method}: layer {layer_name!r} is not quantized in this checkpoint")
        has_pqs = scheme.may_have_pre_quant_scale and f"{layer_name}.pre_quant_scale" in self.tensor_names()
        return linear_method_for(scheme, has_pqs)


def linear_method_for(scheme: LayerScheme, has_pre_quant_scale: bool = False) -> "ModelOptLinearMethod":
    """The linear method that loads one layer stored as ``scheme``."""
    if scheme.is_fp8:
        from quantomni.methods.modelopt_fp8 import ModelOptFp8LinearMethod

        return ModelOptFp8LinearMethod(scheme)
    if scheme.is_nvfp4:
        from quantomni.methods.modelopt_nvfp4 import ModelOptNvfp4LinearMethod

        return ModelOptNvfp4LinearMethod(scheme)
    from quantomni.methods.modelopt_int8 import ModelOptInt8SqLinearMethod

    return ModelOptInt8SqLinearMethod(scheme, has_pre_quant_scale)


class ModelOptLinearMethod(LinearMethodBase):
    """Loads one layer's stored ModelOpt tensors as they are; each tensor is checked against the
    layout when it arrives, and the whole layer by ``validate_layer_tensors`` once complete."""

    name = "modelopt"

    def __init__(self, layer_scheme: LayerScheme, has_pre_quant_scale: bool = False):
        self.layer_scheme = layer_scheme
        self.has_pre_quant_scale = has_pre_quant_scale

    def _specs(self, layer):
        specs = dict(expected_tensors(self.layer_scheme, layer.out_features, layer.in_features))
        optional = optional_tensors(self.layer_scheme, layer.out_features, layer.in_features)
        if layer.has_bias:
            specs["bias"] = optional["bias"]
        if self.has_pre_quant_scale:
            specs["pre_quant_scale"] = optional["pre_quant_scale"]
        return specs

    def expected_tensors(self, layer):
        return tuple(self._specs(layer))

    def create_weights(self, layer) -> None:
        for suffix, spec in self._specs(layer).items():
            dtype = layer.compute_dtype if suffix in ("bias", "pre_quant_scale") else spec.dtypes[0]
            layer.register_buffer(suffix, placeholder(spec.shapes[0], dtype))
        for optional in ("input_scale", "bias", "pre_quant_scale"):
            if optional not in layer._buffers:
                layer.register_buffer(optional, None)

    def load_tensor(self, layer, suffix, tensor) -> None:
        specs = self._specs(layer)
        algo = self.layer_scheme.algo
        if suffix not in specs:
            raise ModelOptTensorError(
                f"layer {layer.prefix!r} ({algo}): unexpected checkpoint tensor {suffix!r}; expected {list(specs)}"
            )
        spec = specs[suffix]
        if tensor.dtype not in spec.dtypes or tuple(tensor.shape) not in spec.shapes:
            raise ModelOptTensorError(
                f"layer {layer.prefix!r} ({algo}): tensor {suffix!r}: expected dtype "
                f"{'/'.join(str(d).replace('torch.', '') for d in spec.dtypes)}, shape "
                f"{' or '.join(str(s) for s in spec.shapes)}; got dtype {str(tensor.dtype).replace('torch.', '')}, "
                f"shape {tuple(tensor.shape)}"
            )
        layer._pending[suffix] = tensor

    def process_weights_after_loading(self, layer, device) -> None:
        tensors = {k: layer._pending.pop(k) for k in list(layer._pending)}
        validate_layer_tensors(layer.prefix, self.layer_scheme, tensors, layer.out_features, layer.in_features)
        for suffix, t in tensors.items():
            if suffix in ("bias", "pre_quant_scale"):
                t = t.to(dtype=layer.compute_dtype)
            layer._buffers[suffix] = t.to(device)
        layer.ready = True
