"""Bridge between a GGUFCheckpoint, a name map's TensorEntry list and tensors for a model.

``packed_entry`` keeps a weight quantized (a row view of the file map, no dequantization);
``dense_entry`` dequantizes it (used for 1-D tensors, plain types, and references in tests).
"""

from __future__ import annotations

from typing import Mapping

import torch

from quantomni.formats.gguf_file import GGUFCheckpoint, GGUFFormatError
from quantomni.formats.gguf_names import ArchNameMap, GGUFNameError, TensorEntry, detect_architecture, select_rows

ORIG_SHAPE_KEY = "comfy.gguf.orig_shape."  # community converters' record of a >4-D tensor's true shape


def source_shapes(ckpt: GGUFCheckpoint) -> dict[str, tuple[int, ...]]:
    """Torch shape of every tensor, honouring a recorded original shape with the same element count."""
    out = {}
    for name, info in ckpt.tensors.items():
        shape = info.shape
        orig = ckpt.metadata.get(ORIG_SHAPE_KEY + name)
        if isinstance(orig, list) and orig and all(isinstance(d, int) and d > 0 for d in orig):
            n_orig = n_stored = 1
            for d in orig:
                n_orig *= d
            for d in shape:
                n_stored *= d
            if n_orig != n_stored:
                raise GGUFFormatError(f"{ckpt.path}: {ORIG_SHAPE_KEY}{name} = {orig} disagrees with stored shape {list(shape)}")
            shape = tuple(orig)
        out[name] = shape
    return out


def plan_gguf_load(ckpt: GGUFCheckpoint, name_map: ArchNameMap | None = None) -> tuple[ArchNameMap, list[TensorEntry]]:
    """Detect the architecture (unless given) and list the diffusers tensors the file provides."""
    name_map = name_map or detect_architecture(ckpt)
    return name_map, name_map.entries(source_shapes(ckpt))


def packed_entry(ckpt: GGUFCheckpoint, entry: TensorEntry) -> torch.Tensor:
    """The entry's bytes, still packed: uint8 [target rows, bytes_per_row], a view when no transform.

    Only for 2-D sources (rows of a 1-D tensor are not independent blocks): use dense_entry for those.
    """
    info = ckpt.tensors[entry.source]
    if len(info.shape) != 2 and (entry.rows is not None or entry.transform is not None):
        raise GGUFNameError(f"{entry.source!r} has shape {list(info.shape)}: row selection needs a 2-D tensor")
    return select_rows(ckpt.packed(entry.source), entry)


def dense_entry(
    ckpt: GGUFCheckpoint, entry: TensorEntry, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """The entry as a dense tensor of ``entry.shape``, dequantized on ``device`` (default CPU)."""
    from quantomni.kernels.gguf_dequant import dequantize_gguf

    info = ckpt.tensors[entry.source]
    packed = ckpt.packed(entry.source)
    if device is not None:
        packed = packed.to(device)
    dense = dequantize_gguf(packed, info.qtype, info.shape, dtype=torch.float32)
    dense = dense.reshape(source_shapes_one(ckpt, entry.source))
    return select_rows(dense, entry).reshape(entry.shape).to(dtype)


def source_shapes_one(ckpt: GGUFCheckpoint, name: str) -> tuple[int, ...]:
    return source_shapes(_Single(ckpt, name))[name]


class _Single:
    """Minimal checkpoint view with one tensor, so source_shapes can be reused per tensor."""

    def __init__(self, ckpt: GGUFCheckpoint, name: str):
        self.path, self.metadata, self.tensors = ckpt.path, ckpt.metadata, {name: ckpt.tensors[name]}


def state_dict_from_gguf(
    ckpt: GGUFCheckpoint, entries: list[TensorEntry], dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Mapping[str, torch.Tensor]:
    """Every entry dequantized: a plain diffusers state dict (reference path, not memory-lean)."""
    return {e.target: dense_entry(ckpt, e, dtype, device) for e in entries}
