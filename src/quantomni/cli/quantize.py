"""quantomni quantize --model DIR --algo fp8|fp8_pcpt|nvfp4|w4a16_nvfp4|mixed [--policy P] --output OUT"""

from __future__ import annotations

import json

from quantomni.pipeline.quant_policy import ALGOS


def add_arguments(p):
    p.add_argument("--model", required=True, help="diffusers-format model directory (BF16/FP16/FP32 denoiser)")
    p.add_argument("--algo", required=True, choices=list(ALGOS), help="ModelOpt layout to write")
    p.add_argument("--policy", default=None,
                   help='mixed only: JSON file {"nvfp4": [globs], "fp8": [globs], "bf16": [globs]} (or a ranking '
                        'file with a "policy" key)')
    p.add_argument("--calib-prompts", default=None, help="text file, one calibration prompt per line (default: built-in)")
    p.add_argument("--calib-steps", type=int, default=4, help="denoising steps per calibration prompt")
    p.add_argument("--height", type=int, default=None, help="calibration image height (default: the pipeline's)")
    p.add_argument("--width", type=int, default=None, help="calibration image width (default: the pipeline's)")
    p.add_argument("--output", required=True, help="new directory for the quantized pipeline")
    p.add_argument("--dtype", default="bfloat16", help="dtype the pipeline runs in during calibration")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda if available)")
    p.add_argument("--max-shard-size", default="5GB",
                   help="largest weight file written, e.g. 5GB or 500MB (more shards + an index above it; the "
                        "export holds one shard in memory)")
    p.add_argument("--no-progress", action="store_true")


def parse_size(text: str) -> int:
    """'5GB' / '500MB' / '64KB' / '1024' -> bytes (powers of 1024)."""
    t = str(text).strip().upper()
    for unit, mult in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10), ("B", 1)):
        if t.endswith(unit):
            t, scale = t[: -len(unit)], mult
            break
    else:
        scale = 1
    try:
        value = float(t)
    except ValueError:
        raise ValueError(f"--max-shard-size: expected a size such as 5GB or 500MB, got {text!r}") from None
    if not value > 0:
        raise ValueError(f"--max-shard-size: must be positive, got {text!r}")
    return int(value * scale)


def run(args) -> int:
    from quantomni.pipeline.export_modelopt import quantize_pipeline, read_prompts

    prompts = read_prompts(args.calib_prompts) if args.calib_prompts else None
    report = quantize_pipeline(
        args.model, args.algo, args.output, policy=args.policy, calib_prompts=prompts, calib_steps=args.calib_steps,
        height=args.height, width=args.width, device=args.device, dtype=args.dtype, progress=not args.no_progress,
        max_shard_bytes=parse_size(args.max_shard_size),
    )
    print(json.dumps({
        "output": str(report.output), "component": report.component, "quant_algo": report.quant_algo,
        "layers": report.counts(), "calib_prompts": report.calib_prompts, "calib_steps": report.calib_steps,
        "checkpoint_bytes": report.checkpoint_bytes, "time_s": round(report.time_s, 3),
    }, indent=2))
    return 0
