"""``quantomni`` command: sub-commands are registered here and live one per module."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

#: sub-command -> module exposing ``add_arguments(parser)`` and ``run(args) -> int``
_COMMANDS = {
    "generate": ("quantomni.cli.generate", "generate images with an optionally quantized model"),
    "inspect": ("quantomni.cli.inspect_cmd", "show components, detected quantization and the per-layer plan"),
    "demo-model": ("quantomni.cli.demo_model", "write a built-in tiny random-weight pipeline"),
    "demo": ("quantomni.cli.demo", "BF16 vs FP8 vs INT8 on the built-in tiny model"),
    "compare": ("quantomni.cli.compare", "quality and speed of quantized candidates against a baseline"),
    "serve": ("quantomni.cli.serve", "OpenAI-compatible images server for a (quantized) model"),
    "quantize": ("quantomni.cli.quantize", "write a ModelOpt-layout pre-quantized copy of a pipeline (FP8/NVFP4/mixed)"),
    "chat": ("quantomni.cli.chat", "text chat with a multi-stage omni model's thinker (e.g. Qwen3-Omni)"),
}


def add_quantization_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by every command that loads a model."""
    parser.add_argument("--quantization", "-q", default=None,
                        help="method name (fp8, int8, ...) or 'none'; applies to the denoiser")
    parser.add_argument("--quantization-config", default=None,
                        help="JSON spec or path to a JSON file (method dict or per-component dict)")
    parser.add_argument("--gguf-model", default=None, metavar="PATH",
                        help="GGUF file that supplies the (already quantized) denoiser; the rest comes from the model dir")
    parser.add_argument("--linear-backend", default="auto",
                        help="auto | a backend name | per format: fp8=fused_scaled_mm,int8=triton,nvfp4=torch")
    parser.add_argument("--force-cutlass-fp8", action="store_true",
                        help="run FP8 layers on the scaled_mm (cuBLASLt) backend; error below CUDA cc 8.9")
    parser.add_argument("--attention", default="sdpa", choices=["sdpa", "int8"],
                        help="denoiser attention: sdpa (the model's own) or int8 (INT8 QK^T + FP8 PV; FLUX and Wan; "
                             "see docs/attention.md)")
    parser.add_argument("--dtype", default="bfloat16", help="dtype of unquantized parts (bfloat16, float16, float32)")
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda if available)")


def quantization_config_arg(value):
    """Parse --quantization-config: inline JSON or a path to a JSON file."""
    import json
    from pathlib import Path

    if value is None:
        return None
    text = value
    if not value.lstrip().startswith(("{", "[", '"')):
        path = Path(value)
        if not path.is_file():
            raise ValueError(f"--quantization-config: {value!r} is neither inline JSON nor an existing file")
        text = path.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--quantization-config: invalid JSON: {exc}") from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quantomni", description="Run and serve quantized diffusion models.")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module_name).add_arguments(p)
        p.set_defaults(_module=module_name)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), format="[quantomni] %(levelname)s %(message)s")
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except (ValueError, RuntimeError, OSError) as exc:
        # User-facing errors carry their own explanation; no traceback unless debugging.
        if args.log_level == "DEBUG":
            raise
        print(f"quantomni {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
