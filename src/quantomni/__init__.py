"""quantomni: run and serve diffusion transformers and omni models quantized.

Public entry points:
- :func:`build_quant_config` turns any accepted quantization spec into one validated config.
- :class:`Omni` loads a diffusers-format model directory (optionally quantized) and generates.

Heavy modules (torch, diffusers) are imported lazily so ``import quantomni`` stays cheap.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["build_quant_config", "Omni", "PipelineQuantConfig", "__version__"]


def __getattr__(name: str):
    if name in ("build_quant_config", "PipelineQuantConfig"):
        from quantomni import config

        return getattr(config, name)
    if name == "Omni":
        from quantomni.pipeline.omni import Omni

        return Omni
    raise AttributeError(f"module 'quantomni' has no attribute {name!r}")
