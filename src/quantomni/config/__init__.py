"""Quantization configuration: the entry point and the value objects it returns."""

from quantomni.config.base import (
    DENOISER,
    DENOISER_COMPONENTS,
    PipelineQuantConfig,
    QuantMethodConfig,
)
from quantomni.config.build import build_quant_config

__all__ = ["build_quant_config", "PipelineQuantConfig", "QuantMethodConfig", "DENOISER", "DENOISER_COMPONENTS"]
