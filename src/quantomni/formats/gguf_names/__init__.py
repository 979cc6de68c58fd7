"""Per-architecture GGUF tensor-name maps and the registry that picks one for a file.

No generic fallback: a file is loaded only through the map of a known architecture.
"""

from __future__ import annotations

from typing import Iterable

from .base import (
    SWAP_HALVES,
    ArchNameMap,
    GGUFNameError,
    TensorEntry,
    check_against_model,
    select_rows,
    strip_common_prefix,
)
from .flux import FluxNameMap
from .flux2 import Flux2NameMap
from .qwen_image import QwenImageNameMap
from .sd3 import SD3NameMap
from .wan import WanNameMap
from .z_image import ZImageNameMap

NAME_MAPS: dict[str, ArchNameMap] = {
    m.arch: m for m in (FluxNameMap(), QwenImageNameMap(), SD3NameMap(), Flux2NameMap(), ZImageNameMap(), WanNameMap())
}


def supported_architectures() -> list[str]:
    return list(NAME_MAPS)


def get_name_map(arch: str) -> ArchNameMap:
    try:
        return NAME_MAPS[arch]
    except KeyError:
        raise GGUFNameError(f"unknown GGUF architecture {arch!r}; supported: {supported_architectures()}") from None


def detect_architecture_from(names: Iterable[str], metadata_arch: str | None = None, *, source: str = "GGUF file") -> ArchNameMap:
    """Pick the map for a file: its general.architecture first, then tensor-name signatures."""
    names = list(names)
    sample = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    if metadata_arch:
        label = metadata_arch.strip().lower()
        candidates = [m for m in NAME_MAPS.values() if label in m.aliases]
        if candidates:
            for m in candidates:
                if m.recognizes(names):
                    return m
            raise GGUFNameError(
                f"{source}: general.architecture is {metadata_arch!r} but the tensor names ({sample}) do not match "
                f"{[m.arch for m in candidates]} naming (diffusers or original)"
            )
    found = [m for m in NAME_MAPS.values() if m.recognizes(names)]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise GGUFNameError(f"{source}: tensor names match several architectures: {[m.arch for m in found]}")
    meta = f"general.architecture {metadata_arch!r} is not one of them and " if metadata_arch else ""
    raise GGUFNameError(
        f"{source}: unknown architecture; {meta}the tensor names ({sample}) match none of the supported "
        f"architectures: {supported_architectures()}"
    )


def detect_architecture(checkpoint) -> ArchNameMap:
    """``detect_architecture_from`` for a GGUFCheckpoint."""
    return detect_architecture_from(checkpoint.tensors, checkpoint.architecture, source=checkpoint.path)


__all__ = [
    "NAME_MAPS", "SWAP_HALVES", "ArchNameMap", "GGUFNameError", "TensorEntry", "check_against_model",
    "detect_architecture", "detect_architecture_from", "get_name_map", "select_rows", "strip_common_prefix",
    "supported_architectures",
]
