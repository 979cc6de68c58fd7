"""Parse ``linear_backend``: "auto", one backend name, or per format ("fp8=scaled_mm,int8=torch" / dict)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType

from quantomni.kernels.base import backend_names, kernels_for


@dataclasses.dataclass(frozen=True)
class BackendRequest:
    default: str = "auto"
    per_format: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "per_format", MappingProxyType(dict(self.per_format)))

    def for_format(self, fmt: str) -> str:
        return self.per_format.get(fmt, self.default)

    @classmethod
    def parse(cls, value) -> "BackendRequest":
        if value is None or value == "":
            return cls()
        if isinstance(value, BackendRequest):
            return value
        if isinstance(value, Mapping):
            return cls("auto", _check_pairs(dict(value)))
        if not isinstance(value, str):
            raise ValueError(f"linear_backend: expected a string or a mapping, got {type(value).__name__}")
        if "=" in value:
            pairs = {}
            for part in value.split(","):
                fmt, sep, name = part.strip().partition("=")
                if not sep or not fmt or not name:
                    raise ValueError(f"linear_backend: cannot parse {part!r}; use FORMAT=BACKEND[,FORMAT=BACKEND]")
                pairs[fmt.strip()] = name.strip()
            return cls("auto", _check_pairs(pairs))
        name = value.strip()
        if name != "auto" and not any(_has(fmt, name) for fmt in _known_formats()):
            raise ValueError(f"linear_backend: unknown backend {name!r}; known: {_all_names()}")
        return cls(name)


def _known_formats():
    from quantomni.kernels.base import _KERNELS

    return list(_KERNELS)


def _has(fmt: str, name: str) -> bool:
    return any(name == k.name or name in k.aliases for k in kernels_for(fmt))


def _all_names() -> list[str]:
    return sorted({"auto", *(n for f in _known_formats() for n in backend_names(f))})


def _check_pairs(pairs: dict) -> dict:
    for fmt, name in pairs.items():
        if fmt not in _known_formats():
            raise ValueError(f"linear_backend: unknown format {fmt!r}; formats: {sorted(_known_formats())}")
        if name != "auto" and not _has(fmt, name):
            raise ValueError(f"linear_backend: backend {name!r} does not implement {fmt}; choose from {backend_names(fmt)}")
    return pairs
