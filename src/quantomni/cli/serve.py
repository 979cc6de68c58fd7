"""quantomni serve MODEL [--quantization ...] [--host 127.0.0.1] [--port 8091] [--api-key KEY] ..."""

from __future__ import annotations

from quantomni.cli.main import add_quantization_arguments, quantization_config_arg


def add_arguments(p):
    p.add_argument("model", help="diffusers-format model directory")
    add_quantization_arguments(p)
    p.add_argument("--served-model-name", default=None, help="name clients pass as `model` (default: directory name)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8091)
    p.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY` on /v1 (or QUANTOMNI_API_KEY)")
    p.add_argument("--max-batch-size", type=int, default=4)
    p.add_argument("--max-queue", type=int, default=64)
    p.add_argument("--request-timeout", type=float, default=300.0, help="seconds before a request is answered 504")
    p.add_argument("--max-pixels", type=int, default=2048 * 2048)
    p.add_argument("--default-size", default=None, help="WxH used when a request gives no size (default 1024x1024)")
    p.add_argument("--default-steps", type=int, default=None, help="steps used when a request gives none")
    p.add_argument("--enforce-eager", action="store_true",
                   help="do not capture the denoiser step in CUDA graphs (graphs are the default on CUDA)")
    p.add_argument("--moe-backend", default="auto", choices=["auto", "torch", "grouped"],
                   help="multi-stage omni models: MoE experts backend")
    p.add_argument("--experts-format", default="auto", choices=["auto", "fp8", "int8", "nvfp4", "none"],
                   help="multi-stage omni models: storage of the experts of a quantized stage")


def _settings(args):
    from quantomni.serve.settings import ServeSettings

    kw = dict(host=args.host, port=args.port, max_batch_size=args.max_batch_size, max_queue=args.max_queue,
              request_timeout_s=args.request_timeout, max_pixels=args.max_pixels)
    if args.api_key:
        kw["api_key"] = args.api_key
    if args.default_size:
        kw["default_size"] = args.default_size
    if args.default_steps:
        kw["default_num_inference_steps"] = args.default_steps
    return ServeSettings(**kw)


def run(args) -> int:
    from quantomni.pipeline.omni import Omni
    from quantomni.serve.server import run_server

    import torch

    settings = _settings(args)  # validate flags before spending time on loading
    from quantomni.multistage.stages import is_multistage_dir

    if is_multistage_dir(args.model):
        if args.attention != "sdpa":
            raise ValueError("--attention int8 applies to diffusion denoisers (FLUX, Wan), not to multi-stage omni models")
        extra = {"moe_backend": args.moe_backend, "experts_format": args.experts_format}
    else:
        on_cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
        extra = {"cuda_graphs": on_cuda and not args.enforce_eager, "force_cutlass_fp8": args.force_cutlass_fp8,
                 "attention": args.attention}
    omni = Omni(
        args.model, quantization=args.quantization, quantization_config=quantization_config_arg(args.quantization_config),
        linear_backend=args.linear_backend, dtype=args.dtype, device=args.device, gguf_model=args.gguf_model,
        model_id=args.served_model_name, **extra,
    )
    if hasattr(omni, "set_progress"):
        omni.set_progress(False)  # one progress bar per request would flood the server log
    run_server(omni, settings)
    return 0
