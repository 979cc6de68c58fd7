"""CUDA C++ kernels compiled at run time with NVRTC (no build step; importing compiles nothing).

  runtime.py            NVRTC -> cubin, driver-API module load and launch on the current torch stream
  nvfp4_mma_layout.py   the load-time NVFP4 layout (same bytes) and a torch emulation of its decode
  nvfp4_mma.cu / .py    NVFP4 W4A16: decode-GEMV (M <= 16), MoE grouped decode-GEMV, exact dequantizer
"""
