"""Write a comparison's ``report.json`` (strict JSON) and ``report.md`` (tables to paste into a PR)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from quantomni.compare.gates import GateResult
from quantomni.compare.perceptual import NOT_COMPUTED
from quantomni.compare.runner import Report

_GIB = 1024 ** 3
_MIB = 1024 ** 2


def jsonable(value):
    """Non-finite floats -> "inf"/"-inf"/"nan" strings; tuples -> lists; unknown objects -> str."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def gate_dicts(results: list[GateResult] | None) -> list[dict]:
    return [{"case": r.case, "gate": r.gate.text, "value": jsonable(r.value), "passed": r.passed, "reason": r.reason}
            for r in results or []]


def write_json(report: Report, out_dir: str | Path, gate_results: list[GateResult] | None = None) -> Path:
    data = report.to_dict()
    if gate_results is not None:
        data["gates"] = gate_dicts(gate_results)
    path = Path(out_dir) / "report.json"
    path.write_text(json.dumps(jsonable(data), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def _fmt(value, digits: int = 3, scale: float = 1.0) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    value = float(value) / scale
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _perf_cells(e: dict) -> list[str]:
    lat = f"{_fmt(e['latency_mean_s'])} / {_fmt(e['latency_p50_s'])} / {_fmt(e['latency_p90_s'])}"
    return [lat, _fmt(e["throughput_images_per_s"], 2), _fmt(e["peak_memory_bytes"], 2, _GIB),
            _fmt(e["denoiser_weight_bytes"], 1, _MIB), _fmt(e["load_time_s"], 2)]


def render_markdown(report: Report, gate_results: list[GateResult] | None = None) -> str:
    s = report.settings
    lines = ["# quantomni compare", ""]
    res = f"{s.get('width') or 'default'}x{s.get('height') or 'default'}"
    lines.append(f"Same settings for every engine: resolution {res}, steps {s.get('num_inference_steps') or 'default'}, "
                 f"guidance {s.get('guidance_scale') if s.get('guidance_scale') is not None else 'default'}, "
                 f"seeds {', '.join(map(str, s['seeds']))}, {len(s['prompts'])} prompt(s), "
                 f"{s['repeats']} timed repeat(s) after {s['warmup']} warm-up run(s).")
    lines.append("")
    lines.append(f"LPIPS: {report.perceptual['lpips']}. CLIP score: {report.perceptual['clip_score']}.")
    hints = [flag for key, flag in (("lpips", "--lpips-weights FILE"), ("clip_score", "--clip-model DIR"))
             if report.perceptual[key] == NOT_COMPUTED]
    if hints:
        lines.append(f"(To compute them, pass {' and '.join(hints)}: local weights, never downloaded.)")
    lines.append("")
    header = ["case", "vs", "PSNR dB ↑", "SSIM ↑", "MAE ↓", "LPIPS ↓", "CLIP", "CLIP Δ",
              "latency mean / p50 / p90 s", "img/s", "peak mem GiB", "denoiser MiB", "load s"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    shown = set()
    for case in report.cases:
        if case["baseline"] not in shown:
            shown.add(case["baseline"])
            e = report.engines[case["baseline"]]
            base_clip = _fmt(_baseline_clip(case), 2)
            lines.append("| " + " | ".join([_cell(f"{case['baseline']} (baseline)"), "—", "—", "—", "—", "—",
                                             _cell(base_clip), "—", *_perf_cells(e)]) + " |")
        m = case["mean"]
        lines.append("| " + " | ".join([
            _cell(case["name"]), _cell(case["baseline"]), _fmt(m["psnr"], 2), _fmt(m["ssim"], 4), _fmt(m["mae"], 2),
            _cell(_fmt(m["lpips"], 4)), _cell(_fmt(m["clip_score"], 2)), _cell(_fmt(m["clip_score_delta"], 2)),
            *_perf_cells(report.engines[case["candidate"]])]) + " |")
    lines += ["", "Quality columns are means over prompts and seeds; latency is per image.", ""]
    lines += ["## Per prompt", "", "| case | prompt | PSNR dB | SSIM | MAE | LPIPS | CLIP | CLIP Δ |",
              "|---|---|---|---|---|---|---|---|"]
    for case in report.cases:
        for p in case["per_prompt"]:
            prompt = p["prompt"] if len(p["prompt"]) <= 60 else p["prompt"][:57] + "..."
            lines.append("| " + " | ".join([_cell(case["name"]), _cell(prompt), _fmt(p["psnr"], 2), _fmt(p["ssim"], 4),
                                             _fmt(p["mae"], 2), _cell(_fmt(p["lpips"], 4)), _cell(_fmt(p["clip_score"], 2)),
                                             _cell(_fmt(p["clip_score_delta"], 2))]) + " |")
    if gate_results is not None:
        lines += ["", "## Gates", "", "| case | gate | result | detail |", "|---|---|---|---|"]
        for r in gate_results:
            lines.append(f"| {_cell(r.case)} | {_cell(r.gate.text)} | {'pass' if r.passed else '**FAIL**'} | {_cell(r.reason)} |")
    return "\n".join(lines) + "\n"


def _baseline_clip(case: dict):
    values = [p["clip_score_baseline"] for p in case["per_prompt"]]
    if any(isinstance(v, str) for v in values):
        return next(v for v in values if isinstance(v, str))
    return sum(values) / len(values)


def write_markdown(report: Report, out_dir: str | Path, gate_results: list[GateResult] | None = None) -> Path:
    path = Path(out_dir) / "report.md"
    path.write_text(render_markdown(report, gate_results), encoding="utf-8")
    return path


def write_report(report: Report, out_dir: str | Path, gate_results: list[GateResult] | None = None,
                 plots: bool = True) -> dict[str, Path]:
    """Write report.json, report.md and (``plots=True``) grid.png and tradeoff.png into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": write_json(report, out, gate_results), "md": write_markdown(report, out, gate_results)}
    if plots:
        from quantomni.compare.plots import write_grid, write_tradeoff

        paths["grid"] = write_grid(report, out / "grid.png")
        paths["tradeoff"] = write_tradeoff(report, out / "tradeoff.png")
    return paths
