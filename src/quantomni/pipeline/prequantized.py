"""Detect pre-quantized (ModelOpt) components and route them to their runtime method.

Why: a ModelOpt export already selects its quantization; the user must not have to (and must
not be able to) pick another one. Rules:

* every component directory whose ``config.json`` carries a ModelOpt ``quantization_config``
  (or that has a ModelOpt ``hf_quant_config.json``) uses the runtime method its ``quant_algo``
  selects (``modelopt`` / ``modelopt_fp4`` / ``modelopt_mixed``); the others load from their own
  files in their own dtype unless a quantization is requested for them;
* requesting an online method (``quantization="fp8"``, or a per-component spec naming that
  component) for such a component is an error saying the checkpoint already selects its method;
  naming the same ModelOpt method is accepted;
* requesting a ModelOpt method for a component that has no ModelOpt config is an error.
"""

from __future__ import annotations

from pathlib import Path

from quantomni.config import PipelineQuantConfig, build_quant_config
from quantomni.config.base import DENOISER, DENOISER_COMPONENTS, QuantMethodConfig
from quantomni.errors import QuantizationError
from quantomni.formats.modelopt import read_modelopt_config
from quantomni.methods.registry import get_method_config_class


def detect_prequantized(model_dir: str | Path, components) -> dict[str, QuantMethodConfig]:
    """component -> bound ModelOpt method config, for each component directory that has one."""
    root = Path(model_dir)
    found: dict[str, QuantMethodConfig] = {}
    for comp in components:
        cdir = root / comp
        if not cdir.is_dir():
            continue
        parsed = read_modelopt_config(cdir)
        if parsed is None:
            continue
        cls = get_method_config_class(parsed.runtime_method)
        found[comp] = cls(checkpoint_dir=str(cdir))
    return found


def route_prequantized(
    model_dir: str | Path, components, requested: PipelineQuantConfig
) -> tuple[PipelineQuantConfig, dict[str, QuantMethodConfig]]:
    """Merge what the checkpoint selects with what the user asked for.

    Returns (the effective pipeline config, the detected {component: config}). Raises
    QuantizationError for an online method asked for a pre-quantized component, or a ModelOpt
    method asked for a component without a ModelOpt config.
    """
    detected = detect_prequantized(model_dir, components)
    if not detected and not any(
        c is not None and c.prequantized and getattr(c, "checkpoint_dir", "x") is None
        for c in requested.components.values()
    ):
        return requested, detected
    resolved = requested.resolve(list(components))
    for comp, cfg in resolved.items():
        if cfg is None:
            continue
        det = detected.get(comp)
        if det is not None:
            if cfg.method != det.method:
                parsed = det.modelopt
                raise QuantizationError(
                    f"{comp}: {Path(model_dir) / comp} is a pre-quantized NVIDIA ModelOpt checkpoint "
                    f"(quant_algo={parsed.quant_algo}); the checkpoint already selects its method "
                    f"({det.method}). Do not pass quantization={cfg.method!r}; load it without a quantization flag."
                )
        elif cfg.prequantized and getattr(cfg, "checkpoint_dir", "x") is None:
            raise QuantizationError(
                f"{comp}: quantization={cfg.method!r} needs a ModelOpt checkpoint, but {Path(model_dir) / comp} "
                f"has no ModelOpt quantization config (config.json quantization_config or hf_quant_config.json)"
            )
    for comp in detected:
        if comp not in DENOISER_COMPONENTS:
            raise QuantizationError(
                f"{comp}: ModelOpt checkpoints are supported for denoiser components {list(DENOISER_COMPONENTS)} "
                f"only; {Path(model_dir) / comp} carries one"
            )
    merged = {k: v for k, v in resolved.items() if k not in detected}
    merged.update(detected)
    spec = {k: v for k, v in merged.items() if k != DENOISER}
    return build_quant_config(spec) if spec else PipelineQuantConfig({}), detected


def force_scaled_mm_fp8(backends, device):
    """``force_cutlass_fp8``: FP8 layers must use the ``scaled_mm`` backend; an error where it
    cannot run (CPU, compute capability < 8.9) or when another FP8 backend was also named."""
    import torch

    from quantomni.kernels.fp8_scaled_mm import ScaledMmFp8Kernel
    from quantomni.pipeline.backends import BackendRequest

    ok, why = ScaledMmFp8Kernel.is_supported(torch.device(device))
    if not ok:
        raise QuantizationError(f"force_cutlass_fp8: the scaled_mm (CUTLASS/cuBLASLt) FP8 backend cannot run on {device}: {why}")
    current = backends.for_format("fp8")
    if current not in ("auto", ScaledMmFp8Kernel.name, *ScaledMmFp8Kernel.aliases):
        raise QuantizationError(f"force_cutlass_fp8 conflicts with linear_backend fp8={current!r}")
    return BackendRequest(backends.default, {**backends.per_format, "fp8": ScaledMmFp8Kernel.name})


def describe_detected(cfg, plan=None, counts_only: bool = False) -> dict:
    """What ``inspect`` shows for a detected ModelOpt component: quant_algo, producer, and per
    layer the stored format (``BF16`` for layers that stay unquantized); ``counts_only``: the
    number of layers per format instead (for ``Omni.describe``)."""
    parsed = cfg.modelopt
    out = {
        "method": cfg.method,
        "quant_algo": parsed.quant_algo,
        "producer": parsed.producer,
        "source": parsed.source,
        "ignore": list(parsed.ignore),
    }
    if plan is not None:
        formats = parsed.describe_layers([r.name for r in plan.records])
        if counts_only:
            counts: dict[str, int] = {}
            for fmt in formats.values():
                counts[fmt] = counts.get(fmt, 0) + 1
            out["layer_format_counts"] = counts
        else:
            out["layer_formats"] = formats
    return out
