"""``QuantLinear``: a drop-in for ``nn.Linear`` whose tensors and math belong to a method.

Lifecycle (as in vLLM's LinearMethodBase): the method's ``create_weights`` registers placeholder
tensors; the loader feeds checkpoint tensors to ``method.load_tensor``; once a layer has all it
needs, ``process_weights_after_loading`` quantizes/packs it (so a BF16 weight lives only until its
own layer is done); ``forward`` calls ``method.apply``, which calls the chosen kernel.
"""

from __future__ import annotations

import torch
from torch import nn


class QuantLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, has_bias: bool, method, prefix: str, dtype: torch.dtype):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.has_bias = has_bias
        self.prefix = prefix
        self.compute_dtype = dtype
        self.method = method
        self.scheme = getattr(method, "scheme", None)
        self.kernel = None  # set by the planner: a LinearKernel class
        self._pending: dict[str, torch.Tensor] = {}
        self.ready = False
        method.create_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if x2.dtype != self.compute_dtype:
            x2 = x2.to(self.compute_dtype)
        out = self.method.apply(self, x2)
        return out.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        kernel = self.kernel.name if self.kernel is not None else "?"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.has_bias}, "
            f"method={self.method.name}, scheme={self.scheme.describe() if self.scheme else '-'}, kernel={kernel}"
        )

    def quantized_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers(recurse=False) if b is not None)
