"""``GgufTensorSource``: a GGUF file's tensors under the diffusers model's names.

Quantized weights of Linear layers are yielded still packed (uint8 [out_features, bytes_per_row],
a row view of the file map: no dequantization and no copy; the linear method copies them once to
their device). Everything else (1-D tensors, F32/F16/BF16 tensors, anything that is not a Linear
weight) is yielded dense, in its stored float dtype when it has one and float32 otherwise, as a
tensor that owns its memory so nothing keeps the file map alive after loading.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from quantomni.formats.gguf_file import GGUFCheckpoint
from quantomni.formats.gguf_names import TensorEntry
from quantomni.formats.gguf_tensors import dense_entry, packed_entry
from quantomni.formats.sources import TensorSource

_STORED_FLOAT = {0: torch.float32, 1: torch.float16, 30: torch.bfloat16}  # ggml F32, F16, BF16


class GgufTensorSource(TensorSource):
    """ckpt: the parsed file; entries: its tensors mapped to model names (one per model tensor);
    packed_targets: target names yielded packed (quantized Linear weights)."""

    def __init__(self, ckpt: GGUFCheckpoint, entries: list[TensorEntry], packed_targets: set[str] | frozenset[str]):
        self.ckpt = ckpt
        self.entries = list(entries)
        self.packed_targets = frozenset(packed_targets)
        self.description = ckpt.path

    def names(self) -> dict[str, TensorEntry]:
        return {e.target: e for e in self.entries}

    def qtype(self, target: str):
        """gguf.GGMLQuantizationType of the file tensor a model tensor comes from."""
        return self.ckpt.tensors[self.names()[target].source].qtype

    def iter_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        try:
            for e in self.entries:
                if e.target in self.packed_targets:
                    yield e.target, packed_entry(self.ckpt, e)
                    continue
                qtype = self.ckpt.tensors[e.source].qtype
                dense = dense_entry(self.ckpt, e, dtype=_STORED_FLOAT.get(int(qtype), torch.float32))
                yield e.target, self._owned(dense)
        finally:
            # Every yielded view has been copied by its consumer by now (or is still referenced by one,
            # which keeps its pages alive): drop our reference so the file map can be unmapped.
            self.ckpt._base = None

    def _owned(self, t: torch.Tensor) -> torch.Tensor:
        """``t``, copied if it still shares memory with the file map (a plain type's view)."""
        base = self.ckpt._file_bytes().untyped_storage()
        if t.untyped_storage().data_ptr() == base.data_ptr():
            return t.clone()
        return t
