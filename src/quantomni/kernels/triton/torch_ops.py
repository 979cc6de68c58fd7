"""torch.library custom ops wrapping the Triton kernels, so quantized linears trace under
torch.compile(fullgraph=True) without graph breaks and replay inside CUDA graphs.

Why custom ops: the wrappers hold Python-side checks, caches and autotuning that dynamo should not
trace; an opaque op with a fake (meta) implementation gives the compiler shapes and dtypes only.
Call register_ops() once (no side effects at import); the ops then live under torch.ops.quantomni_triton.
Warm each op up once before CUDA-graph capture (autotuning and the NVFP4 split-K workspace
allocate on the first call).
"""
from __future__ import annotations

from typing import Optional

import torch

NAMESPACE = "quantomni_triton"
_REGISTERED = False


def register_ops() -> None:
    """Register the custom ops (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from quantomni.kernels.nvfp4_triton import nvfp4_w4a16_linear

    from . import act_quant, fp8_gemm, gguf_gemm, group_affine_gemm, int8_gemm

    def op(name):
        return torch.library.custom_op(f"{NAMESPACE}::{name}", mutates_args=())

    @op("per_token_quant_fp8")
    def _ptq_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return act_quant.per_token_quant_fp8(x)

    @_ptq_fp8.register_fake
    def _(x):
        return x.new_empty(x.shape, dtype=torch.float8_e4m3fn), x.new_empty((x.shape[0], 1), dtype=torch.float32)

    @op("per_token_quant_int8")
    def _ptq_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return act_quant.per_token_quant_int8(x)

    @_ptq_int8.register_fake
    def _(x):
        return x.new_empty(x.shape, dtype=torch.int8), x.new_empty((x.shape[0], 1), dtype=torch.float32)

    @op("int8_scaled_mm")
    def _int8_mm(x_q: torch.Tensor, w_q: torch.Tensor, x_scale: torch.Tensor, w_scale: torch.Tensor,
                 bias: Optional[torch.Tensor], out_dtype: torch.dtype) -> torch.Tensor:
        return int8_gemm.int8_scaled_mm(x_q, w_q, x_scale, w_scale, bias, out_dtype)

    @_int8_mm.register_fake
    def _(x_q, w_q, x_scale, w_scale, bias, out_dtype):
        return x_q.new_empty((x_q.shape[0], w_q.shape[0]), dtype=out_dtype)

    @op("fp8_scaled_mm")
    def _fp8_mm(x_q: torch.Tensor, w_q: torch.Tensor, x_scale: torch.Tensor, w_scale: torch.Tensor,
                bias: Optional[torch.Tensor], out_dtype: torch.dtype) -> torch.Tensor:
        return fp8_gemm.fp8_scaled_mm(x_q, w_q, x_scale, w_scale, bias, out_dtype)

    @_fp8_mm.register_fake
    def _(x_q, w_q, x_scale, w_scale, bias, out_dtype):
        return x_q.new_empty((x_q.shape[0], w_q.shape[0]), dtype=out_dtype)

    @op("nvfp4_w4a16_mm")
    def _nvfp4(x: torch.Tensor, w_packed: torch.Tensor, w_scale: torch.Tensor, w_scale_2: torch.Tensor,
               bias: Optional[torch.Tensor], out_dtype: torch.dtype) -> torch.Tensor:
        # the backend's own path (decode-GEMV up to 16 rows, else dequantize + cuBLAS), in out_dtype
        x, bias = x.to(out_dtype), None if bias is None else bias.to(out_dtype)
        return nvfp4_w4a16_linear(x, w_packed, w_scale, w_scale_2, bias)

    @_nvfp4.register_fake
    def _(x, w_packed, w_scale, w_scale_2, bias, out_dtype):
        return x.new_empty((x.shape[0], w_packed.shape[0]), dtype=out_dtype)

    @op("q8_0_mm")
    def _q8_0(x: torch.Tensor, w_packed: torch.Tensor, bias: Optional[torch.Tensor],
              out_dtype: torch.dtype) -> torch.Tensor:
        return gguf_gemm.q8_0_mm(x, w_packed, bias, out_dtype)

    @_q8_0.register_fake
    def _(x, w_packed, bias, out_dtype):
        return x.new_empty((x.shape[0], w_packed.shape[0]), dtype=out_dtype)

    @op("q4_k_mm")
    def _q4_k(x: torch.Tensor, w_packed: torch.Tensor, bias: Optional[torch.Tensor],
              out_dtype: torch.dtype) -> torch.Tensor:
        return gguf_gemm.q4_k_mm(x, w_packed, bias, out_dtype)

    @_q4_k.register_fake
    def _(x, w_packed, bias, out_dtype):
        return x.new_empty((x.shape[0], w_packed.shape[0]), dtype=out_dtype)

    @op("group_affine_mm")
    def _group_affine(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, min: Optional[torch.Tensor],
                      bits: int, bias: Optional[torch.Tensor], out_dtype: torch.dtype) -> torch.Tensor:
        weight = group_affine_gemm.GroupAffineWeight(codes, scale, min, bits, x.shape[1])
        return group_affine_gemm.group_affine_mm(x, weight, bias, out_dtype)

    @_group_affine.register_fake
    def _(x, codes, scale, min, bits, bias, out_dtype):
        return x.new_empty((x.shape[0], codes.shape[0]), dtype=out_dtype)

    _REGISTERED = True
