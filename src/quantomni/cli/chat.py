"""quantomni chat --model DIR [--quantization fp8] --prompt "..." [--max-tokens N] [--temperature T] ..."""

from __future__ import annotations

import json
import sys

from quantomni.cli.main import add_quantization_arguments, quantization_config_arg


def add_arguments(p):
    p.add_argument("--model", required=True, help="multi-stage omni model directory (e.g. Qwen3-Omni)")
    add_quantization_arguments(p)
    p.add_argument("--moe-backend", default="auto", choices=["auto", "torch", "grouped"],
                   help="MoE experts: torch = reference loop, grouped = one batched matmul per projection")
    p.add_argument("--experts-format", default="auto", choices=["auto", "fp8", "int8", "nvfp4", "none"],
                   help="storage of the MoE experts of a quantized stage (auto = same as the method)")
    p.add_argument("--prompt", required=True, help="user message (sent through the chat template)")
    p.add_argument("--system", default=None, help="optional system message")
    p.add_argument("--raw", action="store_true", help="send the prompt as plain text, without the chat template")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    p.add_argument("--stream", action="store_true", help="print text as it is generated")
    p.add_argument("--json", action="store_true", help="print a JSON summary instead of the text")


def run(args) -> int:
    from quantomni.multistage.stages import is_multistage_dir
    from quantomni.multistage.textgen import SamplingParams
    from quantomni.pipeline.omni import Omni

    if not is_multistage_dir(args.model):
        raise ValueError(f"--model {args.model!r}: not a multi-stage omni model directory (config.json with a "
                         f"supported model_type such as qwen3_omni_moe); chat needs a text model")
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, seed=args.seed, stop=tuple(args.stop or ()))
    omni = Omni(args.model, quantization=args.quantization, quantization_config=quantization_config_arg(args.quantization_config),
                linear_backend=args.linear_backend, dtype=args.dtype, device=args.device, progress=False,
                moe_backend=args.moe_backend, experts_format=args.experts_format)
    if args.raw:
        messages = args.prompt
    else:
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": args.prompt}]
    result = None
    for delta, final in omni.chat_stream(messages, params, raw_prompt=args.raw):
        if args.stream and delta and not args.json:
            sys.stdout.write(delta)
            sys.stdout.flush()
        result = final or result
    if args.json:
        print(json.dumps({
            "text": result.text, "finish_reason": result.finish_reason, "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens, "token_ids": result.token_ids,
            "timings": {k: round(v, 4) for k, v in result.timings.items()},
            "quantization": {c: p.to_dict(with_layers=False) for c, p in omni.plans.items()},
        }, indent=2))
    elif args.stream:
        print()
    else:
        print(result.text)
    return 0
