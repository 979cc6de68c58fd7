"""The quantization plan: per layer, which method, scheme and kernel it gets, and why.

A plan is data. ``inspect`` prints it, ``Omni`` logs it at load and returns it from ``describe``.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any


@dataclasses.dataclass(frozen=True)
class LayerRecord:
    component: str
    name: str
    in_features: int
    out_features: int
    quantized: bool
    method: str | None
    scheme: str | None
    backend: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ComponentPlan:
    component: str
    class_name: str
    adapter: str
    method: str | None
    scheme: str | None
    records: list[LayerRecord]
    #: runtime objects, not serialised: layer name -> (LinearMethodBase, kernel class)
    assignments: dict[str, tuple[object, type]] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def quantized_count(self) -> int:
        return sum(r.quantized for r in self.records)

    def kept_reasons(self) -> Counter:
        return Counter(r.reason.split(":")[0] for r in self.records if not r.quantized)

    def backends(self) -> Counter:
        return Counter(r.backend for r in self.records if r.quantized)

    def summary(self) -> str:
        total = len(self.records)
        if self.method is None:
            return f"{self.component} ({self.class_name}): not quantized, {total} linear layers in model dtype"
        kernels = ", ".join(f"{b}: {n}" for b, n in sorted(self.backends().items()))
        kept = ", ".join(f"{n} {why}" for why, n in sorted(self.kept_reasons().items())) or "none"
        return (
            f"{self.component} ({self.class_name}, adapter {self.adapter}): {self.method} [{self.scheme}] "
            f"{self.quantized_count}/{total} linear layers quantized (kernels: {kernels or '-'}); kept: {kept}"
        )

    def to_dict(self, with_layers: bool = True) -> dict[str, Any]:
        out = {
            "component": self.component,
            "class": self.class_name,
            "adapter": self.adapter,
            "method": self.method,
            "scheme": self.scheme,
            "quantized_layers": self.quantized_count,
            "linear_layers": len(self.records),
            "kernels": dict(self.backends()),
            "kept": dict(self.kept_reasons()),
        }
        if with_layers:
            out["layers"] = [r.to_dict() for r in self.records]
        return out

    def table(self) -> str:
        """Fixed-width per-layer table for ``inspect``."""
        rows = [("layer", "shape", "method", "scheme", "kernel", "reason")]
        for r in self.records:
            rows.append(
                (r.name, f"{r.out_features}x{r.in_features}", r.method or "-", r.scheme or "-", r.backend or "-", r.reason)
            )
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        lines = []
        for row in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row[:5], widths)) + "  " + row[5])
        return "\n".join(lines)
