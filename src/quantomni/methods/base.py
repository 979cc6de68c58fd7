"""Linear method lifecycle: create_weights -> load_tensor -> process_weights_after_loading -> apply."""

from __future__ import annotations

import torch


class LinearMethodBase:
    """One instance per layer (it may carry per-layer data such as a static input scale).

    Subclasses set ``name``, ``format`` (the kernel format key) and ``scheme``, and implement
    ``create_weights`` and ``process_weights_after_loading``; ``apply`` delegates to the kernel.
    """

    name: str = ""
    format: str = ""
    scheme = None

    def create_weights(self, layer) -> None:
        raise NotImplementedError

    def expected_tensors(self, layer) -> tuple[str, ...]:
        """Checkpoint tensor suffixes this layer needs (e.g. ``("weight", "bias")``)."""
        return ("weight", "bias") if layer.has_bias else ("weight",)

    def load_tensor(self, layer, suffix: str, tensor: torch.Tensor) -> None:
        expected = self.expected_tensors(layer)
        if suffix not in expected:
            raise ValueError(f"layer {layer.prefix!r}: unexpected checkpoint tensor {suffix!r}; expected {list(expected)}")
        if suffix == "weight" and tuple(tensor.shape) != (layer.out_features, layer.in_features):
            raise ValueError(
                f"layer {layer.prefix!r}: checkpoint weight has shape {tuple(tensor.shape)}, model expects "
                f"{(layer.out_features, layer.in_features)}"
            )
        if suffix == "bias" and tuple(tensor.shape) != (layer.out_features,):
            raise ValueError(
                f"layer {layer.prefix!r}: checkpoint bias has shape {tuple(tensor.shape)}, model expects ({layer.out_features},)"
            )
        layer._pending[suffix] = tensor

    def is_complete(self, layer) -> bool:
        return all(s in layer._pending for s in self.expected_tensors(layer))

    def process_weights_after_loading(self, layer, device: torch.device) -> None:
        raise NotImplementedError

    def apply(self, layer, x: torch.Tensor) -> torch.Tensor:
        return layer.kernel.apply(layer, x)


def set_buffer(layer, name: str, value: torch.Tensor | None) -> None:
    """Replace a (meta) placeholder buffer with its real tensor."""
    layer._buffers[name] = value


def placeholder(shape, dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")
