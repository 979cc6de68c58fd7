"""Quality/speed gates: ``--gate "lpips<=0.15,psnr>=25"`` checked against each case's averages.

A gate reads the case summary (means over prompts and seeds, plus the candidate's performance).
A gate on a metric that was not computed (no weights), not reported (e.g. no peak memory on CPU)
or NaN *fails* with that reason: a gate never passes silently.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass

from quantomni.compare.errors import GateSyntaxError

#: accepted name -> key in the case summary
GATE_METRICS = {
    "psnr": "psnr", "ssim": "ssim", "mae": "mae", "lpips": "lpips",
    "clip": "clip_score", "clip_score": "clip_score", "clip_delta": "clip_score_delta",
    "clip_score_delta": "clip_score_delta",
    "latency": "latency_mean_s", "latency_mean_s": "latency_mean_s", "latency_p50_s": "latency_p50_s",
    "latency_p90_s": "latency_p90_s", "throughput": "throughput_images_per_s",
    "throughput_images_per_s": "throughput_images_per_s", "peak_memory_bytes": "peak_memory_bytes",
    "denoiser_weight_bytes": "denoiser_weight_bytes", "load_time_s": "load_time_s",
    "speedup": "speedup", "weight_bytes_ratio": "weight_bytes_ratio",
}
_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}
_GATE_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class Gate:
    metric: str     # summary key, e.g. "psnr"
    op: str         # one of <=, >=, <, >
    threshold: float
    text: str       # as the user wrote it

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class GateResult:
    case: str
    gate: Gate
    value: object
    passed: bool
    reason: str


def parse_gates(text: str | None) -> list[Gate]:
    """``"lpips<=0.15, psnr>=25"`` -> gates; bad syntax or an unknown metric is a GateSyntaxError."""
    if text is None or not text.strip():
        return []
    gates = []
    for part in text.split(","):
        if not part.strip():
            raise GateSyntaxError(f"--gate: empty condition in {text!r} (expected e.g. 'lpips<=0.15,psnr>=25')")
        m = _GATE_RE.match(part)
        if not m:
            raise GateSyntaxError(f"--gate: cannot parse {part.strip()!r}: expected METRIC OP NUMBER with OP one of "
                                  f"<=, >=, <, > (e.g. 'psnr>=25')")
        name, op, number = m.groups()
        key = GATE_METRICS.get(name.lower())
        if key is None:
            raise GateSyntaxError(f"--gate: unknown metric {name!r} in {part.strip()!r}; "
                                  f"known: {', '.join(sorted(GATE_METRICS))}")
        gates.append(Gate(metric=key, op=op, threshold=float(number), text=part.strip()))
    return gates


def evaluate_gates(gates: list[Gate], summaries: dict[str, dict]) -> list[GateResult]:
    """Every gate on every case; see module doc for how missing values fail."""
    results = []
    for case, summary in summaries.items():
        for gate in gates:
            value = summary.get(gate.metric)
            if isinstance(value, str):
                passed, reason = False, f"{gate.metric} {value}"
            elif value is None:
                passed, reason = False, f"{gate.metric} not reported by the engine"
            elif isinstance(value, float) and math.isnan(value):
                passed, reason = False, f"{gate.metric} is NaN"
            else:
                passed = bool(_OPS[gate.op](float(value), gate.threshold))
                reason = f"{gate.metric}={float(value):.6g} {'satisfies' if passed else 'violates'} {gate.text}"
            results.append(GateResult(case=case, gate=gate, value=value, passed=passed, reason=reason))
    return results


def failing_cases(results: list[GateResult]) -> list[str]:
    """Names of cases with at least one failed gate, in first-seen order."""
    out: list[str] = []
    for r in results:
        if not r.passed and r.case not in out:
            out.append(r.case)
    return out
