"""NVFP4 weights on GPUs without FP4 tensor cores (Hopper): decode E2M1 + E4M3 block scales in
registers, then BF16 tensor-core MMA.

* ``nvfp4_gemv``: M <= 16 (decode). Each program owns BLOCK_N output channels and a K slice
  (split-K where there are too few column tiles to fill the GPU; the partial sums meet in a reused
  workspace and the last program applies the epilogue) and streams the packed weight once (0.5625
  bytes per weight with scales). M == 1 runs on CUDA cores, M > 1 as a swapped-operand dot
  ``w @ x.T`` (see ``gemv_kernel``). Low and high nibbles are decoded as two half-width tiles and
  multiplied with the even and odd columns of x, so no register shuffle (join/interleave) is
  needed. On NVIDIA GPUs the MMA modes decode through inline PTX (two weights per bf16x2
  instruction, ``_e2m1x4_bf16``) and mode 0 widens x pairs the same way (``_x_pairs_f32``); the
  CPU interpreter runs the float32 decode, which gives bit-identical weights. Loads are pipelined
  explicitly (``tl.range`` stages). Bound by instruction issue and latency rather than by memory
  (docs/performance.md, fourth pass).
* ``nvfp4_dequantize_bf16``: one pass writes the dense bf16/fp16 weight (value x block scale x
  global scale) for a cuBLAS GEMM at large M. Each packed byte becomes one 32-bit word holding its
  two 16-bit values (low nibble = even column = low half-word, little-endian), stored as int32: no
  interleave shuffle and 16-byte stores.

E2M1 is decoded by placing its bits in a float32 (value x 2**-126, exact; see ``_e2m1_lo``), the
2**126 being folded into the scales. E2M1 value x E4M3 block scale has at most 6 significant bits,
so it is exact in bf16; the global scale is applied in fp32 in the GEMV epilogue and folded into the
dense weight in the dequantizer (one rounding, 2**-9 relative in bf16). On the M == 1 path x is
scaled by 2**63 instead of the block scale, so activations between about 2**-63 and 2**64 in
magnitude keep full precision (far wider than any activation range seen in practice).
"""

from __future__ import annotations

import dataclasses
import functools
import os

import torch
import triton
import triton.language as tl

from quantomni.kernels.triton._common import fixup_workspace, num_sms
from quantomni.kernels.triton._jit import pack_16bit_pairs

# Imported only when the Triton NVFP4 backend runs (kernels/nvfp4_triton.py imports this lazily).



@triton.jit
def _e2m1_lo(p):
    """p: int32 packed bytes -> float32 (E2M1 value of the low nibble) x 2**-126, by placing the
    nibble's sign bit at bit 31 and its 3 exponent/mantissa bits at bits 24..22. Exact for all 16
    codes: the exponent field is e (e = 0 gives the fp32 subnormal 0.5 x 2**-126 for code 1). The
    caller folds 2**126 into the scales (as 2**63 x 2**63, so nothing overflows). 5 integer ops."""
    return (((p & 0x8) << 28) | ((p & 0x7) << 22)).to(tl.float32, bitcast=True)


@triton.jit
def _e2m1_hi(p):
    """As _e2m1_lo, for the high nibble."""
    return (((p & 0x80) << 24) | ((p & 0x70) << 18)).to(tl.float32, bitcast=True)


def _e2m1_pair_ptx(out: int, sign_shift: int, bits_shift: int) -> str:
    """PTX placing one nibble of each half of t as a bf16 (sign to bit 15, exponent/mantissa bits to
    8..6: E2M1 value x 2**-126), then scaling the pair by the bf16x2 scales in $3 into output $out."""
    return (f"shl.b32 a, t, {sign_shift}; shl.b32 b, t, {bits_shift}; and.b32 a, a, 0x80008000; "
            f"and.b32 b, b, 0x01C001C0; or.b32 a, a, b; fma.rn.bf16x2 ${out}, a, $3, nz;")


#: low nibbles (bits 3..0 of each half) sit 12 / 6 bits below their bf16 places, high nibbles 8 / 2
_E2M1X2_PTX = tl.constexpr(
    "{ .reg .b32 t, a, b, z, nz; mov.b32 z, 0; mov.b32 nz, 0x80008000; prmt.b32 t, $2, z, 0x4140; "
    + _e2m1_pair_ptx(0, 12, 6) + " " + _e2m1_pair_ptx(1, 8, 2) + " }")


@triton.jit
def _e2m1x4_bf16(p, scale):
    """Inline-PTX decode for the MMA modes: p uint8 packed bytes, scale bf16 (block scale x 2**118,
    broadcast to p's shape) -> (low-nibble, high-nibble) bf16 tensors of E2M1 value x block scale x
    2**-8, exact. Two bytes per call (the pair a thread holds in the MMA operand layout): PRMT puts
    byte 0 and byte 1 in the two halves of a word, two shifts and masks place the sign and
    exponent/mantissa bits of one nibble per half (a bf16 pair of E2M1 value x 2**-126; code 1 is
    the bf16 subnormal 2**-127), and one bf16x2 FMA applies the two scales: 5-6 instructions per
    pair of weights instead of about 8 for the float32 decode."""
    return tl.inline_asm_elementwise(
        asm=_E2M1X2_PTX, constraints="=r,=r,r,r",
        args=[p, scale], dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=2)


@triton.jit
def _x_pairs_f32(xw):
    """Inline PTX for the M == 1 path: xw int32 words, each a bf16 pair (even column low, odd column
    high) -> (even, odd) float32 tensors of x x 2**63. One bf16x2 multiply scales both (exact; NaN
    and inf stay so, |x| >= 2**65 becomes inf), and each half widens to float32 by a shift or a mask:
    3 instructions per pair instead of the split, two conversions and two multiplies."""
    return tl.inline_asm_elementwise(
        asm="""
        {
        .reg .b32 t, c;
        mov.b32 c, 0x5F005F00;
        mul.rn.bf16x2 t, $2, c;
        shl.b32 $0, t, 16;
        and.b32 $1, t, 0xFFFF0000;
        }
        """,
        constraints="=r,=r,r",
        args=[xw], dtype=(tl.float32, tl.float32), is_pure=True, pack=1)


@triton.jit
def gemv_kernel(x_ptr, w_ptr, s_ptr, out_ptr, part_ptr, cnt_ptr, gscale_ptr, bias_ptr, M, N, split,
                stride_xm, stride_wn, stride_sn, stride_om, K_PER_SPLIT: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ATOMIC: tl.constexpr, HAS_BIAS: tl.constexpr,
                MODE: tl.constexpr, X_SPLIT: tl.constexpr, DOT_F32: tl.constexpr, DECODE_ASM: tl.constexpr,
                STAGES: tl.constexpr):
    """out[:M, n-tile] = x @ w.T (+ bias) over one K slice of K_PER_SPLIT inputs.

    MODE 0 (M == 1): CUDA-core multiply-add of the unscaled decoded weights, summed per 16-input
    scale block, then scaled once per block into a [BLOCK_N, BLOCK_K/16] accumulator that is
    reduced after the K loop. MODE 1: tensor-core dot x[16, K] @ w.T (M padded to 16).
    MODE 2 (swap-AB): w[BLOCK_N, K] @ x.T, so the decoded weight is the MMA's A operand (64+ rows)
    and the 16 padded token rows are its narrow N side.
    X_SPLIT: x is read contiguously and split into even/odd columns in registers; otherwise with
    two stride-2 loads. ATOMIC (split-K): partial sums are atomically added into the zeroed fp32
    workspace part_ptr [M, N]; the last program of each N tile (arrival counter cnt_ptr) applies the
    epilogue and leaves workspace and counter zeroed for the next call (one launch, no memset)."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    HALF: tl.constexpr = BLOCK_K // 2
    GROUPS: tl.constexpr = BLOCK_K // 16
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = tl.arange(0, BLOCK_M)
    nmask = rn < N
    mmask = rm < M
    rn_safe = tl.where(nmask, rn, 0).to(tl.int64)  # out-of-range rows read row 0; never stored
    rb = tl.arange(0, HALF)
    rs = tl.arange(0, GROUPS)
    if MODE == 0:
        acc = tl.zeros((BLOCK_N, GROUPS), dtype=tl.float32)
    elif MODE == 1:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    k_start = pid_k * K_PER_SPLIT
    for it in tl.range(0, K_PER_SPLIT // BLOCK_K, num_stages=STAGES):  # loads pipelined STAGES deep
        k0 = k_start + it * BLOCK_K
        # packed bytes b -> columns 2b (low nibble) and 2b + 1 (high nibble); K is a multiple of BLOCK_K
        p = tl.load(w_ptr + rn_safe[:, None] * stride_wn + (k0 // 2 + rb)[None, :])
        s = tl.load(s_ptr + rn_safe[:, None] * stride_sn + (k0 // 16 + rs)[None, :])
        scale = s.to(tl.float8e4nv, bitcast=True).to(tl.float32)
        if MODE == 0:
            # x x 2**63 times decoded (true x 2**-126) = true x x x 2**-63; summed over each 16-input
            # scale block, then scaled once per block (not per weight)
            if DECODE_ASM:  # bf16 x read as int32 pairs (k0 is even)
                xw = tl.load(x_ptr.to(tl.pointer_type(tl.int32), bitcast=True) + k0 // 2 + rb)
                x_even, x_odd = _x_pairs_f32(xw)
            else:
                if X_SPLIT:
                    xv = tl.load(x_ptr + k0 + tl.arange(0, BLOCK_K)).to(tl.float32)
                    x_even, x_odd = tl.split(tl.reshape(xv, (HALF, 2)))
                else:
                    x_even = tl.load(x_ptr + k0 + 2 * rb).to(tl.float32)
                    x_odd = tl.load(x_ptr + k0 + 2 * rb + 1).to(tl.float32)
                x_even = x_even * 9.223372036854775808e18
                x_odd = x_odd * 9.223372036854775808e18
            p = p.to(tl.int32)
            t = _e2m1_lo(p) * x_even[None, :] + _e2m1_hi(p) * x_odd[None, :]
            acc += tl.sum(tl.reshape(t, (BLOCK_N, GROUPS, 8)), axis=2) * scale
        else:
            # decoded (true x 2**-126) x (block scale x 2**118) = true x scale x 2**-8, exact in bf16
            # (scale x 2**118 < 2**127; the smallest product, 0.5 x 2**-9 x 2**-8, is a normal bf16)
            scale = tl.reshape(scale * 3.3230699894622895e35, (BLOCK_N, GROUPS, 1))
            if DECODE_ASM:
                sc = tl.reshape(tl.broadcast_to(scale.to(tl.bfloat16), (BLOCK_N, GROUPS, 8)), (BLOCK_N, HALF))
                w_lo, w_hi = _e2m1x4_bf16(p, sc)
            else:
                p = p.to(tl.int32)
                w_lo = tl.reshape(tl.reshape(_e2m1_lo(p), (BLOCK_N, GROUPS, 8)) * scale, (BLOCK_N, HALF))
                w_hi = tl.reshape(tl.reshape(_e2m1_hi(p), (BLOCK_N, GROUPS, 8)) * scale, (BLOCK_N, HALF))
            xrow = x_ptr + rm[:, None] * stride_xm
            if X_SPLIT:
                xv = tl.load(xrow + (k0 + tl.arange(0, BLOCK_K))[None, :], mask=mmask[:, None], other=0.0)
                x_even, x_odd = tl.split(tl.reshape(xv, (BLOCK_M, HALF, 2)))
            else:
                x_even = tl.load(xrow + (k0 + 2 * rb)[None, :], mask=mmask[:, None], other=0.0)
                x_odd = tl.load(xrow + (k0 + 2 * rb + 1)[None, :], mask=mmask[:, None], other=0.0)
            if DOT_F32:  # the CPU interpreter mishandles in-kernel bf16 dot operands; same values in fp32
                x_even, x_odd = x_even.to(tl.float32), x_odd.to(tl.float32)
            elif not DECODE_ASM:
                x_even, x_odd = x_even.to(tl.bfloat16), x_odd.to(tl.bfloat16)
                w_lo, w_hi = w_lo.to(tl.bfloat16), w_hi.to(tl.bfloat16)
            else:
                x_even, x_odd = x_even.to(tl.bfloat16), x_odd.to(tl.bfloat16)
            if MODE == 1:
                acc = tl.dot(x_even, tl.trans(w_lo), acc)
                acc = tl.dot(x_odd, tl.trans(w_hi), acc)
            else:
                acc = tl.dot(w_lo, tl.trans(x_even), acc)
                acc = tl.dot(w_hi, tl.trans(x_odd), acc)
    if MODE == 0:
        res = tl.reshape(tl.sum(acc, axis=1), (1, BLOCK_N))
    elif MODE == 1:
        res = acc
    else:
        res = tl.trans(acc)
    if MODE == 0:
        res = res * (tl.load(gscale_ptr) * 9.223372036854775808e18)  # the other 2**63
    else:
        res = res * (tl.load(gscale_ptr) * 256.0)  # the 2**-8 of the decoded weights
    omask = mmask[:, None] & nmask[None, :]
    optrs = out_ptr + rm[:, None] * stride_om + rn[None, :]
    if ATOMIC:
        pptrs = part_ptr + rm[:, None] * N + rn[None, :]
        tl.atomic_add(pptrs, res, mask=omask)
        tl.debug_barrier()  # every thread's partial is issued before the arrival is counted
        arrived = tl.atomic_add(cnt_ptr + pid_n, 1)
        if arrived == split - 1:
            # read the sum where the atomics landed (L2), then leave zeros for the next call
            res = tl.atomic_add(pptrs, tl.zeros_like(res), mask=omask)
            tl.store(pptrs, tl.zeros_like(res), mask=omask)
            if HAS_BIAS:
                res += tl.load(bias_ptr + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
            tl.store(optrs, res.to(out_ptr.dtype.element_ty), mask=omask)
            tl.store(cnt_ptr + pid_n, 0)  # every program of this tile has arrived
    else:
        if HAS_BIAS:
            res += tl.load(bias_ptr + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
        tl.store(optrs, res.to(out_ptr.dtype.element_ty), mask=omask)


@triton.jit
def dequant_kernel(w_ptr, s_ptr, out_ptr, gscale_ptr, N, stride_wn, stride_sn, stride_on,
                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PAIRS: tl.constexpr, FP16: tl.constexpr):
    """BLOCK_N rows x BLOCK_K columns per program (K % BLOCK_K == 0). PAIRS: 16-bit output (bf16, or
    fp16 when FP16), out_ptr is its int32 view and each packed byte becomes one word; otherwise out_ptr
    is float32 and gets two strided stores."""
    HALF: tl.constexpr = BLOCK_K // 2
    GROUPS: tl.constexpr = BLOCK_K // 16
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k0 = tl.program_id(1) * BLOCK_K
    nmask = rn < N
    rb = k0 // 2 + tl.arange(0, HALF)
    rs = k0 // 16 + tl.arange(0, GROUPS)
    p = tl.load(w_ptr + rn[:, None] * stride_wn + rb[None, :], mask=nmask[:, None], other=0).to(tl.int32)
    s = tl.load(s_ptr + rn[:, None] * stride_sn + rs[None, :], mask=nmask[:, None], other=0)
    # (true x 2**-126) x (block scale x 2**63) x (global scale x 2**63): no intermediate overflows
    scale = s.to(tl.float8e4nv, bitcast=True).to(tl.float32) * 9.223372036854775808e18
    scale = tl.reshape(scale, (BLOCK_N, GROUPS, 1))
    gs = tl.load(gscale_ptr) * 9.223372036854775808e18
    lo = tl.reshape(tl.reshape(_e2m1_lo(p), (BLOCK_N, GROUPS, 8)) * scale, (BLOCK_N, HALF)) * gs
    hi = tl.reshape(tl.reshape(_e2m1_hi(p), (BLOCK_N, GROUPS, 8)) * scale, (BLOCK_N, HALF)) * gs
    if PAIRS:
        word = pack_16bit_pairs(lo, hi, FP16)
        # stride_on counts int32 words (two 16-bit values)
        tl.store(out_ptr + rn[:, None] * stride_on + rb[None, :], word, mask=nmask[:, None])
    else:
        optr = out_ptr + rn[:, None] * stride_on + 2 * rb[None, :]
        tl.store(optr, lo.to(out_ptr.dtype.element_ty), mask=nmask[:, None])
        tl.store(optr + 1, hi.to(out_ptr.dtype.element_ty), mask=nmask[:, None])


def _check(weight, weight_scale, weight_scale_2):
    if weight.dtype != torch.uint8 or weight.dim() != 2:
        raise ValueError(f"weight: expected uint8 [N, K/2], got {weight.dtype} {tuple(weight.shape)}")
    n, k = weight.shape[0], weight.shape[1] * 2
    if k % 64:
        raise ValueError(f"in_features must be a multiple of 64 for the Triton NVFP4 kernels, got {k}")
    if tuple(weight_scale.shape) != (n, k // 16):
        raise ValueError(f"weight_scale: expected [{n}, {k // 16}], got {tuple(weight_scale.shape)}")
    if weight_scale_2.numel() != 1:
        raise ValueError("weight_scale_2: expected one float32 value")
    if weight.stride(1) != 1 or weight_scale.stride(1) != 1:
        raise ValueError("weight and weight_scale must be contiguous along K")
    return n, k


@dataclasses.dataclass(frozen=True)
class GemvPlan:
    """Tile plan of the decode GEMV (see gemv_kernel): MODE, tiles, split-K, pipeline."""

    mode: int
    block_n: int
    block_k: int
    split: int
    x_split: bool
    num_stages: int
    num_warps: int
    decode_asm: bool = True  # NVIDIA GPUs: inline PTX (_e2m1x4_bf16 in modes 1/2, _x_pairs_f32 in mode 0)


@functools.lru_cache(maxsize=1024)  # called on every decode step with the same few shapes
def gemv_plan(m: int, n: int, k: int, sms: int = 132, **override) -> GemvPlan:
    """Tile plan for the decode GEMV, from the sweep (benchmarks/sweep_weight_kernels.py --parts gemv:
    graph-mode time over FLUX and omni shapes at M = 1, 4, 16, on an H100 and an H200):

    * M == 1: CUDA-core mode 0, 16 x 512 tiles (8 rows when N / 16 gives under 2.5 programs per SM),
      K split so that no program reads more than 4096 inputs.
    * M > 1: swapped dot (mode 2) with the inline-PTX decode, 64-row tiles, BLOCK_K 256 up to K = 2048
      else 128. split-K: none when the column tiles fill 0.7 of the SMs (2 when they fill under 1.5
      and K >= 3072), else the smallest of 1, 2, 4, 8 giving 3 programs per SM (or the largest that
      divides K).
    * loads pipelined 4 deep.

    Keyword arguments (mode, block_n, block_k, split, x_split, num_stages, num_warps, decode_asm)
    override."""
    mode = override.get("mode")
    if mode is None:
        mode = 0 if m == 1 else 2
    if mode == 0 and m != 1:
        raise ValueError(f"mode 0 (CUDA-core) handles M == 1 only, got M={m}")
    bk = override.get("block_k") or (512 if mode == 0 else 256 if k <= 2048 else 128)
    while k % bk:
        bk //= 2
    fits = [sp for sp in (1, 2, 4, 8) if k % (bk * sp) == 0]
    if mode == 0:
        split_k = next((sp for sp in fits if k // sp <= 4096), fits[-1])
        bn = override.get("block_n") or (16 if -(-n // 16) * split_k >= 2.5 * sms else 8)
    else:
        bn = override.get("block_n") or 64
    split = override.get("split")
    if split is None:
        tiles = -(-n // bn)
        if mode == 0:
            split = split_k
        elif tiles >= 0.7 * sms:
            split = 2 if tiles < 1.5 * sms and k >= 3072 and 2 in fits else 1
        else:
            split = next((sp for sp in fits if tiles * sp >= 3 * sms), fits[-1])
    if k % (bk * split):
        raise ValueError(f"K={k} is not a multiple of BLOCK_K*split={bk * split}")
    x_split = override.get("x_split")
    return GemvPlan(mode=mode, block_n=bn, block_k=bk, split=split,
                    x_split=bool(mode != 1 if x_split is None else x_split),
                    num_stages=override.get("num_stages") or 4, num_warps=override.get("num_warps") or 4,
                    decode_asm=bool(override.get("decode_asm", True)))


@functools.lru_cache(maxsize=None)
def _ptx_device(index: int) -> bool:
    return torch.version.hip is None and torch.cuda.get_device_capability(index) >= (8, 0)


def _ptx_ok(device) -> bool:
    """The inline-PTX decode runs on NVIDIA sm_80+ (bf16x2 FMA), not in the CPU interpreter."""
    if device.type != "cuda" or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return False
    return _ptx_device(device.index if device.index is not None else torch.cuda.current_device())


def _use_asm(plan: GemvPlan, x) -> bool:
    """Inline PTX: the weight decode of modes 1/2, and in mode 0 the bf16 x pairs read as int32
    (needs bf16 x on a 4-byte boundary)."""
    if not (plan.decode_asm and _ptx_ok(x.device)):
        return False
    return plan.mode != 0 or (x.dtype == torch.bfloat16 and x.data_ptr() % 4 == 0)


def nvfp4_gemv(x, weight, weight_scale, weight_scale_2, bias=None, **plan_override):
    """x: [M <= 16, K] bf16/fp16 CUDA; weight: uint8 [N, K/2]; weight_scale: e4m3 (or its uint8
    bytes) [N, K/16]; weight_scale_2: f32 one element; bias: [N] or None. Returns [M, N] in x.dtype.
    Keyword arguments override the tile plan (gemv_plan; benchmarks sweep them)."""
    n, k = _check(weight, weight_scale, weight_scale_2)
    m = x.shape[0]
    if m > 16 or x.shape[1] != k:
        raise ValueError(f"x: expected [M <= 16, {k}], got {tuple(x.shape)}")
    if x.stride(1) != 1:
        x = x.contiguous()
    s8 = weight_scale.view(torch.uint8) if weight_scale.dtype != torch.uint8 else weight_scale
    gscale = weight_scale_2.reshape(1)
    if gscale.dtype != torch.float32:
        gscale = gscale.float()
    plan = gemv_plan(m, n, k, num_sms(x.device), **plan_override)
    out = torch.empty(m, n, device=x.device, dtype=x.dtype)
    n_tiles = triton.cdiv(n, plan.block_n)
    atomic = plan.split > 1
    if atomic:
        part, counters = fixup_workspace(x.device, m * n, n_tiles)
    else:
        part = counters = out
    gemv_kernel[(n_tiles, plan.split)](
        x, weight, s8, out, part, counters, gscale, gscale if bias is None else bias, m, n, plan.split,
        x.stride(0), weight.stride(0), s8.stride(0), out.stride(0), K_PER_SPLIT=k // plan.split, BLOCK_M=1 if plan.mode == 0 else 16,
        BLOCK_N=plan.block_n, BLOCK_K=plan.block_k, ATOMIC=atomic,
        HAS_BIAS=bias is not None, MODE=plan.mode, X_SPLIT=plan.x_split, DOT_F32=x.device.type == "cpu",
        DECODE_ASM=_use_asm(plan, x), STAGES=plan.num_stages,
        num_warps=plan.num_warps, num_stages=plan.num_stages)
    return out


def nvfp4_dequantize_bf16(weight, weight_scale, weight_scale_2, dtype=torch.bfloat16, *, block_n=16, block_k=None,
                          num_warps=8):
    """weight: uint8 [N, K/2]; weight_scale: e4m3 [N, K/16]; weight_scale_2: f32 one element.
    Returns the dense weight [N, K] in dtype (global scale folded in)."""
    n, k = _check(weight, weight_scale, weight_scale_2)
    bk = block_k or max(bk for bk in (64, 128, 256) if k % bk == 0)
    if k % bk:
        raise ValueError(f"K={k} is not a multiple of BLOCK_K={bk}")
    out = torch.empty(n, k, device=weight.device, dtype=dtype)
    s8 = weight_scale.view(torch.uint8)
    pairs = dtype in (torch.bfloat16, torch.float16)
    target = out.view(torch.int32) if pairs else out
    dequant_kernel[(triton.cdiv(n, block_n), k // bk)](
        weight, s8, target, weight_scale_2.reshape(1).float(), n, weight.stride(0), s8.stride(0),
        target.stride(0), BLOCK_N=block_n, BLOCK_K=bk, PAIRS=pairs, FP16=dtype == torch.float16,
        num_warps=num_warps)
    return out
