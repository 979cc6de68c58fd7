"""Bridge between a GGUFCheckpoint, a name map's TensorEntry list and tensors for a model.

Loader recipe::

    ck = read_gguf(path)
    name_map, entries = plan_gguf_load(ck)            # detects the architecture
    check_against_model(entries, {n: p.shape for n, p in model.state_dict().items()})
    check_supported_qtypes(ck, entries)
    for e in entries:
        qtype = ck.tensors[e.source].qtype
        if len(e.shape) == 2 and qtype not in (F32, F16, BF16):
            keep(e.target, packed_entry(ck, e), qtype, e.shape)   # uint8 rows, dequantize_gguf per use
        else:
            load(e.target, dense_entry(ck, e, dtype))             # 1-D, >2-D and float tensors

``packed_entry`` keeps a weight quantized (a row view of the file map, no dequantization);
``dense_entry`` dequantizes it (used for 1-D tensors, plain types, and references in tests).
"""

from __future__ import annotations

import math
from typing import Mapping

import torch

from quantomni.formats.gguf_file import GGUFCheckpoint, GGUFFormatError
from quantomni.formats.gguf_names import ArchNameMap, GGUFNameError, TensorEntry, detect_architecture, select_rows

ORIG_SHAPE_KEY = "comfy.gguf.orig_shape."  # community converters' record of a >4-D tensor's true shape


def source_shape(ckpt: GGUFCheckpoint, name: str) -> tuple[int, ...]:
    """Torch shape of tensor ``name``, honouring a recorded original shape with the same element count."""
    shape = ckpt.tensors[name].shape
    orig = ckpt.metadata.get(ORIG_SHAPE_KEY + name)
    if orig is None:
        return shape
    if not (isinstance(orig, list) and orig and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in orig)):
        raise GGUFFormatError(f"{ckpt.path}: {ORIG_SHAPE_KEY}{name} = {orig!r} is not a list of positive ints")
    if math.prod(orig) != math.prod(shape):
        raise GGUFFormatError(f"{ckpt.path}: {ORIG_SHAPE_KEY}{name} = {orig} disagrees with stored shape {list(shape)}")
    return tuple(orig)


def source_shapes(ckpt: GGUFCheckpoint) -> dict[str, tuple[int, ...]]:
    """``source_shape`` of every tensor in the file."""
    return {name: source_shape(ckpt, name) for name in ckpt.tensors}


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
    if len(info.shape) == 2 and source_shape(ckpt, entry.source) == info.shape:
        # rows are independent: select them while packed and expand only what the entry needs
        packed = packed_entry(ckpt, entry)
        packed = packed.to(device) if device is not None else packed
        return dequantize_gguf(packed, info.qtype, entry.shape, dtype=dtype)
    packed = ckpt.packed(entry.source)
    packed = packed.to(device) if device is not None else packed
    dense = dequantize_gguf(packed, info.qtype, info.shape, dtype=torch.float32)
    dense = dense.reshape(source_shape(ckpt, entry.source))
    return select_rows(dense, entry).reshape(entry.shape).to(dtype)


def state_dict_from_gguf(
    ckpt: GGUFCheckpoint, entries: list[TensorEntry], dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Mapping[str, torch.Tensor]:
    """Every entry dequantized: a plain diffusers state dict (reference path, not memory-lean)."""
    return {e.target: dense_entry(ckpt, e, dtype, device) for e in entries}


def check_supported_qtypes(ckpt: GGUFCheckpoint, entries: list[TensorEntry]) -> None:
    """One error naming every tensor whose quantization type cannot be dequantized here."""
    from quantomni.kernels.gguf_dequant import GGUF_QTYPE_INFO, supported_qtypes

    bad = sorted({f"{e.source} ({ckpt.tensors[e.source].qtype.name})" for e in entries
                  if ckpt.tensors[e.source].qtype not in GGUF_QTYPE_INFO})
    if bad:
        shown = "; ".join(bad[:20]) + (f"; ... and {len(bad) - 20} more" if len(bad) > 20 else "")
        raise GGUFFormatError(
            f"{ckpt.path}: {len(bad)} tensors use unsupported quantization types: {shown}. "
            f"Supported: {', '.join(q.name for q in supported_qtypes())}"
        )
