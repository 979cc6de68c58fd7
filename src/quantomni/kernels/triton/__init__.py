"""Triton kernels for quantized linears on Hopper (sm_90) and newer; importing needs no triton.

Public entry points (each wrapper checks device/dtype/shape and raises KernelInputError):
  act_quant.per_token_quant_fp8 / per_token_quant_int8   fused one-pass per-token activation quant
  int8_gemm.int8_scaled_mm / int8_linear                  INT8 W8A8, int32 acc, fused epilogue
  fp8_gemm.fp8_scaled_mm / fp8_linear                     FP8 W8A8, fused epilogue
  nvfp4_fast.nvfp4_gemv / nvfp4_dequantize_bf16          NVFP4 W4A16: decode-GEMV (M <= 16), one-pass dequantizer
  gguf_gemm.q8_0_mm / q4_k_mm                             GGUF blocks read as stored, fused dequant GEMM
  group_affine_gemm.prepare_q8_0_weight / prepare_q4_k_weight / group_affine_mm
                                                          GGUF repacked once at load time (vector loads)
  torch_ops.register_ops()                                torch.library custom ops (torch.compile, graphs)
  support.is_supported / can_implement                    selection rules with reasons
  sm90_compile_check.compile_for_sm90()                   compile every kernel for sm_90a without a GPU
"""
