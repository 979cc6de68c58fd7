"""Kernels: shapes and dtypes in, tensors out. Nothing here knows about models."""
