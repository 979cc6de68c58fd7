"""Quantized layers that dispatch to kernels."""
