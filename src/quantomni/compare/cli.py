"""``quantomni compare``: argument definitions and the command body, for the main CLI to mount.

Usage from the main CLI::

    sub = subparsers.add_parser("compare", help="quality/speed of quantized vs BF16")
    add_compare_arguments(sub)
    ...
    return run_compare_command(args)            # exit code

Exit codes: 0 all gates passed (or none given), 1 a gate failed (failing cases printed),
2 bad input (message printed to stderr).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from quantomni.compare.cases import build_cases, load_cases_file, load_prompts, parse_seeds, split_list
from quantomni.compare.errors import CompareInputError, GateSyntaxError, ImageMismatchError, PolicyError
from quantomni.compare.runner import CompareSpec, EngineFactory

DEFAULT_PROMPTS = [
    "a photo of a red fox sitting in fresh snow, golden hour",
    "a bowl of ramen on a wooden table, studio lighting",
    "a lighthouse on a cliff above a stormy sea, oil painting",
]
_USER_ERRORS = (CompareInputError, GateSyntaxError, ImageMismatchError, PolicyError)


def add_compare_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = parser.add_argument_group("what to compare")
    g.add_argument("--model", help="model directory (the BF16 base)")
    g.add_argument("--baseline", default="bf16", help="baseline: bf16/none (default) or a method name")
    g.add_argument("--candidates", default="", help="comma list: method names (fp8,int8,...), gguf, gguf:PATH, "
                                                   "or model directories (pre-quantized checkpoints)")
    g.add_argument("--gguf-model", help="GGUF file used by the 'gguf' candidate")
    g.add_argument("--cases", help='JSON list of {"model","method"} or {"baseline","quantized"} cases')
    g = parser.add_argument_group("generation (identical for every engine)")
    g.add_argument("--prompts", help="prompts file: one per line, or a JSON list (default: 3 built-in prompts)")
    g.add_argument("--seeds", default="0", help="comma list of seeds (default 0)")
    g.add_argument("--height", type=int)
    g.add_argument("--width", type=int)
    g.add_argument("--num-inference-steps", type=int)
    g.add_argument("--guidance-scale", type=float)
    g.add_argument("--negative-prompt")
    g.add_argument("--repeats", type=int, default=1, help="timed generations per prompt and seed (default 1)")
    g.add_argument("--warmup", type=int, default=1, help="untimed generations per engine first (default 1)")
    g.add_argument("--dtype", help="engine dtype (default: the engine's)")
    g.add_argument("--device", help="engine device (default: the engine's)")
    g = parser.add_argument_group("metrics and output")
    g.add_argument("--out", required=True, help="output directory (report.json, report.md, grid.png, tradeoff.png)")
    g.add_argument("--gate", help='e.g. "lpips<=0.15,psnr>=25"; exit 1 naming the failing cases')
    g.add_argument("--lpips-weights", help="local safetensors with AlexNet + LPIPS heads (see quantomni.compare.perceptual)")
    g.add_argument("--clip-model", help="local CLIPModel/CLIPProcessor directory (save_pretrained)")
    g = parser.add_argument_group("per-layer sensitivity")
    g.add_argument("--per-layer", action="store_true",
                   help="rank the baseline denoiser's Linear layers by output SQNR; writes sensitivity.json")
    g.add_argument("--per-layer-formats", default="nvfp4,fp8", help="formats to measure; the first ranks (default nvfp4,fp8)")
    g.add_argument("--per-layer-rows", type=int, default=128, help="recorded input rows per layer (default 128)")
    g.add_argument("--fp8-fraction", type=float, default=0.1, help="share of the most sensitive layers put in fp8")
    g.add_argument("--bf16-fraction", type=float, default=0.05, help="share of the most sensitive layers kept in bf16")
    return parser


def _engine_kwargs(args) -> dict:
    return {k: getattr(args, k) for k in ("dtype", "device") if getattr(args, k, None)}


def _build_spec(args) -> CompareSpec:
    if args.cases:
        if args.candidates:
            raise CompareInputError("pass either --cases FILE or --candidates, not both")
        cases = load_cases_file(args.cases, gguf_model=args.gguf_model)
    else:
        if not args.model:
            raise CompareInputError("--model is required (or give --cases FILE)")
        cases = build_cases(args.model, split_list(args.candidates), baseline=args.baseline, gguf_model=args.gguf_model)
    prompts = load_prompts(args.prompts) if args.prompts else list(DEFAULT_PROMPTS)
    return CompareSpec(cases=cases, prompts=prompts, seeds=parse_seeds(args.seeds), height=args.height,
                       width=args.width, num_inference_steps=args.num_inference_steps,
                       guidance_scale=args.guidance_scale, negative_prompt=args.negative_prompt,
                       repeats=args.repeats, warmup=args.warmup, out_dir=args.out,
                       lpips_weights=args.lpips_weights, clip_model=args.clip_model,
                       engine_kwargs=_engine_kwargs(args))


def find_denoiser(engine: Any):
    """The engine's denoiser ``nn.Module`` (``Omni.denoiser``; fakes may expose ``.transformer``)."""
    for path in ("denoiser", "transformer"):
        obj = engine
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if obj is not None and hasattr(obj, "named_modules"):
            return obj
    raise CompareInputError(f"--per-layer: engine {type(engine).__name__} exposes no denoiser module "
                            f"(looked for .denoiser, .transformer, .pipeline.transformer)")


def _run_per_layer(args, factory: EngineFactory) -> int:
    from quantomni.compare.sensitivity import render_sensitivity_markdown, run_sensitivity, write_sensitivity_json

    if not args.model:
        raise CompareInputError("--per-layer needs --model")
    spec = _build_spec(argparse.Namespace(**{**vars(args), "cases": None, "candidates": args.baseline}))
    base = spec.cases[0].baseline
    formats = split_list(args.per_layer_formats)
    engine = factory(base, dict(spec.engine_kwargs))
    try:
        denoiser = find_denoiser(engine)

        def calibrate():
            for prompt in spec.prompts:
                for seed in spec.seeds:
                    engine.generate(prompt, seed=seed, num_images=1, **spec.generate_kwargs())

        result = run_sensitivity(denoiser, calibrate, formats=formats, mode="layer", max_rows=args.per_layer_rows,
                                 fp8_fraction=args.fp8_fraction, bf16_fraction=args.bf16_fraction)
    finally:
        if hasattr(engine, "close"):
            engine.close()
    path = write_sensitivity_json(result, Path(args.out) / "sensitivity.json")
    (Path(args.out) / "sensitivity.md").write_text(render_sensitivity_markdown(result), encoding="utf-8")
    worst = ", ".join(f"{r['name']} ({r['sqnr_db']:.1f} dB)" for r in result["layers"][:5])
    print(f"per-layer sensitivity ({result['format']}): {len(result['layers'])} layers, worst: {worst}")
    print(f"wrote {path}")
    return 0


def run_compare_command(args: argparse.Namespace, engine_factory: EngineFactory | None = None) -> int:
    """Body of ``quantomni compare``; returns the exit code (see module doc)."""
    from quantomni.compare.gates import evaluate_gates, failing_cases, parse_gates

    try:
        gates = parse_gates(args.gate)
        if args.per_layer:
            from quantomni.compare.runner import default_factory

            return _run_per_layer(args, engine_factory or default_factory)
        spec = _build_spec(args)
        from quantomni.compare.report import render_markdown, write_report
        from quantomni.compare.runner import run_comparison

        report = run_comparison(spec, engine_factory=engine_factory, progress=sys.stderr.isatty())
        results = evaluate_gates(gates, report.case_summaries()) if gates else None
        paths = write_report(report, args.out, results)
    except _USER_ERRORS as exc:
        print(f"quantomni compare: error: {exc}", file=sys.stderr)
        return 2
    print(render_markdown(report, results).split("\n## Per prompt")[0])
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    failed = failing_cases(results or [])
    if failed:
        reasons = {r.case: [] for r in results}
        for r in results:
            if not r.passed:
                reasons[r.case].append(r.reason)
        for name in failed:
            print(f"GATE FAILED: {name}: {'; '.join(reasons[name])}", file=sys.stderr)
        print(f"quantomni compare: {len(failed)} case(s) failed the gates: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None, engine_factory: EngineFactory | None = None) -> int:
    """Stand-alone entry (``python -m quantomni.compare.cli``) until the main CLI mounts the command."""
    parser = add_compare_arguments(argparse.ArgumentParser(prog="quantomni compare"))
    return run_compare_command(parser.parse_args(argv), engine_factory)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
