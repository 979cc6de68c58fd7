"""quantomni demo: the main job on the built-in tiny model.

Writes a tiny random-weight FLUX pipeline, generates the same prompt/seed in BF16, FP8 and INT8,
saves the images and prints a table: denoiser weight bytes, latency, PSNR against BF16 and the
quantized-layer count.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path


def add_arguments(p):
    p.add_argument("--out", default="demo_out", help="output directory (model, images, report)")
    p.add_argument("--arch", default="flux", choices=["flux", "qwen-image", "sd3"])
    p.add_argument("--prompt", default="a red ceramic teapot on a wooden table")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--num-inference-steps", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per method (after one warm-up)")
    p.add_argument("--methods", default="none,fp8,int8")
    p.add_argument("--device", default=None)


def run(args) -> int:
    from quantomni.compare.metrics import psnr
    from quantomni.demo_models import write_demo_model
    from quantomni.pipeline.omni import Omni

    out = Path(args.out)
    model_dir = out / f"tiny-{args.arch}"
    if not (model_dir / "model_index.json").is_file():
        write_demo_model(model_dir, args.arch)
        print(f"wrote tiny random-weight {args.arch} pipeline to {model_dir}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    rows = []
    baseline = None
    for method in methods:
        omni = Omni(model_dir, quantization=None if method == "none" else method, device=args.device, progress=False)
        kw = dict(height=args.size, width=args.size, num_inference_steps=args.num_inference_steps, seed=args.seed)
        omni.generate(args.prompt, **kw)  # warm-up
        times, result = [], None
        for _ in range(max(1, args.repeats)):
            result = omni.generate(args.prompt, **kw)
            times.append(result.timings["total_s"])
        image = result.images[0]
        label = "bf16" if method == "none" else method
        path = out / f"{label}.png"
        image.save(path)
        if baseline is None:
            baseline = image
        plan = omni.plans.get(omni.denoiser_component)
        rows.append({
            "method": label,
            "kernels": ",".join(sorted(plan.backends())) if plan else "-",
            "denoiser_weight_bytes": omni.denoiser_weight_bytes,
            "latency_s": statistics.median(times),
            "psnr_vs_bf16_db": psnr(baseline, image),
            "quantized_layers": plan.quantized_count if plan else 0,
            "image": str(path),
            "load_time_s": omni.load_time_s,
        })
        omni.close()
    (out / "report.json").write_text(json.dumps({"device": str(omni.device), "rows": rows}, indent=2))
    header = f"{'method':8s} {'kernels':10s} {'denoiser bytes':>15s} {'latency (s)':>12s} {'PSNR vs BF16':>13s} {'quantized layers':>17s}"
    print()
    print(f"tiny {args.arch}, {args.size}x{args.size}, {args.num_inference_steps} steps, seed {args.seed}, device {omni.device}")
    print(header)
    print("-" * len(header))
    for r in rows:
        p = "inf" if r["psnr_vs_bf16_db"] == float("inf") else f"{r['psnr_vs_bf16_db']:.2f} dB"
        print(f"{r['method']:8s} {r['kernels']:10s} {r['denoiser_weight_bytes']:>15,d} {r['latency_s']:>12.4f} {p:>13s} {r['quantized_layers']:>17d}")
    print(f"\nimages and report.json in {out}/")
    return 0
