"""Run baseline and candidate engines on identical settings and score the candidates.

Every engine gets the same prompts, seeds, steps, resolution, guidance and negative prompt, and the
same engine keyword arguments (dtype, device), so any difference in the images comes from the
quantization.  Engines are loaded one at a time and
closed before the next one is built, so peak device memory is that of the largest engine.

Engines are built by ``engine_factory(spec: EngineSpec, engine_kwargs: dict)``; the default
builds ``quantomni.Omni``.  An engine must provide ``generate(...) -> result`` with
``result.images`` (PIL), ``result.timings`` (``"total_s"``) and ``result.peak_memory_bytes``;
``describe()``, ``denoiser_weight_bytes`` and ``close()`` are used when present.
"""

from __future__ import annotations

import gc
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from quantomni.compare.cases import Case, EngineSpec, distinct_engines
from quantomni.compare.errors import CompareInputError, ImageMismatchError
from quantomni.compare.metrics import pixel_metrics
from quantomni.compare.perceptual import NOT_COMPUTED, PerceptualScorers

EngineFactory = Callable[[EngineSpec, dict], Any]
QUALITY_METRICS = ("psnr", "ssim", "mae", "lpips", "clip_score", "clip_score_delta")


def default_factory(spec: EngineSpec, engine_kwargs: dict) -> Any:
    """Build ``quantomni.Omni`` for one spec (imported here: the engine is heavy)."""
    try:
        from quantomni import Omni
    except ImportError as exc:
        raise ImportError(f"quantomni compare needs the engine quantomni.Omni, which could not be imported: {exc}") from exc
    # A GGUF file selects its own method: Omni takes gguf_model alone.
    quantization = None if spec.gguf_model else spec.quantization
    if spec.attention != "sdpa":
        engine_kwargs = {**engine_kwargs, "attention": spec.attention}
    return Omni(model=spec.model, quantization=quantization, gguf_model=spec.gguf_model, **engine_kwargs)


@dataclass
class CompareSpec:
    """Everything one comparison run needs; validated on construction."""

    cases: list[Case]
    prompts: list[str]
    seeds: list[int] = field(default_factory=lambda: [0])
    height: int | None = None
    width: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    negative_prompt: str | None = None
    repeats: int = 1
    warmup: int = 1
    out_dir: str | None = None
    lpips_weights: str | None = None
    clip_model: str | None = None
    metric_device: str = "cpu"
    engine_kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.cases:
            raise CompareInputError("no cases to compare")
        if not self.prompts or not all(isinstance(p, str) and p.strip() for p in self.prompts):
            raise CompareInputError(f"prompts must be a non-empty list of non-empty strings, got {self.prompts!r}")
        if not self.seeds:
            raise CompareInputError("seeds: at least one seed is needed")
        for name in ("height", "width", "num_inference_steps"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise CompareInputError(f"--{name.replace('_', '-')}: expected a positive integer, got {value!r}")
        if not isinstance(self.repeats, int) or self.repeats < 1:
            raise CompareInputError(f"--repeats: expected an integer >= 1, got {self.repeats!r}")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise CompareInputError(f"--warmup: expected an integer >= 0, got {self.warmup!r}")

    def generate_kwargs(self) -> dict:
        return {"negative_prompt": self.negative_prompt, "height": self.height, "width": self.width,
                "num_inference_steps": self.num_inference_steps, "guidance_scale": self.guidance_scale}


@dataclass
class EngineRun:
    """What one engine produced: images by (prompt index, seed), latencies, memory, description."""

    label: str
    spec: EngineSpec
    images: dict[tuple[int, int], Any] = field(default_factory=dict)
    clip: dict[tuple[int, int], float | str] = field(default_factory=dict)
    latencies_s: list[float] = field(default_factory=list)
    peak_memory_bytes: int | None = None
    denoiser_weight_bytes: int | None = None
    load_time_s: float | None = None
    description: dict = field(default_factory=dict)

    def perf(self) -> dict:
        lat = np.asarray(self.latencies_s, dtype=np.float64)
        total = float(lat.sum())
        return {
            "latency_mean_s": float(lat.mean()), "latency_p50_s": float(np.percentile(lat, 50)),
            "latency_p90_s": float(np.percentile(lat, 90)), "n_timed_images": int(lat.size),
            "throughput_images_per_s": (lat.size / total) if total > 0 else math.inf,
            "peak_memory_bytes": self.peak_memory_bytes, "denoiser_weight_bytes": self.denoiser_weight_bytes,
            "load_time_s": self.load_time_s,
        }


@dataclass
class Report:
    """Result of :func:`run_comparison`; ``to_dict()`` is what ``report.json`` holds."""

    settings: dict
    perceptual: dict
    engines: dict[str, dict]
    cases: list[dict]
    grid_images: dict[str, dict[int, Any]] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        return {"settings": self.settings, "perceptual": self.perceptual, "engines": self.engines, "cases": self.cases}

    def case_summaries(self) -> dict[str, dict]:
        """Case name -> flat metrics (quality means + candidate perf) that gates read."""
        return {c["name"]: c["summary"] for c in self.cases}


def _engine_labels(engines: list[EngineSpec]) -> dict[tuple, str]:
    labels: dict[tuple, str] = {}
    taken: set[str] = set()
    for spec in engines:
        label = spec.label or spec.quantization or "bf16"
        if label in taken:
            label = f"{label} [{Path(spec.model).name}]"
        base, n = label, 2
        while label in taken:
            label, n = f"{base}#{n}", n + 1
        taken.add(label)
        labels[spec.key()] = label
    return labels


def _safe_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "engine"


def _mean(values: list) -> float | str:
    if any(isinstance(v, str) for v in values):
        return next(v for v in values if isinstance(v, str))
    return float(np.mean(values)) if values else math.nan


def _run_engine(engine: Any, run: EngineRun, spec: CompareSpec, scorers: PerceptualScorers, bar) -> None:
    kwargs = spec.generate_kwargs()
    for _ in range(spec.warmup):
        engine.generate(spec.prompts[0], seed=spec.seeds[0], num_images=1, **kwargs)
        bar.update(1)
    image_dir = Path(spec.out_dir, "images", _safe_name(run.label)) if spec.out_dir else None
    if image_dir:
        image_dir.mkdir(parents=True, exist_ok=True)
    for i, prompt in enumerate(spec.prompts):
        for seed in spec.seeds:
            for r in range(spec.repeats):
                start = time.perf_counter()
                result = engine.generate(prompt, seed=seed, num_images=1, **kwargs)
                wall = time.perf_counter() - start
                bar.update(1)
                timings = getattr(result, "timings", None) or {}
                run.latencies_s.append(float(timings.get("total_s", wall)))
                peak = getattr(result, "peak_memory_bytes", None)
                if peak is not None:
                    run.peak_memory_bytes = max(int(peak), run.peak_memory_bytes or 0)
                if r == 0:
                    images = list(getattr(result, "images", None) or [])
                    if len(images) != 1:
                        raise ImageMismatchError(f"engine {run.label!r} returned {len(images)} images for "
                                                 f"prompt {i} seed {seed}; expected 1")
                    run.images[(i, seed)] = images[0]
                    run.clip[(i, seed)] = scorers.clip_score(images[0], prompt)
                    if image_dir:
                        images[0].save(image_dir / f"p{i:03d}_s{seed}.png")


def _score_case(case: Case, base: EngineRun, cand: EngineRun, spec: CompareSpec, scorers: PerceptualScorers) -> dict:
    per_prompt = []
    for i, prompt in enumerate(spec.prompts):
        per_seed = []
        for seed in spec.seeds:
            ref, img = base.images[(i, seed)], cand.images[(i, seed)]
            try:
                row = pixel_metrics(ref, img)
                row["lpips"] = scorers.lpips_score(ref, img)
            except ImageMismatchError as exc:
                raise ImageMismatchError(f"case {case.name!r} ({cand.label} vs {base.label}), prompt {i}, "
                                         f"seed {seed}: {exc}") from exc
            c_cand, c_base = cand.clip[(i, seed)], base.clip[(i, seed)]
            row["clip_score"] = c_cand
            row["clip_score_baseline"] = c_base
            row["clip_score_delta"] = NOT_COMPUTED if isinstance(c_cand, str) else c_cand - c_base
            per_seed.append({"seed": seed, **row})
        means = {k: _mean([s[k] for s in per_seed]) for k in (*QUALITY_METRICS, "clip_score_baseline")}
        per_prompt.append({"prompt": prompt, **means, "per_seed": per_seed})
    mean = {k: _mean([p[k] for p in per_prompt]) for k in QUALITY_METRICS}
    cand_perf, base_perf = cand.perf(), base.perf()
    summary = {**mean, **cand_perf}
    summary["speedup"] = base_perf["latency_mean_s"] / cand_perf["latency_mean_s"] if cand_perf["latency_mean_s"] > 0 else math.inf
    bw, cw = base.denoiser_weight_bytes, cand.denoiser_weight_bytes
    summary["weight_bytes_ratio"] = (cw / bw) if (bw and cw is not None) else None
    return {"name": case.name, "baseline": base.label, "candidate": cand.label, "mean": mean,
            "summary": summary, "per_prompt": per_prompt}


def _total_steps(spec: CompareSpec, n_engines: int) -> int:
    return n_engines * (spec.warmup + len(spec.prompts) * len(spec.seeds) * spec.repeats)


def run_comparison(spec: CompareSpec, engine_factory: EngineFactory | None = default_factory,
                   progress: bool = True) -> Report:
    """Generate with every distinct engine (one loaded at a time) and score each case; see module doc."""
    factory = engine_factory or default_factory
    scorers = PerceptualScorers.from_paths(spec.lpips_weights, spec.clip_model, spec.metric_device)
    engines = distinct_engines(spec.cases)
    labels = _engine_labels(engines)
    baseline_keys = {c.baseline.key() for c in spec.cases}
    runs: dict[tuple, EngineRun] = {}
    case_results: list[dict] = []
    done_cases: set[str] = set()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        raise ImportError("progress bars need tqdm: pip install tqdm") from None
    with tqdm(total=_total_steps(spec, len(engines)), disable=not progress, desc="compare", unit="img") as bar:
        for es in engines:
            run = EngineRun(label=labels[es.key()], spec=es)
            bar.set_description(f"compare [{run.label}]")
            start = time.perf_counter()
            engine = factory(es, dict(spec.engine_kwargs))
            built_s = time.perf_counter() - start
            try:
                run.description = dict(engine.describe()) if hasattr(engine, "describe") else {}
                reported = run.description.get("load_time_s")
                run.load_time_s = float(built_s if reported is None else reported)
                wb = getattr(engine, "denoiser_weight_bytes", None)
                wb = wb() if callable(wb) else wb
                run.denoiser_weight_bytes = int(wb) if wb is not None else None
                _run_engine(engine, run, spec, scorers, bar)
            finally:
                if hasattr(engine, "close"):
                    engine.close()
                del engine
                gc.collect()
            runs[es.key()] = run
            for case in spec.cases:
                if case.name in done_cases or case.baseline.key() not in runs or case.candidate.key() not in runs:
                    continue
                case_results.append(_score_case(case, runs[case.baseline.key()], runs[case.candidate.key()], spec, scorers))
                done_cases.add(case.name)
            # A pure candidate whose cases are all scored keeps only the first seed's images (for the grid).
            for key, done_run in runs.items():
                if key not in baseline_keys and all(c.name in done_cases for c in spec.cases
                                                    if c.candidate.key() == key):
                    done_run.images = {k: v for k, v in done_run.images.items() if k[1] == spec.seeds[0]}
    order = {c.name: i for i, c in enumerate(spec.cases)}
    case_results.sort(key=lambda c: order[c["name"]])
    engines_out = {}
    for es in engines:
        run = runs[es.key()]
        engines_out[run.label] = {**es.to_dict(), "label": run.label, **run.perf(),
                                  "description": run.description,
                                  "role": "baseline" if es.key() in baseline_keys else "candidate"}
    settings = {"prompts": spec.prompts, "seeds": spec.seeds, **{k: v for k, v in spec.generate_kwargs().items()},
                "repeats": spec.repeats, "warmup": spec.warmup}
    grid = {run.label: {i: run.images[(i, spec.seeds[0])] for i in range(len(spec.prompts))} for run in runs.values()}
    return Report(settings=settings, perceptual=scorers.describe(), engines=engines_out, cases=case_results, grid_images=grid)
