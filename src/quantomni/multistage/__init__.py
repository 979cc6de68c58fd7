"""Multi-stage omni models (transformers, e.g. Qwen3-Omni): per-stage quantization and text chat."""
