"""Linear kernel backends and the per-format selection logic.

Each backend is a small class with ``is_supported(device)`` and ``can_implement(spec)``, both
returning ``(ok, reason)``. ``select_linear_kernel`` walks a per-format priority list ("auto") or
checks the one backend the user named; when nothing fits it raises with every reason.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import ClassVar

import torch


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """What a kernel must implement for one layer.

    format: "fp8" | "int8" | ... ; scheme: the method's frozen scheme object (or None);
    in_features/out_features: K/N; dtype: activation/output dtype; device: where it runs.
    """

    format: str
    in_features: int
    out_features: int
    dtype: torch.dtype
    device: torch.device
    scheme: object = None


class KernelSelectionError(RuntimeError):
    pass


class LinearKernel:
    """Base: subclasses set ``name``/``format`` and implement ``apply``."""

    name: ClassVar[str] = ""
    format: ClassVar[str] = ""
    #: what a user may type for this backend besides ``name`` (e.g. "cutlass" for scaled_mm)
    aliases: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def is_supported(cls, device: torch.device) -> tuple[bool, str]:
        return True, "runs on any device"

    @classmethod
    def can_implement(cls, spec: KernelSpec) -> tuple[bool, str]:
        return True, "any shape"

    @classmethod
    def prepare(cls) -> None:
        """One-time set-up once the kernel is chosen for a layer, outside any torch.compile trace
        (e.g. registering custom ops). Must be idempotent."""

    @classmethod
    def process_loaded(cls, layer) -> None:
        """Once a layer's tensors are loaded and processed by its method: re-lay them out for this
        kernel if it needs to (default: use them as they are). Runs outside any trace."""

    @staticmethod
    def apply(layer, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def cuda_capability(device: torch.device) -> tuple[int, int] | None:
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_capability(device)


#: format -> backends in priority order ("module:Class"); the torch reference is always last.
_KERNELS: dict[str, list[str]] = {
    "fp8": [
        "quantomni.kernels.triton_backends:FusedQuantScaledMmFp8Kernel",
        "quantomni.kernels.fp8_scaled_mm:ScaledMmFp8Kernel",
        "quantomni.kernels.fp8_torch:TorchFp8Kernel",
    ],
    "int8": [
        "quantomni.kernels.triton_backends:TritonInt8Kernel",
        "quantomni.kernels.int8_int_mm:IntMmInt8Kernel",
        "quantomni.kernels.int8_torch:TorchInt8Kernel",
    ],
    "gguf": [
        "quantomni.kernels.gguf_triton:TritonGgufKernel",
        "quantomni.kernels.gguf_torch:TorchGgufKernel",
    ],
    "nvfp4": [
        "quantomni.kernels.nvfp4_native:NativeFp4Kernel",
        "quantomni.kernels.nvfp4_cuda:CudaNvfp4Kernel",
        "quantomni.kernels.nvfp4_triton:TritonNvfp4Kernel",
        "quantomni.kernels.nvfp4_torch:TorchNvfp4Kernel",
    ],
    "int8_sq": ["quantomni.kernels.int8_sq:IntMmInt8SqKernel", "quantomni.kernels.int8_sq:TorchInt8SqKernel"],
}


def kernels_for(fmt: str) -> list[type[LinearKernel]]:
    if fmt not in _KERNELS:
        raise KernelSelectionError(f"no kernels registered for format {fmt!r}; formats: {sorted(_KERNELS)}")
    out = []
    for target in _KERNELS[fmt]:
        module_name, _, attr = target.partition(":")
        out.append(getattr(importlib.import_module(module_name), attr))
    return out


def backend_names(fmt: str) -> list[str]:
    return [k.name for k in kernels_for(fmt)]


def _find(fmt: str, requested: str) -> type[LinearKernel]:
    for k in kernels_for(fmt):
        if requested == k.name or requested in k.aliases:
            return k
    raise KernelSelectionError(
        f"linear backend {requested!r} does not implement format {fmt!r}; backends for {fmt}: {backend_names(fmt)}"
    )


def select_linear_kernel(spec: KernelSpec, requested: str = "auto") -> tuple[type[LinearKernel], str]:
    """Pick the kernel for one layer. Returns (kernel class, reason it was chosen)."""
    if requested and requested != "auto":
        kernel = _find(spec.format, requested)
        ok, why = kernel.is_supported(spec.device)
        if not ok:
            raise KernelSelectionError(f"linear backend {kernel.name!r} cannot run on {spec.device}: {why}")
        ok, why = kernel.can_implement(spec)
        if not ok:
            raise KernelSelectionError(
                f"linear backend {kernel.name!r} cannot implement a {spec.format} layer "
                f"[{spec.out_features}x{spec.in_features}]: {why}"
            )
        kernel.prepare()
        return kernel, f"requested by linear_backend={requested!r}"
    reasons = []
    for kernel in kernels_for(spec.format):
        ok, why = kernel.is_supported(spec.device)
        if ok:
            ok, why = kernel.can_implement(spec)
        if ok:
            kernel.prepare()
            skipped = "; ".join(reasons)
            return kernel, "auto: best available" + (f" (skipped {skipped})" if skipped else "")
        reasons.append(f"{kernel.name}: {why}")
    raise KernelSelectionError(
        f"Failed to find a {spec.format} kernel for a [{spec.out_features}x{spec.in_features}] layer on "
        f"{spec.device}. Reasons: " + "; ".join(reasons)
    )
