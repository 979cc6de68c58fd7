"""Per-layer quantization sensitivity and the mixed-precision policy chosen from it.

Model-agnostic and pure torch: give it any ``nn.Module``, a calibration callable that runs
forward passes through it, and one or more :class:`~quantomni.compare.fakequant.QuantFormat`.
Two measurements:

- ``mode="layer"`` (cheap, default): hooks record a sample of every ``nn.Linear``'s inputs during
  calibration (at most ``max_rows`` rows per layer, so memory stays near
  ``2 * max_rows * in_features * 4`` bytes per layer); each layer's output on those inputs with
  quantized weights (and fake-quantized inputs) is compared with its float output.
- ``mode="model"``: one layer at a time is quantized in place and the whole calibration is rerun;
  the model output (what ``calibrate()`` returns, a tensor) is compared with the float output.
  ``calibrate`` must then be deterministic (fixed inputs/seeds).

Damage is SQNR in dB, ``10 log10(sum(y^2) / sum((y - y_hat)^2))``: lower means worse; NaN counts
as the worst.  Ranks start at 1 = most damaged.

``sensitivity.json`` schema (what ``quantomni quantize --policy FILE`` reads via :func:`load_policy`)::

    {
      "format": "nvfp4",                       # format the ranking was measured with
      "mode": "layer",                         # "layer" or "model"
      "layers": [{"name": "blocks.0.attn.to_q", "sqnr_db": 12.3, "rank": 1}, ...],   # worst first;
                                               # sqnr_db may be the string "inf" or "nan"
      "other_formats": {"fp8": [{"name": ..., "sqnr_db": ...}, ...]},               # optional
      "policy": {"nvfp4": [globs], "fp8": [globs], "bf16": [globs]}
    }

Policy globs are ``fnmatch`` patterns over module names (``suggest_policy`` writes exact names,
escaped).  A layer matching several lists takes the most precise format: bf16, then fp8, then
nvfp4; a layer matching none is left to the quantize command's default.  ``load_policy`` also
accepts a file holding only the policy object.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from quantomni.compare.errors import CompareInputError, PolicyError
from quantomni.compare.fakequant import BUILTIN_FORMATS, QuantFormat

POLICY_FORMATS = ("nvfp4", "fp8", "bf16")  # least to most precise
_PRECEDENCE = ("bf16", "fp8", "nvfp4")     # first match wins when resolving a layer


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB; ``inf`` when equal, ``nan`` when approx has NaN."""
    ref = reference.double()
    noise = (ref - approx.double()).pow(2).sum().item()
    signal = ref.pow(2).sum().item()
    if math.isnan(noise) or math.isnan(signal):
        return math.nan
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def linear_layers(model: nn.Module, include: Iterable[str] | None = None) -> dict[str, nn.Linear]:
    """Named ``nn.Linear`` modules (subclasses included), optionally filtered by fnmatch globs."""
    globs = list(include or [])
    return {name: mod for name, mod in model.named_modules()
            if isinstance(mod, nn.Linear) and (not globs or any(fnmatch.fnmatchcase(name, g) for g in globs))}


def _thin(rows: torch.Tensor, limit: int) -> torch.Tensor:
    if rows.shape[0] <= limit:
        return rows
    idx = torch.linspace(0, rows.shape[0] - 1, limit).round().long()
    return rows[idx]


def record_linear_inputs(model: nn.Module, calibrate: Callable[[], Any], max_rows: int = 128,
                         include: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Run ``calibrate()`` with hooks; return layer name -> float32 CPU rows ``[n <= max_rows, in_features]``."""
    if max_rows < 1:
        raise CompareInputError(f"max_rows must be >= 1, got {max_rows}")
    layers = linear_layers(model, include)
    if not layers:
        raise CompareInputError(f"model {type(model).__name__} has no nn.Linear layers"
                                + (f" matching {list(include)}" if include else ""))
    store: dict[str, torch.Tensor] = {}

    def make_hook(name: str, in_features: int):
        def hook(_mod, args, _out):
            x = args[0].detach().reshape(-1, in_features)
            rows = _thin(x, max_rows).float().cpu()  # thin on the device first: copy only the sample
            prev = store.get(name)
            both = rows if prev is None else torch.cat([prev, rows])
            store[name] = both if both.shape[0] <= 2 * max_rows else _thin(both, max_rows)
        return hook

    handles = [mod.register_forward_hook(make_hook(name, mod.in_features)) for name, mod in layers.items()]
    try:
        with torch.no_grad():
            calibrate()
    finally:
        for h in handles:
            h.remove()
    missing = [name for name in layers if name not in store]
    if len(missing) == len(layers):
        raise CompareInputError("calibration ran no forward pass through any nn.Linear of the model")
    return {name: _thin(rows, max_rows) for name, rows in store.items()}


def layer_output_sqnr(model: nn.Module, inputs: dict[str, torch.Tensor], fmt: QuantFormat) -> dict[str, float]:
    """Each layer's output SQNR on its recorded inputs with ``fmt`` applied to weight (and input)."""
    layers = linear_layers(model)
    result = {}
    with torch.no_grad():
        for name, x in inputs.items():
            mod = layers[name]
            w = mod.weight.detach().float()
            x = x.to(w.device)
            b = None if mod.bias is None else mod.bias.detach().float()
            y = torch.nn.functional.linear(x, w, b)
            xq = fmt.activation_fake_quant(x) if fmt.activation_fake_quant else x
            y_hat = torch.nn.functional.linear(xq.float(), fmt.quantize_dequantize(w).float(), b)
            result[name] = sqnr_db(y, y_hat)
    return result


def model_output_sqnr(model: nn.Module, calibrate: Callable[[], torch.Tensor], fmt: QuantFormat,
                      include: Iterable[str] | None = None) -> dict[str, float]:
    """Quantize one layer at a time in place; SQNR of ``calibrate()``'s output against the float run."""
    with torch.no_grad():
        reference = calibrate()
        if not isinstance(reference, torch.Tensor):
            raise CompareInputError(f"mode='model' needs calibrate() to return a tensor, got {type(reference).__name__}")
        reference = reference.detach().float().cpu()
        result = {}
        for name, mod in linear_layers(model, include).items():
            original = mod.weight.data.clone()
            mod.weight.data.copy_(fmt.quantize_dequantize(original).to(original.dtype))
            handle = None
            if fmt.activation_fake_quant is not None:
                act = fmt.activation_fake_quant
                handle = mod.register_forward_pre_hook(lambda _m, args: (act(args[0]).to(args[0].dtype),) + tuple(args[1:]))
            try:
                out = calibrate().detach().float().cpu()
            finally:
                mod.weight.data.copy_(original)
                if handle is not None:
                    handle.remove()
            result[name] = sqnr_db(reference, out)
    return result


def rank_layers(sqnr: dict[str, float]) -> list[dict]:
    """Worst first: ``[{"name", "sqnr_db", "rank"}]`` with rank 1 = lowest SQNR (NaN counts lowest)."""
    def key(item):
        value = item[1]
        return (-math.inf if math.isnan(value) else value, item[0])
    ordered = sorted(sqnr.items(), key=key)
    return [{"name": name, "sqnr_db": value, "rank": i + 1} for i, (name, value) in enumerate(ordered)]


def _escape_glob(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


def suggest_policy(ranking: list[dict], fp8_fraction: float, bf16_fraction: float) -> dict[str, list[str]]:
    """Most damaged ``round(bf16_fraction * n)`` layers -> bf16, next ``round(fp8_fraction * n)`` -> fp8, rest nvfp4."""
    for label, value in (("fp8_fraction", fp8_fraction), ("bf16_fraction", bf16_fraction)):
        if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
            raise CompareInputError(f"{label} must be between 0 and 1, got {value!r}")
    if fp8_fraction + bf16_fraction > 1.0 + 1e-9:
        raise CompareInputError(f"fp8_fraction + bf16_fraction must be <= 1, got {fp8_fraction} + {bf16_fraction}")
    ordered = sorted(ranking, key=lambda r: r["rank"])
    n = len(ordered)
    n_bf16 = int(math.floor(bf16_fraction * n + 0.5))
    n_fp8 = min(n - n_bf16, int(math.floor(fp8_fraction * n + 0.5)))
    names = [_escape_glob(r["name"]) for r in ordered]
    return {"nvfp4": names[n_bf16 + n_fp8:], "fp8": names[n_bf16:n_bf16 + n_fp8], "bf16": names[:n_bf16]}


def run_sensitivity(model: nn.Module, calibrate: Callable[[], Any], formats: Iterable[QuantFormat | str] = ("nvfp4",),
                    mode: str = "layer", max_rows: int = 128, include: Iterable[str] | None = None,
                    fp8_fraction: float = 0.0, bf16_fraction: float = 0.0) -> dict:
    """Measure every format; the first one gives the ranking and the policy. Returns the JSON object."""
    fmts = [BUILTIN_FORMATS[f] if isinstance(f, str) and f in BUILTIN_FORMATS else f for f in formats]
    for f in fmts:
        if not isinstance(f, QuantFormat):
            raise CompareInputError(f"unknown sensitivity format {f!r}: expected one of {sorted(BUILTIN_FORMATS)} "
                                    f"or a QuantFormat")
    if not fmts:
        raise CompareInputError("no sensitivity format given")
    if mode == "layer":
        inputs = record_linear_inputs(model, calibrate, max_rows=max_rows, include=include)
        measured = {f.name: layer_output_sqnr(model, inputs, f) for f in fmts}
    elif mode == "model":
        measured = {f.name: model_output_sqnr(model, calibrate, f, include) for f in fmts}
    else:
        raise CompareInputError(f"sensitivity mode must be 'layer' or 'model', got {mode!r}")
    primary = fmts[0].name
    ranking = rank_layers(measured[primary])
    return {
        "format": primary,
        "mode": mode,
        "layers": ranking,
        "other_formats": {name: [{"name": r["name"], "sqnr_db": r["sqnr_db"]} for r in rank_layers(v)]
                          for name, v in measured.items() if name != primary},
        "policy": suggest_policy(ranking, fp8_fraction, bf16_fraction),
    }


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def write_sensitivity_json(result: dict, path: str | os.PathLike) -> Path:
    """Write ``result`` (from :func:`run_sensitivity`) as strict JSON (non-finite floats as strings)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_jsonable(result), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return out


def validate_policy(policy: Any, origin: str = "policy") -> dict[str, list[str]]:
    """Check a policy mapping; return it with all three keys present."""
    if not isinstance(policy, dict):
        raise PolicyError(f"{origin}: expected an object mapping {list(POLICY_FORMATS)} to lists of globs, "
                          f"got {type(policy).__name__}")
    out: dict[str, list[str]] = {fmt: [] for fmt in POLICY_FORMATS}
    owner: dict[str, str] = {}
    for fmt, globs in policy.items():
        if fmt not in POLICY_FORMATS:
            raise PolicyError(f"{origin}: unknown format {fmt!r}; allowed: {list(POLICY_FORMATS)}")
        if not isinstance(globs, list) or not all(isinstance(g, str) and g.strip() for g in globs):
            raise PolicyError(f"{origin}.{fmt}: expected a list of non-empty glob strings, got {globs!r}")
        for g in globs:
            if g in owner and owner[g] != fmt:
                raise PolicyError(f"{origin}: glob {g!r} is listed under both {owner[g]!r} and {fmt!r}")
            owner[g] = fmt
        out[fmt] = list(globs)
    return out


def load_policy(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read a ``sensitivity.json`` (its ``"policy"``) or a bare policy file; validated, all keys present."""
    p = Path(path)
    if not p.is_file():
        raise PolicyError(f"--policy: file {str(p)!r} does not exist")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PolicyError(f"--policy: {str(p)!r} is not valid JSON: {exc}") from exc
    if isinstance(data, dict) and "policy" in data:
        return validate_policy(data["policy"], f"{p}: policy")
    return validate_policy(data, str(p))


def resolve_policy_format(layer_name: str, policy: dict[str, list[str]]) -> str | None:
    """Format for one layer: bf16 beats fp8 beats nvfp4 when several globs match; None if none match."""
    for fmt in _PRECEDENCE:
        if any(fnmatch.fnmatchcase(layer_name, g) for g in policy.get(fmt, [])):
            return fmt
    return None


def render_sensitivity_markdown(result: dict, top: int = 20) -> str:
    """A short table of the most damaged layers and the policy sizes, for a PR or a terminal."""
    lines = [f"# Per-layer sensitivity ({result['format']}, mode {result['mode']})", "",
             "| rank | layer | SQNR dB | " + " | ".join(f"{f} SQNR dB" for f in result.get("other_formats", {})) + " |",
             "|---|---|---|" + "---|" * len(result.get("other_formats", {}))]
    others = {f: {r["name"]: r["sqnr_db"] for r in rows} for f, rows in result.get("other_formats", {}).items()}
    for r in result["layers"][:top]:
        cells = [str(r["rank"]), r["name"], f"{r['sqnr_db']:.2f}"] + [f"{others[f].get(r['name'], math.nan):.2f}" for f in others]
        lines.append("| " + " | ".join(cells) + " |")
    policy = result["policy"]
    lines += ["", "Policy: " + ", ".join(f"{fmt} {len(policy[fmt])} layers" for fmt in ("bf16", "fp8", "nvfp4")), ""]
    return "\n".join(lines)
