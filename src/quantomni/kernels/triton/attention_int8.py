"""Quantized attention for Hopper (sm_90): softmax(q k^T * scale) v with Q K^T in INT8 and P V in
FP8 E4M3, both on the 8-bit tensor cores (twice the BF16 rate).

Why: attention does not shrink with weight quantization, and at video lengths it is about half of
a DiT step (Wan 2.1 at 480p, 81 frames: 32760 tokens, about 37 ms per layer in BF16 on an H100).

Semantics (the torch model of the same quantization is kernels/attention_torch.py):
- q, k, v are [B, N, H, D] (diffusers' layout; any strides with unit stride along D), non-causal,
  no mask, D in {64, 128}; NQ may differ from NK (cross-attention). The output is [B, NQ, H, D]
  contiguous, in q's dtype (bf16 or fp16).
- Q: INT8, one scale per (batch, head, BLOCK_M query rows), computed inside the attention kernel
  from the bf16 tile (amax / 127, round half to even), so Q is never written back quantized.
- K: INT8 and V: FP8, one scale per (batch, head, BLOCK_N keys), written by ``quantize_kv`` in one
  pass over K and V, after one reduction over K for its smoothing: the per-channel mean over the
  keys is subtracted first (softmax is invariant to it; real DiTs' keys carry a channel bias that
  would otherwise set the INT8 scale: with a N(0, 10^2) channel bias the error is 3.9 % smoothed
  and 9.4 % not). V is stored transposed ([D, N], keys contiguous): 8-bit wgmma needs a K-major
  B operand.
- Scores are exact int32 dot products. The online softmax works on them in "raw" float units (one
  integer add, see ``_block``); 448 * P is produced directly by exp2 and cast to E4M3, the row sums
  use the unrounded values.
- Each key block's P V product is its own wgmma chain, added in float32 to the accumulator with the
  block's V scale: Hopper's FP8 wgmma accumulates with reduced precision, so the sum over all keys
  never stays inside the tensor core.
- NaN: a tile holding NaN gets a NaN scale (int8 has no NaN), so NaN in a query row makes its whole
  query block NaN, and NaN in a key or value makes the whole head's output NaN. NaN never passes.
- Error on N(0, 1)-like inputs: 3.4-4.2 % relative L2 against exact attention (bench_attention.py).

Importing this module imports triton (kernels/attention.py imports it lazily). The kernels run on
CUDA, or on the CPU interpreter when TRITON_INTERPRET=1 is set before triton is imported (tests).
"""
from __future__ import annotations

import math

import torch

import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from quantomni.kernels.triton._common import KernelInputError, check_device, interpret_mode

SUPPORTED_HEAD_DIMS = (64, 128)
_INPUT_DTYPES = (torch.bfloat16, torch.float16)


def _cfg(bm, bn, warps, stages):
    return {"BLOCK_M": bm, "BLOCK_N": bn, "num_warps": warps, "num_stages": stages}


#: From the H100 sweep (bench_attention.py, 2026-11-25): best of 10 plans on FLUX, Qwen-Image and Wan
#: lengths. One warpgroup per 64 query rows keeps the loop free of register spills.
DEFAULT_CONFIG = _cfg(64, 128, 4, 3)
INTERPRET_CONFIG = _cfg(32, 32, 4, 1)
#: swept by benchmarks/bench_attention.py (plans that spill registers at sm_90 are left out)
CANDIDATE_CONFIGS = [
    _cfg(64, 128, 4, 3), _cfg(64, 128, 4, 2), _cfg(64, 128, 4, 4), _cfg(64, 64, 4, 3), _cfg(64, 64, 4, 4),
    _cfg(128, 128, 8, 3), _cfg(128, 128, 8, 2), _cfg(128, 64, 8, 4),
]



@triton.jit
def _to_fp8(x, INTERPRET: tl.constexpr):
    """float32 -> E4M3 (round to nearest even). Triton 3.6's interpreter rounds some values that
    carry into the next binade down by a factor of two (126.5 -> 64), so there x is first rounded to
    4 significant bits (Veltkamp split with c = 2**20 + 1), which makes the cast exact for normals."""
    if INTERPRET:
        t = x * 1048577.0
        x = t - (t - x)
    return x.to(tl.float8e4nv)


@triton.jit
def _tile_scale(x, QMAX: tl.constexpr):
    """One scale for the whole tile: amax / QMAX (NaN ignored), at least 1e-12. Returns (the scale to
    divide by, the scale to store: NaN where the tile holds NaN)."""
    scale = tl.maximum(tl.max(tl.max(tl.abs(x), axis=1), axis=0) / QMAX, 1e-12)
    n_nan = tl.sum(tl.sum((x != x).to(tl.int32), axis=1), axis=0)
    return scale, tl.where(n_nan > 0, float("nan"), scale)


@triton.jit
def _to_int8_block(x):
    """INT8 codes with one tile scale, rounded half to even (the 1.5 * 2**23 trick, exact for
    |v| <= 2**22). A tile holding NaN gets a NaN scale (codes 0): NaN reaches every score it touches,
    since int8 has no NaN."""
    scale, stored = _tile_scale(x, 127.0)
    v = (x / scale + 12582912.0) - 12582912.0
    return tl.where(x != x, 0.0, v).to(tl.int8), stored


@triton.jit
def _load_rows(ptr, b, h, rows, n_valid, stride_b, stride_n, stride_h, D: tl.constexpr):
    """Rows ``rows`` of (batch b, head h) of a [B, N, H, D] tensor with unit stride along D, as
    float32; rows at or past n_valid read 0."""
    d = tl.arange(0, D)
    return tl.load(ptr + b.to(tl.int64) * stride_b + h * stride_h + rows.to(tl.int64)[:, None] * stride_n
                   + d[None, :], mask=(rows < n_valid)[:, None], other=0.0).to(tl.float32)


@triton.jit
def kv_quant_kernel(k_ptr, v_ptr, km_ptr, k8_ptr, v8_ptr, ks_ptr, vs_ptr, N, H,
                    stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh, NPAD, NBLK,
                    D: tl.constexpr, BLOCK_N: tl.constexpr, INTERPRET: tl.constexpr):
    j = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    n = j * BLOCK_N + tl.arange(0, BLOCK_N)
    d = tl.arange(0, D)
    ok = (n < N)[:, None]
    k = _load_rows(k_ptr, b, h, n, N, stride_kb, stride_kn, stride_kh, D)
    # smoothing: subtract the per-channel mean over all keys (softmax is invariant to it, and it
    # removes the channel bias that would otherwise set the INT8 scale)
    k = tl.where(ok, k - tl.load(km_ptr + bh * D + d)[None, :], 0.0)
    k8, ksc = _to_int8_block(k)
    tl.store(k8_ptr + (bh.to(tl.int64) * NPAD + n)[:, None] * D + d[None, :], k8)
    tl.store(ks_ptr + bh * NBLK + j, ksc)
    v = _load_rows(v_ptr, b, h, n, N, stride_vb, stride_vn, stride_vh, D)
    vsc, v_stored = _tile_scale(v, 448.0)
    v8 = _to_fp8(tl.where(v != v, 0.0, v / vsc), INTERPRET)
    # transposed: row (bh, d), column n
    tl.store(v8_ptr + (bh.to(tl.int64) * D + d)[None, :] * NPAD + n[:, None], v8)
    tl.store(vs_ptr + bh * NBLK + j, v_stored)


@triton.jit
def _block(acc, m_i, l_i, q8, k8_desc, v8_desc, ks_ptr, vs_ptr, c, j, kv_row, v_row, bh, N, NBLK,
           D: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, INTERPRET: tl.constexpr):
    """One key block of the online softmax. Scores stay in "raw" units r = int score + 1.5 * 2**23
    (an exact float, from one integer add), the logit in log2 units being c_j * (r - 1.5 * 2**23):
    the row max is taken on r, and the exponent c_j * r - (c_j * 1.5 * 2**23 + m) + log2(448) is one
    FFMA per score (the product is exact inside the FMA, so the large terms cancel to within one
    integer step of the score times c_j)."""
    k = k8_desc.load([kv_row + j * BLOCK_N, 0])
    r = (tl.dot(q8, k.T, out_dtype=tl.int32) + 0x4B400000).to(tl.float32, bitcast=True)
    if MASKED:
        cols = j * BLOCK_N + tl.arange(0, BLOCK_N)
        r = tl.where((cols < N)[None, :], r, float("-inf"))
    cj = c * tl.load(ks_ptr + bh * NBLK + j)
    m_new = tl.maximum(m_i, cj * (tl.max(r, axis=1) - 12582912.0))
    alpha = tl.exp2(m_i - m_new)
    bias = 8.807354922057604 - (cj * 12582912.0 + m_new)  # log2(448) - (c_j * 1.5 * 2**23 + m)
    p = tl.exp2(r * cj + bias[:, None])  # 448 * P, in [0, 448]
    l_i = l_i * alpha + tl.sum(p, axis=1)
    vt = v8_desc.load([v_row, j * BLOCK_N])
    pv = tl.dot(_to_fp8(p, INTERPRET), vt.T)
    acc = acc * alpha[:, None] + pv * tl.load(vs_ptr + bh * NBLK + j)
    return acc, m_new, l_i


@triton.jit
def attn_kernel(q_ptr, o_ptr, k8_desc, v8_desc, ks_ptr, vs_ptr, qk_scale, NQ, N, H,
                stride_qb, stride_qn, stride_qh, stride_ob, stride_on, stride_oh, NPAD, NBLK,
                D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, INTERPRET: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    d = tl.arange(0, D)
    row_ok = (rows < NQ)[:, None]
    q = _load_rows(q_ptr, b, h, rows, NQ, stride_qb, stride_qn, stride_qh, D)
    q8, qsc = _to_int8_block(q)
    c = qk_scale * qsc
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    kv_row = bh * NPAD
    v_row = bh * D
    n_full = N // BLOCK_N
    if INTERPRET:  # the interpreter cannot bound range() by a run-time scalar under numpy >= 2.3
        j = 0
        while j < n_full:
            acc, m_i, l_i = _block(acc, m_i, l_i, q8, k8_desc, v8_desc, ks_ptr, vs_ptr, c, j, kv_row, v_row,
                                   bh, N, NBLK, D, BLOCK_N, False, INTERPRET)
            j += 1
    else:
        for j in range(0, n_full):
            acc, m_i, l_i = _block(acc, m_i, l_i, q8, k8_desc, v8_desc, ks_ptr, vs_ptr, c, j, kv_row, v_row,
                                   bh, N, NBLK, D, BLOCK_N, False, INTERPRET)
    if n_full < NBLK:
        acc, m_i, l_i = _block(acc, m_i, l_i, q8, k8_desc, v8_desc, ks_ptr, vs_ptr, c, n_full, kv_row,
                               v_row, bh, N, NBLK, D, BLOCK_N, True, INTERPRET)
    out = acc / l_i[:, None]  # P and l both carry the factor 448
    tl.store(o_ptr + b.to(tl.int64) * stride_ob + h * stride_oh + rows.to(tl.int64)[:, None] * stride_on
             + d[None, :], out.to(o_ptr.dtype.element_ty), mask=row_ok)


def _check_qkv(q, k, v):
    for name, t in (("query", q), ("key", k), ("value", v)):
        if not isinstance(t, torch.Tensor):
            raise KernelInputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _INPUT_DTYPES:
            raise KernelInputError(f"{name} has dtype {t.dtype}; quantized attention takes bfloat16 or float16")
        if t.dim() != 4:
            raise KernelInputError(f"{name} has shape {tuple(t.shape)}; expected [batch, tokens, heads, head_dim]")
        check_device(name, t)
    if k.shape != v.shape:
        raise KernelInputError(f"key {tuple(k.shape)} and value {tuple(v.shape)} shapes differ")
    if q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise KernelInputError(f"query {tuple(q.shape)} and key {tuple(k.shape)} differ in batch, heads or head_dim "
                               "(grouped-query attention is not supported)")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise KernelInputError(f"query, key and value dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if len({q.device, k.device, v.device}) > 1:
        raise KernelInputError(f"query, key and value are on different devices: {q.device}, {k.device}, {v.device}")
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        raise KernelInputError(f"head_dim {q.shape[-1]} is not supported by quantized attention (supported: "
                               f"{SUPPORTED_HEAD_DIMS})")
    if k.shape[1] == 0:
        raise KernelInputError("key has no tokens")
    for name, t in (("query", q), ("key", k), ("value", v)):
        if t.stride(-1) != 1:
            raise KernelInputError(f"{name} must be contiguous along head_dim (stride {t.stride(-1)})")


def quantize_kv(k: torch.Tensor, v: torch.Tensor, block_n: int):
    """K and V [B, N, H, D] -> (k8 [B*H*NPAD, D], k_scale [B*H, NBLK], vt8 [B*H*D, NPAD], v_scale [B*H, NBLK])
    with NPAD = NBLK * block_n; rows past N are zero. K is smoothed first: its per-(batch, head,
    channel) mean over the keys is subtracted (q . mean is the same for every key of a row, so the
    softmax does not change)."""
    B, N, H, D = k.shape
    nblk = triton.cdiv(N, block_n)
    npad = nblk * block_n
    k8 = torch.empty((B * H * npad, D), dtype=torch.int8, device=k.device)
    vt8 = torch.empty((B * H * D, npad), dtype=torch.float8_e4m3fn, device=k.device)
    ks = torch.empty((B * H, nblk), dtype=torch.float32, device=k.device)
    vs = torch.empty_like(ks)
    k_mean = k.mean(dim=1, dtype=torch.float32).contiguous()  # [B, H, D]
    interp = interpret_mode()
    kv_quant_kernel[(nblk, B * H)](k, v, k_mean, k8, vt8, ks, vs, N, H, k.stride(0), k.stride(1), k.stride(2),
                                   v.stride(0), v.stride(1), v.stride(2), npad, nblk, D=D, BLOCK_N=block_n,
                                   INTERPRET=interp, **({} if interp else {"num_warps": 4}))
    return k8, ks, vt8, vs


def attention_int8_fp8(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
                       config: dict | None = None) -> torch.Tensor:
    """softmax(q k^T * scale) v for [B, N, H, D] inputs, INT8 Q K^T and FP8 P V (see the module doc).

    scale defaults to 1/sqrt(D). Raises KernelInputError for unsupported inputs."""
    _check_qkv(q, k, v)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    if not math.isfinite(scale):
        raise KernelInputError(f"attention scale {scale} is not finite")
    interp = interpret_mode()
    cfg = {**(INTERPRET_CONFIG if interp else DEFAULT_CONFIG), **(config or {})}
    B, NQ, H, D = q.shape
    NK = k.shape[1]
    out = torch.empty((B, NQ, H, D), dtype=q.dtype, device=q.device)
    if NQ == 0 or B == 0 or H == 0:
        return out
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    k8, ks, vt8, vs = quantize_kv(k, v, bn)
    npad, nblk = vt8.shape[1], ks.shape[1]
    k_desc = TensorDescriptor(k8, list(k8.shape), [D, 1], [bn, D])
    v_desc = TensorDescriptor(vt8, list(vt8.shape), [npad, 1], [D, bn])
    launch = {} if interp else {"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}
    attn_kernel[(triton.cdiv(NQ, bm), B * H)](
        q, out, k_desc, v_desc, ks, vs, scale * 1.4426950408889634, NQ, NK, H,
        q.stride(0), q.stride(1), q.stride(2), out.stride(0), out.stride(1), out.stride(2), npad, nblk,
        D=D, BLOCK_M=bm, BLOCK_N=bn, INTERPRET=interp, **launch)
    return out


def sm90_case(config: dict | None = None, head_dim: int = 128):
    """(name, kernel, signature, constexprs, indices of 16-divisible args, launch options) of the
    attention kernel for the ahead-of-time sm_90a compile check (sm90_compile_check)."""
    cfg = {**DEFAULT_CONFIG, **(config or {})}
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    sig = {"q_ptr": "*bf16", "o_ptr": "*bf16", "k8_desc": f"tensordesc<i8[{bn}, {head_dim}]>",
           "v8_desc": f"tensordesc<fp8e4nv[{head_dim}, {bn}]>", "ks_ptr": "*fp32", "vs_ptr": "*fp32",
           "qk_scale": "fp32", "NQ": "i32", "N": "i32", "H": "i32", "stride_qb": "i32", "stride_qn": "i32",
           "stride_qh": "i32", "stride_ob": "i32", "stride_on": "i32", "stride_oh": "i32", "NPAD": "i32",
           "NBLK": "i32", "D": "constexpr", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "INTERPRET": "constexpr"}
    consts = {"D": head_dim, "BLOCK_M": bm, "BLOCK_N": bn, "INTERPRET": False}
    names = list(sig)
    divisible = tuple(names.index(a) for a in ("q_ptr", "o_ptr", "ks_ptr", "vs_ptr", "stride_qb", "stride_qn",
                                               "stride_ob", "stride_on", "NPAD"))
    launch = triton.Config({}, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return f"attention_int8[{bm}x{bn},d{head_dim}]", attn_kernel, sig, consts, divisible, launch
