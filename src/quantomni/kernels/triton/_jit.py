"""@triton.jit helpers shared by several kernels. Importing this module imports triton: kernel modules
import it only where they already need triton (at their own import or inside their lazy builders)."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def pack_16bit_pairs(lo, hi, FP16: tl.constexpr):
    """Two float tensors of one shape -> int32 words holding (lo, hi) rounded to bf16 (fp16 when
    FP16), lo in the low half: one 32-bit store writes two adjacent 16-bit outputs, with no
    interleave shuffle."""
    if FP16:
        lo16 = lo.to(tl.float16).to(tl.int16, bitcast=True)
        hi16 = hi.to(tl.float16).to(tl.int16, bitcast=True)
    else:
        lo16 = lo.to(tl.bfloat16).to(tl.int16, bitcast=True)
        hi16 = hi.to(tl.bfloat16).to(tl.int16, bitcast=True)
    return (lo16.to(tl.int32) & 0xFFFF) | (hi16.to(tl.int32) << 16)
