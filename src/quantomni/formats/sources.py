"""Tensor sources: where a component's tensors stream from (safetensors files, a GGUF file, ...).

A source lists the model tensor names it provides (already mapped to the model's module names)
and yields ``(name, tensor)`` one at a time, so the loader never holds the whole checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from quantomni.formats.safetensors_io import iter_tensors, list_tensor_names


class TensorSource:
    description: str = "?"

    def names(self) -> set[str] | dict[str, object]:
        raise NotImplementedError

    def iter_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        raise NotImplementedError


class SafetensorsSource(TensorSource):
    def __init__(self, files: list[Path]):
        self.files = list(files)
        self.description = str(self.files[0].parent) if self.files else "(no files)"

    def names(self):
        return list_tensor_names(self.files)

    def iter_tensors(self):
        return iter_tensors(self.files)
