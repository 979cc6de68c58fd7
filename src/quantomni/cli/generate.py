"""quantomni generate --model DIR [--quantization fp8] --prompt "..." --output out.png"""

from __future__ import annotations

import json
from pathlib import Path

from quantomni.cli.main import add_quantization_arguments, quantization_config_arg


def add_arguments(p):
    p.add_argument("--model", required=True, help="diffusers-format model directory")
    add_quantization_arguments(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--num-inference-steps", type=int, default=None)
    p.add_argument("--guidance-scale", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--num-images", type=int, default=1)
    p.add_argument("--output", default="output.png", help="image path; with several images, _N is appended")
    p.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    from quantomni.pipeline.omni import Omni

    omni = Omni(
        args.model, quantization=args.quantization, quantization_config=quantization_config_arg(args.quantization_config),
        linear_backend=args.linear_backend, dtype=args.dtype, device=args.device, progress=not args.no_progress,
        gguf_model=args.gguf_model, force_cutlass_fp8=args.force_cutlass_fp8, attention=args.attention,
    )
    result = omni.generate(
        args.prompt, negative_prompt=args.negative_prompt, height=args.height, width=args.width,
        num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale, seed=args.seed,
        num_images=args.num_images,
    )
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(result.images):
        path = out if len(result.images) == 1 else out.with_name(f"{out.stem}_{i}{out.suffix}")
        img.save(path)
        paths.append(str(path))
    summary = {
        "images": paths,
        "timings": {k: round(v, 4) for k, v in result.timings.items()},
        "load_time_s": round(omni.load_time_s, 4),
        "peak_memory_bytes": result.peak_memory_bytes,
        "denoiser_weight_bytes": omni.denoiser_weight_bytes,
        "quantization": {c: p.to_dict(with_layers=False) for c, p in omni.plans.items()},
        "attention": omni.attention_plan.to_dict(),
    }
    print(json.dumps(summary, indent=2))
    return 0
