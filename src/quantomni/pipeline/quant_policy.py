"""Which ModelOpt layout each denoiser Linear gets when ``quantomni quantize`` writes an export.

Why: one algorithm for every layer (``--algo fp8``) is the common case; ``--algo mixed`` takes a
policy naming layers by glob. Both resolve to ``{layer: quant_algo or None (= BF16)}`` here so
the exporter only sees per-layer decisions.

Policy file (JSON): ``{"nvfp4": [globs], "fp8": [globs], "bf16": [globs]}``, or the
sensitivity-ranking form ``{"format": ..., "layers": [...], "policy": {...}}`` whose ``policy``
key holds the former. Globs are fnmatch patterns over module names (``transformer_blocks.*.ff.*``).
When several lists match a layer the most conservative wins: bf16 > fp8 > nvfp4. Layers no glob
matches stay BF16. A glob that matches no Linear layer is an error naming it.
The architecture adapter's sensitive layers always stay BF16.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from fnmatch import fnmatchcase
from pathlib import Path

ALGOS = {
    "fp8": "FP8",
    "fp8_pcpt": "FP8_PER_CHANNEL_PER_TOKEN",
    "nvfp4": "NVFP4",
    "w4a16_nvfp4": "W4A16_NVFP4",
    "mixed": "MIXED_PRECISION",
}
POLICY_KEYS = ("bf16", "fp8", "nvfp4")  # precedence order: first match wins
_POLICY_ALGO = {"fp8": "FP8", "nvfp4": "NVFP4", "bf16": None}


class PolicyError(ValueError):
    """A quantization policy is malformed or names layers that do not exist."""


def load_policy(value) -> dict[str, list[str]]:
    """Parse a policy (path to a JSON file, or a mapping) into ``{bf16|fp8|nvfp4: [globs]}``."""
    where = "policy"
    if isinstance(value, (str, Path)):
        path = Path(value)
        where = str(path)
        if not path.is_file():
            raise PolicyError(f"--policy: {path} does not exist")
        try:
            value = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise PolicyError(f"{path}: not valid JSON ({exc})") from exc
    if isinstance(value, Mapping) and "policy" in value:
        value = value["policy"]
    if not isinstance(value, Mapping):
        raise PolicyError(f"{where}: expected an object {{\"nvfp4\": [globs], \"fp8\": [globs], \"bf16\": [globs]}}")
    unknown = sorted(k for k in value if k not in POLICY_KEYS)
    if unknown:
        raise PolicyError(f"{where}: unknown key(s) {unknown}; allowed: {list(POLICY_KEYS)}")
    out = {}
    for key in POLICY_KEYS:
        globs = value.get(key, [])
        if isinstance(globs, str) or not isinstance(globs, (list, tuple)) or not all(isinstance(g, str) and g for g in globs):
            raise PolicyError(f"{where}.{key}: expected a list of non-empty glob strings, got {globs!r}")
        out[key] = list(globs)
    if not out["fp8"] and not out["nvfp4"]:
        raise PolicyError(f"{where}: names no layer for fp8 or nvfp4; nothing would be quantized")
    return out


def resolve_layer_algos(linear_names, algo: str, adapter, policy=None) -> dict[str, str | None]:
    """``{layer: ModelOpt quant_algo or None}`` for every Linear name (None = stays BF16).

    algo: one of ALGOS' keys; ``mixed`` needs ``policy`` (see load_policy), the others refuse it.
    """
    if algo not in ALGOS:
        raise PolicyError(f"--algo {algo!r}: allowed: {', '.join(ALGOS)}")
    names = list(linear_names)
    if algo != "mixed":
        if policy is not None:
            raise PolicyError(f"--policy is only used with --algo mixed (got --algo {algo})")
        return {n: (None if adapter.sensitive_match(n) is not None else ALGOS[algo]) for n in names}
    if policy is None:
        raise PolicyError("--algo mixed needs --policy policy.json ({\"nvfp4\": [globs], \"fp8\": [globs], \"bf16\": [globs]})")
    policy = load_policy(policy)
    for key in POLICY_KEYS:
        for glob in policy[key]:
            if not any(fnmatchcase(n, glob) for n in names):
                raise PolicyError(
                    f"policy {key}: glob {glob!r} matches no Linear layer of the denoiser "
                    f"({len(names)} layers, e.g. {names[:4]})"
                )
    out = {}
    for n in names:
        chosen = None
        if adapter.sensitive_match(n) is None:
            for key in POLICY_KEYS:
                if any(fnmatchcase(n, g) for g in policy[key]):
                    chosen = _POLICY_ALGO[key]
                    break
        out[n] = chosen
    return out
