"""What to compare: engine specs, baseline/candidate cases, prompts and seeds, parsed from flags or files.

A *case* is one baseline engine against one candidate engine, run on the same prompts, seeds,
steps and resolution.  Candidates come from ``--candidates`` tokens:

- ``bf16`` / ``none``: the unquantized model (useful as a sanity case: PSNR should be ~inf);
- a quantization method name (``fp8``, ``int8``, ...; the valid set comes from the method
  registry, see :func:`default_known_methods`);
- ``gguf`` (needs ``--gguf-model PATH``), ``gguf:PATH`` or a path ending in ``.gguf``;
- an existing model directory: a pre-quantized checkpoint compared against the ``--model`` base
  (method names win over same-named directories: write ``./fp8`` for a directory called ``fp8``);
- any of the above with ``+int8attn`` (``fp8+int8attn``, ``bf16+int8attn``): the same engine with
  quantized attention (``attention="int8"``, docs/attention.md).

or from a JSON cases file: a list of ``{"model": DIR, "method": NAME}`` (that model quantized with
that method against the same model unquantized; optional ``"gguf_model"``, ``"name"``) or
``{"baseline": DIR, "quantized": DIR}`` (optional ``"name"``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable

from quantomni.compare.errors import CompareInputError

UNQUANTIZED_TOKENS = frozenset({"bf16", "none"})
#: candidate suffix selecting quantized attention (attention="int8")
ATTENTION_SUFFIX = "+int8attn"


def default_known_methods() -> frozenset[str]:
    """Method names accepted as candidates: the method registry's."""
    from quantomni.methods.registry import registered_methods

    return frozenset(str(name) for name in registered_methods())


@dataclass(frozen=True)
class EngineSpec:
    """How to build one engine: ``engine_factory(spec)`` turns this into an ``Omni``-like object."""

    model: str
    quantization: str | None = None
    gguf_model: str | None = None
    label: str = ""
    attention: str = "sdpa"

    def key(self) -> tuple:
        """Identity used to load each distinct engine once (labels do not matter)."""
        return (self.model, self.quantization, self.gguf_model, self.attention)

    def to_dict(self) -> dict:
        return {"label": self.label, "model": self.model, "quantization": self.quantization,
                "gguf_model": self.gguf_model, "attention": self.attention}


@dataclass(frozen=True)
class Case:
    """One comparison: ``candidate`` images are scored against ``baseline`` images."""

    name: str
    baseline: EngineSpec
    candidate: EngineSpec


def distinct_engines(cases: Iterable[Case]) -> list[EngineSpec]:
    """Distinct engines in first-use order, each baseline before its candidates."""
    seen: dict[tuple, EngineSpec] = {}
    for case in cases:
        for spec in (case.baseline, case.candidate):
            seen.setdefault(spec.key(), spec)
    return list(seen.values())


def check_model_path(model: str, what: str = "--model") -> str:
    """An existing local model directory or file; anything else is a clear error (no hub lookups)."""
    if not isinstance(model, str) or not model.strip():
        raise CompareInputError(f"{what}: expected a model directory, got {model!r}")
    if os.path.exists(model):
        return model
    raise CompareInputError(f"{what}: model path {model!r} does not exist")


def _gguf_spec(model: str, path: str | None, origin: str) -> EngineSpec:
    if not path:
        raise CompareInputError(f"{origin}: candidate 'gguf' needs a GGUF file: pass --gguf-model PATH or gguf:PATH")
    if not os.path.isfile(path):
        raise CompareInputError(f"{origin}: GGUF file {path!r} does not exist")
    return EngineSpec(model=model, quantization="gguf", gguf_model=path, label=f"gguf:{Path(path).name}")


def parse_candidate(token: str, model: str, gguf_model: str | None = None,
                    known_methods: Iterable[str] | None = None, origin: str = "--candidates") -> EngineSpec:
    """Turn one candidate token into an :class:`EngineSpec` (see module docstring for the forms)."""
    methods = frozenset(default_known_methods() if known_methods is None else known_methods)
    raw = token.strip()
    if raw.lower().endswith(ATTENTION_SUFFIX):
        base = raw[: -len(ATTENTION_SUFFIX)]
        if not base.strip():
            raise CompareInputError(f"{origin}: {raw!r} names no engine before {ATTENTION_SUFFIX}")
        spec = parse_candidate(base, model, gguf_model, methods, origin)
        return replace(spec, attention="int8", label=f"{spec.label}{ATTENTION_SUFFIX}")
    low = raw.lower()
    if not raw:
        raise CompareInputError(f"{origin}: empty candidate name")
    if low in UNQUANTIZED_TOKENS:
        return EngineSpec(model=model, quantization=None, label="bf16")
    if low == "gguf":
        return _gguf_spec(model, gguf_model, origin)
    if low.startswith(("gguf:", "gguf=")):
        return _gguf_spec(model, raw[5:], origin)
    if low in methods:
        return EngineSpec(model=model, quantization=low, label=low)
    if raw.endswith(".gguf"):
        return _gguf_spec(model, raw, origin)
    if os.path.isdir(raw):
        return EngineSpec(model=raw, quantization=None, label=Path(raw).name or raw)
    allowed = ", ".join(sorted(UNQUANTIZED_TOKENS | methods | {"gguf:PATH"})) + f" (each optionally with {ATTENTION_SUFFIX})"
    raise CompareInputError(
        f"{origin}: unknown candidate {raw!r}: expected one of {allowed}, a .gguf file or an existing "
        f"model directory (pre-quantized checkpoint)")


def _unique_name(name: str, taken: set[str]) -> str:
    out, n = name, 2
    while out in taken:
        out, n = f"{name}#{n}", n + 1
    taken.add(out)
    return out


def build_cases(model: str, candidates: Iterable[str], baseline: str = "bf16", gguf_model: str | None = None,
                known_methods: Iterable[str] | None = None) -> list[Case]:
    """Cases from ``--model/--baseline/--candidates``: every candidate against the one baseline."""
    check_model_path(model)
    methods = frozenset(default_known_methods() if known_methods is None else known_methods)
    base = parse_candidate(baseline, model, gguf_model, methods, origin="--baseline")
    tokens = [t for t in candidates]
    if not tokens:
        raise CompareInputError("--candidates: no candidates given (e.g. --candidates fp8,int8)")
    taken: set[str] = {base.label}
    cases = []
    for token in tokens:
        cand = parse_candidate(token, model, gguf_model, methods)
        cases.append(Case(name=_unique_name(cand.label, taken), baseline=base, candidate=cand))
    return cases


def split_list(text: str | None) -> list[str]:
    """``"fp8, int8,"`` -> ``["fp8", "int8"]``."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def load_cases_file(path: str, gguf_model: str | None = None,
                    known_methods: Iterable[str] | None = None) -> list[Case]:
    """Parse a JSON cases file (list of ``{"model","method"}`` or ``{"baseline","quantized"}``)."""
    methods = frozenset(default_known_methods() if known_methods is None else known_methods)
    if not os.path.isfile(path):
        raise CompareInputError(f"--cases: file {path!r} does not exist")
    try:
        items = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CompareInputError(f"--cases: {path!r} is not valid JSON: {exc}") from exc
    if not isinstance(items, list) or not items:
        raise CompareInputError(f"--cases: {path!r} must hold a non-empty JSON list of cases")
    cases: list[Case] = []
    taken: set[str] = set()
    for i, item in enumerate(items):
        where = f"--cases {path}[{i}]"
        if not isinstance(item, dict):
            raise CompareInputError(f"{where}: expected an object, got {type(item).__name__}")
        keys = set(item)
        if {"model", "method"} <= keys:
            extra = keys - {"model", "method", "gguf_model", "name"}
            model = check_model_path(str(item["model"]), f"{where}.model")
            base = EngineSpec(model=model, quantization=None, label="bf16")
            cand = parse_candidate(str(item["method"]), model, item.get("gguf_model", gguf_model), methods,
                                   origin=f"{where}.method")
        elif {"baseline", "quantized"} <= keys:
            extra = keys - {"baseline", "quantized", "name"}
            b = check_model_path(str(item["baseline"]), f"{where}.baseline")
            q = str(item["quantized"])
            if not os.path.isdir(q):
                raise CompareInputError(f"{where}.quantized: model directory {q!r} does not exist")
            base = EngineSpec(model=b, quantization=None, label=Path(b).name or b)
            cand = EngineSpec(model=q, quantization=None, label=Path(q).name or q)
        else:
            raise CompareInputError(
                f"{where}: expected keys {{'model','method'}} or {{'baseline','quantized'}}, got {sorted(keys)}")
        if extra:
            raise CompareInputError(f"{where}: unknown keys {sorted(extra)}")
        name = str(item.get("name") or (cand.label if "method" in item else f"{cand.label} vs {base.label}"))
        cases.append(Case(name=_unique_name(name, taken), baseline=base, candidate=cand))
    return cases


def load_prompts(path: str) -> list[str]:
    """Prompts from a text file (one per line; blank lines and ``#`` comments skipped) or a JSON list."""
    if not os.path.isfile(path):
        raise CompareInputError(f"--prompts: file {path!r} does not exist")
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith(".json") or text.lstrip().startswith("["):
        try:
            prompts = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CompareInputError(f"--prompts: {path!r} is not valid JSON: {exc}") from exc
        if not isinstance(prompts, list) or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise CompareInputError(f"--prompts: {path!r} must be a JSON list of non-empty strings")
        prompts = [p.strip() for p in prompts]
    else:
        prompts = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise CompareInputError(f"--prompts: {path!r} holds no prompts")
    return prompts


def parse_seeds(text: str | Iterable[int]) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; seeds must be non-negative integers, at least one."""
    parts = split_list(text) if isinstance(text, str) else list(text)
    if not parts:
        raise CompareInputError(f"--seeds: expected a comma-separated list of integers, got {text!r}")
    seeds = []
    for part in parts:
        try:
            seed = int(part)
        except (TypeError, ValueError):
            raise CompareInputError(f"--seeds: {part!r} is not an integer (expected e.g. 0,1,2)") from None
        if seed < 0:
            raise CompareInputError(f"--seeds: {seed} is negative; seeds must be >= 0")
        seeds.append(seed)
    return seeds

