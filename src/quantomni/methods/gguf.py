"""GGUF: a denoiser that arrives already quantized in a GGUF file (community FLUX / Qwen-Image / ... files).

The file decides everything: which layers are quantized and with which ggml type. Quantized Linear
weights stay packed on the device (resident size ~ file size) and are dequantized per call by the
kernel; F32/F16/BF16 weights, 1-D tensors and non-Linear tensors load as plain tensors. Every other
component of the pipeline comes from the base model directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from pathlib import Path

import torch

from quantomni.config.base import QuantMethodConfig
from quantomni.errors import CheckpointError
from quantomni.methods.base import LinearMethodBase, placeholder, set_buffer
from quantomni.schemes import GgufScheme


@dataclasses.dataclass(frozen=True)
class _GgufFileState:
    """What one parse of the file yields (cached on the config, never serialised)."""

    ckpt: object  # GGUFCheckpoint
    name_map: object  # ArchNameMap
    naming: str  # "diffusers" | "original"
    entries: tuple  # TensorEntry, one per model tensor
    by_target: dict


@dataclasses.dataclass(frozen=True)
class GgufConfig(QuantMethodConfig):
    """A GGUF file that supplies the denoiser.

    path: the .gguf file. Its architecture is read from ``general.architecture`` or recognised from
    its tensor names (FLUX.1 in BFL or diffusers naming, Qwen-Image, SD3, FLUX.2, Z-Image, Wan).
    """

    method = "gguf"
    prequantized = True
    single_component = True

    path: str = ""

    def validate(self) -> None:
        if isinstance(self.path, os.PathLike):
            object.__setattr__(self, "path", os.fspath(self.path))
        if not isinstance(self.path, str) or not self.path:
            raise ValueError(f"gguf.path: expected the path of a .gguf file, got {self.path!r}")
        if not Path(self.path).is_file():
            raise ValueError(f"gguf.path: GGUF file {self.path!r} does not exist or is not a file")
        if self.ignored_layers:
            raise ValueError(
                f"gguf.ignored_layers: got {list(self.ignored_layers)}; the GGUF file decides which layers are "
                f"quantized, so ignored_layers is not supported (allowed: [])"
            )

    # -- the file, parsed once -------------------------------------------------------------
    def file_state(self) -> _GgufFileState:
        """Parse the header, detect the architecture and map tensor names (cached; no tensor data read)."""
        state = self.__dict__.get("_file_state")
        if state is None:
            from quantomni.formats.gguf_file import read_gguf
            from quantomni.formats.gguf_tensors import check_supported_qtypes, plan_gguf_load

            ckpt = read_gguf(self.path)
            name_map, entries = plan_gguf_load(ckpt)
            check_supported_qtypes(ckpt, entries)
            state = _GgufFileState(ckpt, name_map, name_map.naming(ckpt.tensors), tuple(entries),
                                   {e.target: e for e in entries})
            object.__setattr__(self, "_file_state", state)
        return state

    def _qtype(self, target: str):
        state = self.file_state()
        entry = state.by_target.get(target)
        return None if entry is None else state.ckpt.tensors[entry.source].qtype

    def _is_packed(self, target: str) -> bool:
        from quantomni.kernels.gguf_dequant import is_block_type

        state = self.file_state()
        entry = state.by_target.get(target)
        return entry is not None and len(entry.shape) == 2 and is_block_type(state.ckpt.tensors[entry.source].qtype)

    def weight_qtypes(self) -> Counter:
        """ggml type name -> number of 2-D weights stored in it."""
        state = self.file_state()
        return Counter(state.ckpt.tensors[e.source].qtype.name for e in state.entries
                       if len(e.shape) == 2 and e.target.endswith(".weight"))

    def summary(self) -> dict:
        """Architecture, naming and type counts, for ``inspect`` and ``describe`` (reads no tensor data)."""
        state = self.file_state()
        return {
            "path": self.path,
            "architecture": state.name_map.arch,
            "diffusers_class": state.name_map.diffusers_class,
            "naming": state.naming,
            "file_bytes": state.ckpt.file_size,
            "tensors": len(state.ckpt.tensors),
            "weight_qtypes": dict(sorted(self.weight_qtypes().items())),
        }

    # -- QuantMethodConfig hooks -------------------------------------------------------------
    def scheme_name(self) -> str:
        counts = ", ".join(f"{q}: {n}" for q, n in sorted(self.weight_qtypes().items()))
        return f"gguf {self.file_state().name_map.arch} ({counts})"

    def checkpoint_layer_reason(self, layer_name: str, in_features: int, out_features: int) -> str | None:
        target = f"{layer_name}.weight"
        if self._is_packed(target):
            return None
        qtype = self._qtype(target)
        if qtype is None:
            return "no weight in the GGUF file"
        return f"stored as {qtype.name} in the GGUF file"

    def get_linear_method(self, layer_name: str, in_features: int, out_features: int):
        qtype = self._qtype(f"{layer_name}.weight")
        if qtype is None:
            raise CheckpointError(f"{self.path}: no weight for layer {layer_name!r} in the GGUF file")
        return GgufLinearMethod(GgufScheme(qtype.name))

    def open_tensor_source(self, component_dir):
        """Check the file against the base model's denoiser (architecture, then every tensor's name and
        shape) before anything is loaded, and return the source the loader streams from."""
        from quantomni.formats.gguf_names import GGUFNameError, check_against_model
        from quantomni.formats.gguf_source import GgufTensorSource

        state = self.file_state()
        component_dir = Path(component_dir)
        class_name = component_class_name(component_dir)
        if class_name != state.name_map.diffusers_class:
            raise CheckpointError(
                f"{self.path}: the GGUF file holds a {state.name_map.arch} denoiser ({state.name_map.diffusers_class}) "
                f"but the base model's {component_dir.name} is {class_name} ({component_dir}); use a base model "
                f"directory of the same architecture"
            )
        model = _empty_model(class_name, component_dir)
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        try:
            check_against_model(state.entries, shapes)
        except GGUFNameError as exc:
            raise CheckpointError(f"{self.path} ({state.name_map.arch}, {state.naming} naming) vs {class_name}: {exc}") from exc
        linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        packed = {f"{n}.weight" for n in linears if self._is_packed(f"{n}.weight")}
        return GgufTensorSource(state.ckpt, list(state.entries), packed)


def component_class_name(component_dir: Path) -> str:
    """``_class_name`` of a diffusers component's config.json."""
    path = Path(component_dir) / "config.json"
    try:
        name = json.loads(path.read_text()).get("_class_name")
    except (OSError, json.JSONDecodeError, AttributeError) as exc:
        raise CheckpointError(f"cannot read the denoiser config {path}: {exc}") from exc
    if not isinstance(name, str):
        raise CheckpointError(f"{path}: no _class_name; is {component_dir} a diffusers model directory?")
    return name


def _empty_model(class_name: str, component_dir: Path):
    import diffusers

    from quantomni.pipeline.loader import build_empty_model

    cls = getattr(diffusers, class_name, None)
    if cls is None:
        raise CheckpointError(f"{component_dir}: class {class_name!r} is not in the installed diffusers ({diffusers.__version__})")
    return build_empty_model(cls, component_dir)


class GgufLinearMethod(LinearMethodBase):
    """One GGUF-quantized Linear: packed uint8 weight [out_features, bytes_per_row], bias in compute dtype."""

    name = "gguf"
    format = "gguf"

    def __init__(self, scheme: GgufScheme):
        from quantomni.kernels.gguf_dequant import qtype_id

        self.scheme = scheme
        self.qtype = qtype_id(scheme.qtype_name)

    def bytes_per_row(self, layer) -> int:
        from quantomni.kernels.gguf_dequant import packed_row_bytes

        try:
            return packed_row_bytes(self.qtype, layer.in_features)
        except ValueError as exc:
            raise CheckpointError(f"layer {layer.prefix!r}: {exc}") from exc

    def create_weights(self, layer) -> None:
        layer.register_buffer("weight", placeholder((layer.out_features, self.bytes_per_row(layer)), torch.uint8))
        layer.register_buffer("bias", placeholder((layer.out_features,), layer.compute_dtype) if layer.has_bias else None)

    def load_tensor(self, layer, suffix: str, tensor: torch.Tensor) -> None:
        if suffix != "weight":
            return super().load_tensor(layer, suffix, tensor)
        expected = (layer.out_features, self.bytes_per_row(layer))
        if tensor.dtype != torch.uint8 or tuple(tensor.shape) != expected:
            raise CheckpointError(
                f"layer {layer.prefix!r}: packed {self.scheme.qtype_name} weight must be uint8 {list(expected)} "
                f"({layer.out_features} rows of {layer.in_features} weights), got {tensor.dtype} {list(tensor.shape)}"
            )
        layer._pending["weight"] = tensor

    def process_weights_after_loading(self, layer, device) -> None:
        # One copy into memory the layer owns (on CPU too): nothing keeps the file map alive afterwards.
        packed = layer._pending.pop("weight").to(device=device, copy=True).contiguous()
        set_buffer(layer, "weight", packed)
        if layer.has_bias:
            bias = layer._pending.pop("bias").to(device=device, dtype=layer.compute_dtype)
            if not torch.isfinite(bias).all():
                raise CheckpointError(f"layer {layer.prefix!r}: bias has NaN/Inf values")
            set_buffer(layer, "bias", bias)
        layer.ready = True
