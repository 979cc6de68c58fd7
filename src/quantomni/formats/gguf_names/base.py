"""Shared machinery of the per-architecture GGUF tensor-name maps.

A map turns a checkpoint's tensor directory into :class:`TensorEntry` items, one per tensor of the
diffusers model. An entry names its source tensor and, at most, a row range and a row transform:
quantization blocks run along the input (innermost) dimension, so every packed row is independent,
and splitting a fused projection (qkv) is a row slice of the *packed* bytes. A loader can therefore
build every diffusers tensor without dequantizing anything.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping, NamedTuple, Sequence

import torch

SWAP_HALVES = "swap_halves"  # rows [0, n/2) and [n/2, n) exchanged: BFL (shift, scale) -> diffusers (scale, shift)
TRANSFORMS = (SWAP_HALVES,)

# Prefixes community files put in front of the denoiser's own names (stripped when *all* names carry one).
COMMON_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "model.")


class GGUFNameError(ValueError):
    """Tensor names of a GGUF file do not fit the architecture or the model they are loaded into."""


class TensorEntry(NamedTuple):
    """One diffusers tensor and where it comes from.

    target: diffusers parameter name. source: tensor name in the file. rows: slice of dim 0 of the
    source (None = all rows). transform: None or SWAP_HALVES, applied along dim 0 after ``rows``.
    shape: torch shape of the target tensor.
    """

    target: str
    source: str
    rows: slice | None
    transform: str | None
    shape: tuple[int, ...]


def strip_common_prefix(names: Iterable[str]) -> tuple[str, dict[str, str]]:
    """Return (prefix, {stripped_name: original_name}) for the first prefix every name carries."""
    names = list(names)
    for prefix in COMMON_PREFIXES:
        if names and all(n.startswith(prefix) for n in names):
            return prefix, {n[len(prefix):]: n for n in names}
    return "", {n: n for n in names}


def with_params(pairs: Mapping[str, str], params: Sequence[str] = ("weight", "bias")) -> dict[str, str]:
    """Expand module renames {"img_in": "x_embedder"} into full parameter-name renames."""
    return {f"{a}.{p}": f"{b}.{p}" for a, b in pairs.items() for p in params}


class ArchNameMap:
    """Base of a per-architecture map; subclasses set the class attributes and ``convert_original``."""

    arch: str = ""
    diffusers_class: str = ""
    aliases: tuple[str, ...] = ()  # accepted values of the file's general.architecture
    diffusers_signature: tuple[str, ...] = ()  # names a diffusers-named file must contain
    original_signature: tuple[str, ...] = ()  # names an original-repo-named file must contain; () = unsupported
    ignored_original: tuple[str, ...] = ()  # regexes of original names with no diffusers counterpart

    def naming(self, tensor_names: Iterable[str]) -> str | None:
        """'diffusers', 'original' or None when the names are not this architecture's."""
        _, stripped = strip_common_prefix(tensor_names)
        if self.diffusers_signature and all(s in stripped for s in self.diffusers_signature):
            return "diffusers"
        if self.original_signature and all(s in stripped for s in self.original_signature):
            return "original"
        return None

    def recognizes(self, tensor_names: Iterable[str]) -> bool:
        return self.naming(tensor_names) is not None

    def entries(self, shapes: Mapping[str, Sequence[int]]) -> list[TensorEntry]:
        """Target entries for a file whose tensors have these torch-order ``shapes``.

        Names with no rule map to themselves, so :func:`check_against_model` reports them as extra.
        """
        naming = self.naming(shapes)
        if naming is None:
            raise GGUFNameError(f"tensor names do not look like {self.arch} ({self.diffusers_class})")
        _, stripped = strip_common_prefix(shapes)
        local = {k: tuple(int(d) for d in shapes[v]) for k, v in stripped.items()}
        out: list[TensorEntry] = []
        for name, shape in local.items():
            if naming == "original" and any(re.fullmatch(p, name) for p in self.ignored_original):
                continue
            made = self.convert_original(name, shape, local) if naming == "original" else None
            if made is None:
                made = [TensorEntry(name, name, None, None, shape)]
            out.extend(e._replace(source=stripped[e.source]) for e in made)
        seen: dict[str, str] = {}
        for e in out:
            if e.target in seen:
                raise GGUFNameError(f"{self.arch}: tensors {seen[e.target]!r} and {e.source!r} both map to {e.target!r}")
            seen[e.target] = e.source
        return out

    def convert_original(self, name: str, shape: tuple[int, ...], shapes: Mapping[str, tuple[int, ...]]):
        """Entries for one original-named tensor (prefix already stripped), or None if no rule applies."""
        return None


def rename(target: str, source: str, shape: tuple[int, ...], transform: str | None = None) -> list[TensorEntry]:
    return [TensorEntry(target, source, None, transform, shape)]


def split_rows(source: str, shape: tuple[int, ...], parts: Sequence[tuple[str, int]]) -> list[TensorEntry]:
    """Split dim 0 of ``source`` into consecutive row ranges, one per (target, n_rows)."""
    total = sum(n for _, n in parts)
    if total != shape[0] or any(n <= 0 for _, n in parts):
        raise GGUFNameError(f"cannot split {source!r} of shape {shape} into row counts {[n for _, n in parts]}")
    out, start = [], 0
    for target, n in parts:
        out.append(TensorEntry(target, source, slice(start, start + n), None, (n, *shape[1:])))
        start += n
    return out


def check_against_model(entries: Sequence[TensorEntry], expected: Mapping[str, Sequence[int]]) -> None:
    """Raise one GGUFNameError naming every missing, extra and mis-shaped tensor."""
    got = {e.target: e for e in entries}
    missing = sorted(set(expected) - set(got))
    extra = sorted(f"{t} (from {got[t].source})" if got[t].source != t else t for t in set(got) - set(expected))
    bad = sorted(
        f"{t}: file gives {list(got[t].shape)}, model expects {list(expected[t])}"
        for t in set(got) & set(expected)
        if tuple(got[t].shape) != tuple(int(d) for d in expected[t])
    )
    if missing or extra or bad:
        lines = []
        for title, items in (("missing", missing), ("extra", extra), ("mis-shaped", bad)):
            if items:
                shown = items[:20] + ([f"... and {len(items) - 20} more"] if len(items) > 20 else [])
                lines.append(f"{len(items)} {title}: " + "; ".join(shown))
        raise GGUFNameError("GGUF tensors do not match the model: " + " | ".join(lines))


def select_rows(tensor: torch.Tensor, entry: TensorEntry) -> torch.Tensor:
    """Apply ``entry.rows`` and ``entry.transform`` along dim 0 of a dense source tensor, or of its
    packed bytes [rows, bytes_per_row] when the source is 2-D."""
    if entry.rows is not None:
        tensor = tensor[entry.rows]
    if entry.transform == SWAP_HALVES:
        if tensor.shape[0] % 2:
            raise GGUFNameError(f"{entry.source!r}: cannot swap halves of {tensor.shape[0]} rows")
        first, second = tensor.chunk(2, dim=0)
        tensor = torch.cat([second, first], dim=0)
    elif entry.transform is not None:
        raise GGUFNameError(f"unknown transform {entry.transform!r}; known: {TRANSFORMS}")
    return tensor
