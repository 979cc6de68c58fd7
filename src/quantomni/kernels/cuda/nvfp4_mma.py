"""NVFP4 W4A16 on GPUs without FP4 tensor cores, CUDA C++ (``nvfp4_mma.cu``, compiled with NVRTC).

* ``gemv(x, packed, ...)`` for M <= 64 (``linear`` uses it up to 32): decode in registers into
  ``mma.sync`` fragments, weights
  read once (memory-bound), K split over warps and blocks.
* ``dequantize(packed, ...)``: the bf16 weight, for cuBLAS at larger M.

``packed`` is the load-time layout of ``nvfp4_mma_layout`` (``relayout``). Under ``torch.compile``
both run through ``torch.ops.quantomni_cuda`` custom ops; both can be captured in CUDA graphs.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading

import torch

from quantomni.kernels.cuda import runtime
from quantomni.kernels.cuda.nvfp4_mma_layout import ROWS, STEP, cuda_defines

MAX_M = 16  # rows per MMA tile pair (and the MoE kernel's chunk)
GEMV_MAX_M = 64  # the GEMV kernels take up to this many rows (16 at a time above 16)
#: ``linear`` runs the GEMV up to this many rows, dequantize + cuBLAS above. H100 (60e877e): at M = 32
#: the GEMV is 0.90-1.56x BF16 where dequantize + cuBLAS is 0.46-0.79x; at M = 64 it is 0.52-0.82x,
#: below dequantize + cuBLAS on the small layers.
LINEAR_GEMV_MAX_M = 32
#: ... and up to GEMV_MAX_M rows on weights of at least this many elements (N * K). Same run, M = 64,
#: GEMV vs the dequantize + cuBLAS path of the triton backend: 0.82 vs 0.45x (3072 -> 12288),
#: 0.57 vs 0.49x (12288 -> 3072), 0.70 vs 0.44x (3072 -> 15360); below 32 Mi elements it loses or ties
#: (3072x3072 0.52 vs 0.64x, 2048x768 0.53 vs 0.77x, 768x2048 0.67 vs 0.79x, 2048x6144 0.65 vs 0.67x).
#: Large weights cost dequantize + cuBLAS a dense bf16 write and read per call; the GEMV reads the
#: packed bytes once per 16 rows.
LINEAR_GEMV_LARGE_WEIGHT = 32 * 2**20


def use_gemv(m: int, n: int, k: int) -> bool:
    """Whether ``linear`` runs the GEMV (else dequantize + cuBLAS) for an [m, k] x [n, k]^T product."""
    return m <= LINEAR_GEMV_MAX_M or (m <= GEMV_MAX_M and n * k >= LINEAR_GEMV_LARGE_WEIGHT)
WARPS = (2, 4, 8)
UNROLLS = (1, 2, 3, 4, 6)
DEQUANT_ITEMS = (1, 2, 4)
MOE_PLANS = ((4, 2), (8, 1))  # (warps, unroll) of the MoE GEMV


def _names() -> list[str]:
    names = [f"qo_nvfp4_gemv<{w}, {u}, {'true' if m16 else 'false'}>" for w in WARPS for u in UNROLLS for m16 in (False, True)]
    names += [f"qo_nvfp4_gemv_rows<{w}, {u}>" for w in WARPS for u in UNROLLS]
    names += [f"qo_nvfp4_moe_gemv<{w}, {u}, {'true' if m16 else 'false'}>" for w, u in MOE_PLANS for m16 in (False, True)]
    return names + [f"qo_nvfp4_dequant<{i}, {st}>" for i in DEQUANT_ITEMS for st in ("false", "true")]


@functools.cache
def source() -> str:
    with open(os.path.join(os.path.dirname(__file__), "nvfp4_mma.cu"), encoding="utf-8") as f:
        return cuda_defines() + f.read()


def _module(device: torch.device):
    return runtime.load("nvfp4_mma", source, _names(), device)


_fns: dict[tuple[int, str], object] = {}


def _kernel(device: torch.device, name: str):
    """The launchable kernel ``name`` on ``device``, looked up once (calls then skip the module
    lock and the name maps)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    fn = _fns.get((index, name))
    if fn is None:
        module, lowered = _module(device)
        fn = _fns[(index, name)] = module.function(lowered[name])
    return fn


def is_supported(device) -> tuple[bool, str]:
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available() or torch.version.cuda is None:
        return False, f"needs an NVIDIA CUDA device, got {device}"
    cap = torch.cuda.get_device_capability(device)
    if cap < (8, 0):
        return False, f"needs compute capability >= 8.0 (bf16 mma.sync), device has {cap[0]}.{cap[1]}"
    ok, why = runtime.nvrtc_available()
    if not ok:
        return False, why
    try:
        _module(device)
    except runtime.CudaRuntimeError as exc:
        return False, f"kernel build failed: {exc}"
    return True, "CUDA NVFP4 kernels (NVRTC)"


@dataclasses.dataclass(frozen=True)
class GemvPlan:
    warps: int
    unroll: int
    splits: int
    chunk: int  # K steps per split


@functools.lru_cache(maxsize=4096)
def gemv_plan(m: int, n: int, k: int, sms: int = 132, *, warps: int | None = None, unroll: int | None = None,
              splits: int | None = None) -> GemvPlan:
    """Blocks of ``warps`` warps on one 16-row tile, K split over the warps (and over ``splits``
    blocks, reduced with fp32 atomics).

    Rules from the H100 sweep (``benchmarks/sweep_weight_kernels.py --parts cuda_gemv``):
    * 8 warps per block, or 4 where 8 would put more than ~46 (M <= 8) / ~23 (M > 8, twice the
      activation registers) warps on each SM;
    * split K across blocks only for long K: about 6 (8 warps) or 12 (4 warps) steps per warp; at
      M > 8 a split uses 4 warps and 8 steps per warp;
    * unroll (loads of several steps in flight per warp) where few warps share an SM: all of a
      warp's steps (up to 6; 3 at M > 8) below 16 warps per SM, half of them below 32, else one.
    """
    tiles, steps = n // ROWS, k // STEP
    scale = sms / 132
    cap = (6144 if m <= 8 else 3072) * scale
    w = warps or (8 if tiles * 8 <= cap else 4)
    if splits is None:
        splits = max(1, round(steps / (w * (6 if w == 8 else 12))))
        if m > 8 and splits > 1 and warps is None:
            w = 4
            splits = max(1, round(steps / (w * 8)))
    splits = max(1, min(splits, steps))
    chunk = -(-steps // splits)
    splits = -(-steps // chunk)
    if unroll is None:
        per_sm = tiles * w * splits / sms
        per_warp = -(-chunk // w)
        if w == 4:
            unroll = 2 if m <= 8 else 1
        elif per_sm < 16:
            unroll = min(6 if m <= 8 else 3, per_warp)
        elif per_sm < 32:
            unroll = -(-per_warp // 2)
        else:
            unroll = 1
        unroll = max(u for u in UNROLLS if u <= max(1, unroll))
    return GemvPlan(w, unroll, splits, chunk)


_ws_lock = threading.Lock()
_workspaces: dict[int, list[torch.Tensor]] = {}


def _workspace(device: torch.device, floats: int, counters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zeroed fp32 partial sums and tile counters, shared by all layers of a device; every launch
    leaves them zero again. Buffers are only ever added (a captured CUDA graph keeps pointing at the
    one it used). One stream per device: concurrent launches on two streams would share them."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    with _ws_lock:
        bufs = _workspaces.setdefault(index, [])
        if not bufs or bufs[-1].numel() < floats + counters:
            size = max(floats + counters, 2 * bufs[-1].numel() if bufs else 1 << 16)
            bufs.append(torch.zeros(size, dtype=torch.float32, device=device))
        ws = bufs[-1]
    return ws[:floats], ws[floats:floats + counters].view(torch.int32)


def reserve_workspace(device: torch.device, n: int) -> None:
    """Allocate the split-K workspace for an N-wide layer now (at load time, not inside a CUDA
    graph capture)."""
    _workspace(torch.device(device), GEMV_MAX_M * n, n // ROWS)


def _check(x, packed, scales, n, k):
    if x.dim() != 2 or x.shape[1] != k:
        raise ValueError(f"x must be [M, {k}], got {list(x.shape)}")
    if x.dtype != torch.bfloat16:
        raise ValueError(f"x must be bfloat16, got {x.dtype}")
    if x.shape[0] > GEMV_MAX_M:
        raise ValueError(f"gemv handles M <= {GEMV_MAX_M}, got {x.shape[0]}")
    if tuple(packed.shape) != (n // ROWS, k // STEP, 32, 4) or packed.dtype != torch.int32:
        raise ValueError(f"packed weight must be int32 [{n // ROWS}, {k // STEP}, 32, 4], got {packed.dtype} {list(packed.shape)}")
    if tuple(scales.shape) != (n // ROWS, k // STEP, 32) or scales.dtype != torch.int16:
        raise ValueError(f"packed scales must be int16 [{n // ROWS}, {k // STEP}, 32], got {scales.dtype} {list(scales.shape)}")


def gemv(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, weight_scale_2: torch.Tensor,
         bias: torch.Tensor | None, n: int, plan: GemvPlan | None = None) -> torch.Tensor:
    """x [M <= 64, K] bf16 @ W^T (+ bias) -> [M, N] bf16."""
    k = x.shape[-1]
    _check(x, packed, scales, n, k)
    m = x.shape[0]
    if not x.is_contiguous() or x.data_ptr() % 16:
        x = x.contiguous().clone() if x.data_ptr() % 16 else x.contiguous()
    out = torch.empty(m, n, dtype=torch.bfloat16, device=x.device)
    if m == 0:
        return out
    if plan is None:
        plan = gemv_plan(m, n, k, _sm_count(x.device))
    if m > MAX_M:
        fn = _kernel(x.device, f"qo_nvfp4_gemv_rows<{plan.warps}, {plan.unroll}>")
    else:
        fn = _kernel(x.device, f"qo_nvfp4_gemv<{plan.warps}, {plan.unroll}, {'true' if m > 8 else 'false'}>")
    gscale = weight_scale_2.reshape(1).float() if weight_scale_2.dtype != torch.float32 else weight_scale_2
    if plan.splits > 1:
        ws, counters = _workspace(x.device, m * n, n // ROWS)
    else:
        ws, counters = gscale, gscale  # unused
    if bias is not None and bias.dtype != torch.bfloat16:
        bias = bias.to(torch.bfloat16)
    runtime.launch(fn, (n // ROWS, plan.splits, 1), (32 * plan.warps, 1, 1),
                   [packed, scales, x, gscale, bias if bias is not None else gscale, out, ws, counters,
                    m, n, k, plan.chunk, bias is not None])
    return out


def dequantize(packed: torch.Tensor, scales: torch.Tensor, weight_scale_2: torch.Tensor, n: int, k: int,
               items: int = 1, staged: bool = True) -> torch.Tensor:
    """The bf16 weight [N, K] (exactly the reference dequantization rounded to bf16).
    weight_scale_2: one f32, or one per row ([N]; stacked experts: [E, N] with N = E * rows)."""
    if tuple(packed.shape) != (n // ROWS, k // STEP, 32, 4):
        raise ValueError(f"packed weight must be [{n // ROWS}, {k // STEP}, 32, 4], got {list(packed.shape)}")
    per_row = weight_scale_2.numel() > 1
    if per_row and weight_scale_2.numel() != n:
        raise ValueError(f"weight_scale_2 must hold 1 or {n} values, got {weight_scale_2.numel()}")
    out = torch.empty(n, k, dtype=torch.bfloat16, device=packed.device)
    threads = (n // ROWS) * (k // STEP) * 32
    gscale = weight_scale_2.reshape(-1).float().contiguous()
    if items not in DEQUANT_ITEMS:
        raise ValueError(f"items must be one of {DEQUANT_ITEMS}")
    fn = _kernel(packed.device, f"qo_nvfp4_dequant<{items}, {'true' if staged else 'false'}>")
    runtime.launch(fn, (-(-threads // (256 * items)), 1, 1), (256, 1, 1),
                   [packed, scales, gscale, out, n, k, per_row])
    return out


def moe_gemv(rows: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, weight_scale_2: torch.Tensor,
             expert_of: torch.Tensor, offs: torch.Tensor, n: int, max_rows: int) -> torch.Tensor:
    """Experts on rows grouped by expert, without a host sync: rows [R, K] bf16 sorted by expert;
    packed [E, N/16, K/64, 32, 4], scales [E, N/16, K/64, 32], weight_scale_2 f32 [E, N];
    expert_of int32 [R] (sorted; E or more marks a dropped slot); offs int32 [E + 1] (start of each
    expert's rows); max_rows: a bound on rows per expert (<= 8 runs one MMA per decoded word).
    Returns [R, N] bf16; rows of dropped slots are zero."""
    r, k = rows.shape
    e = packed.shape[0]
    if rows.dtype != torch.bfloat16:
        raise ValueError(f"rows must be bfloat16, got {rows.dtype}")
    if tuple(packed.shape[1:]) != (n // ROWS, k // STEP, 32, 4) or tuple(scales.shape) != (e, n // ROWS, k // STEP, 32):
        raise ValueError(f"packed experts must be [E, {n // ROWS}, {k // STEP}, 32, 4] with matching scales, got "
                         f"{list(packed.shape)} / {list(scales.shape)}")
    if tuple(weight_scale_2.shape) != (e, n):
        raise ValueError(f"weight_scale_2 must be [{e}, {n}], got {list(weight_scale_2.shape)}")
    if expert_of.dtype != torch.int32 or tuple(expert_of.shape) != (r,):
        raise ValueError(f"expert_of must be int32 [{r}], got {expert_of.dtype} {list(expert_of.shape)}")
    if offs.dtype != torch.int32 or tuple(offs.shape) != (e + 1,):
        raise ValueError(f"offs must be int32 [{e + 1}], got {offs.dtype} {list(offs.shape)}")
    rows = rows.contiguous()
    if rows.data_ptr() % 16:
        rows = rows.clone()
    out = torch.zeros(r, n, dtype=torch.bfloat16, device=rows.device)
    if r == 0:
        return out
    m16 = "true" if max_rows > 8 else "false"
    warps, unroll = MOE_PLANS[0] if n // ROWS >= 64 else MOE_PLANS[1]
    fn = _kernel(rows.device, f"qo_nvfp4_moe_gemv<{warps}, {unroll}, {m16}>")
    runtime.launch(fn, (n // ROWS, r, 1), (32 * warps, 1, 1),
                   [packed, scales, rows, weight_scale_2.float().contiguous(), expert_of, offs, out, e, n, k])
    return out


@functools.cache
def _sm_count_cached(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _sm_count(device: torch.device) -> int:
    return _sm_count_cached(device.index if device.index is not None else torch.cuda.current_device())


# ---- torch.compile: custom ops ---------------------------------------------------------------

_ops_lock = threading.Lock()
_ops_registered = False


def register_ops() -> None:
    """``torch.ops.quantomni_cuda.nvfp4_mma_linear`` (idempotent; call outside any trace)."""
    global _ops_registered
    with _ops_lock:
        if _ops_registered:
            return

        @torch.library.custom_op("quantomni_cuda::nvfp4_mma_linear", mutates_args=())
        def nvfp4_mma_linear(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, weight_scale_2: torch.Tensor,
                             bias: torch.Tensor | None, n: int) -> torch.Tensor:
            return linear(x, packed, scales, weight_scale_2, bias, n)

        @nvfp4_mma_linear.register_fake
        def _(x, packed, scales, weight_scale_2, bias, n):
            return x.new_empty(x.shape[0], n)

        _ops_registered = True


def linear(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, weight_scale_2: torch.Tensor,
           bias: torch.Tensor | None, n: int) -> torch.Tensor:
    """x [M, K] -> [M, N] in x.dtype (bf16): the GEMV where ``use_gemv`` says so, else dequantize + cuBLAS."""
    if use_gemv(x.shape[0], n, x.shape[1]):
        return gemv(x, packed, scales, weight_scale_2, bias, n)
    w = dequantize(packed, scales, weight_scale_2, n, x.shape[1])
    return torch.nn.functional.linear(x, w, bias)
