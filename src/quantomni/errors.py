"""Exceptions users see. All subclass ValueError or RuntimeError so callers can catch broadly."""


class CheckpointError(ValueError):
    """A checkpoint on disk is missing, corrupt, truncated or does not match the model."""


class QuantizationError(RuntimeError):
    """A requested quantization could not be applied (e.g. it would quantize zero layers)."""


class GenerationCancelled(RuntimeError):
    """Raised inside generate() when its cancel_event is set between denoising steps."""
