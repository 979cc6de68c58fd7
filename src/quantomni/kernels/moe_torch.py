"""Quantized MoE expert math: weight dequantization, activation emulation, and two backends.

Expert weights are stored stacked over experts (``ExpertWeights`` in ``layers.moe``):
  fp8:   weight float8_e4m3fn [E, N, K], weight_scale f32 [E, N]  (per expert, per channel)
  int8:  weight int8 [E, N, K],          weight_scale f32 [E, N]
  nvfp4: weight uint8 [E, N, K/2] (2 E2M1 codes, low nibble = even column),
         weight_scale float8_e4m3fn [E, N, K/16] (per-expert block scales), weight_scale_2 f32 [E, N]
Activation modes (what happens to an expert's input before its matmul, emulated in float):
  "none" (weight-only), "fp8_token" (dynamic per-token FP8), "int8_token" (dynamic per-token INT8),
  "fp8_static" / "nvfp4_static" (static per-expert ``input_scale`` f32 [E], as ModelOpt exports).

Backends (``--moe-backend``):
  torch   — the reference: a Python loop over the experts that received tokens (any device).
  grouped — sorts the (token, expert) pairs by expert and runs ONE batched matmul per projection
            over the active experts (``torch._grouped_mm`` on CUDA sm90+ bf16 when present, else a
            padded ``torch.bmm``); no Python loop over experts.
Weights are dequantized only for the experts that received tokens (gathered by index), so
decode reads just the active experts' quantized bytes. The NVFP4 dequantizer is pluggable
(``register_expert_dequantizer``) so a fused Triton/CUDA kernel can replace it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch

from quantomni.kernels.nvfp4_ref import (E2M1_MAX, E2M1_VALUES, E4M3_MAX, E4M3_MIN_SCALE, NVFP4_BLOCK_SIZE,
                                         e2m1_round_codes, nvfp4_unpack)
from quantomni.kernels.quant_ops import quantize_act_fp8, quantize_act_int8

EXPERT_FORMATS = ("fp8", "int8", "nvfp4")
ACT_MODES = ("none", "fp8_token", "int8_token", "fp8_static", "nvfp4_static")
MOE_BACKENDS = ("auto", "torch", "grouped")


class MoEBackendError(RuntimeError):
    """The requested MoE backend cannot run here (says why)."""


# ----------------------------------------------------------------------------- dequantization
def _scaled(w, weight_scale, dtype):
    # e4m3 and int8 values are exact in bf16/fp16: multiply in the target dtype (half the traffic)
    work = dtype if dtype in (torch.bfloat16, torch.float16) else torch.float32
    return (w.to(work) * weight_scale.to(work).unsqueeze(-1)).to(dtype)


def dequant_fp8_experts(w, weight_scale, weight_scale_2, dtype):
    """w: e4m3 [G, N, K]; weight_scale: f32 [G, N]. Returns [G, N, K] in dtype."""
    return _scaled(w, weight_scale, dtype)


def dequant_int8_experts(w, weight_scale, weight_scale_2, dtype):
    """w: int8 [G, N, K]; weight_scale: f32 [G, N]. Returns [G, N, K] in dtype."""
    return _scaled(w, weight_scale, dtype)


_BYTE_PAIRS: dict = {}


def _byte_pair_table(device, dtype) -> torch.Tensor:
    """[256, 2] table: byte -> (value of low nibble, value of high nibble), in ``dtype``."""
    key = (device, dtype)
    if key not in _BYTE_PAIRS:
        codes = torch.arange(256, dtype=torch.uint8).view(256, 1)
        _BYTE_PAIRS[key] = nvfp4_unpack(codes).to(device=device, dtype=dtype)
    return _BYTE_PAIRS[key]


def dequant_nvfp4_experts(w, weight_scale, weight_scale_2, dtype):
    """w: uint8 [G, N, K/2]; weight_scale: e4m3 [G, N, K/16]; weight_scale_2: f32 [G, N].
    Returns [G, N, K] in dtype. One table lookup per byte (two values) through ``embedding``
    with int32 indices, then one multiply by the combined block scale: E2M1 values are exact in
    bf16/fp16/fp32, so only the (block scale x global scale) product is rounded to ``dtype``."""
    g, n, half = w.shape
    table = _byte_pair_table(w.device, dtype if dtype in (torch.bfloat16, torch.float16) else torch.float32)
    vals = torch.nn.functional.embedding(w.reshape(-1).to(torch.int32), table)
    vals = vals.view(g, n, half * 2 // NVFP4_BLOCK_SIZE, NVFP4_BLOCK_SIZE)
    scale = (weight_scale.float() * weight_scale_2.float().unsqueeze(-1)).to(vals.dtype)
    return (vals * scale.unsqueeze(-1)).reshape(g, n, half * 2).to(dtype)


_DEQUANTIZERS: dict[str, str | Callable] = {
    "fp8": dequant_fp8_experts,
    "int8": dequant_int8_experts,
    "nvfp4": dequant_nvfp4_experts,
}


def register_expert_dequantizer(fmt: str, fn: str | Callable) -> None:
    """Replace the dequantizer of ``fmt`` (a callable or "module:function" with the signature of
    ``dequant_nvfp4_experts``)."""
    if fmt not in EXPERT_FORMATS:
        raise ValueError(f"expert format {fmt!r} unknown; formats: {list(EXPERT_FORMATS)}")
    _DEQUANTIZERS[fmt] = fn


def expert_dequantizer(fmt: str) -> Callable:
    fn = _DEQUANTIZERS[fmt]
    if isinstance(fn, str):
        module, _, attr = fn.partition(":")
        fn = getattr(importlib.import_module(module), attr)
        _DEQUANTIZERS[fmt] = fn
    return fn


def dequant_experts(ew, index: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """Dequantize the experts ``index`` (long [G]; None = all) of an ExpertWeights -> [G, N, K]."""
    if getattr(ew, "weight_mma", None) is not None:
        return _dequant_mma_experts(ew, index, dtype)

    def pick(t):
        return None if t is None else (t if index is None else t.index_select(0, index))

    return expert_dequantizer(ew.fmt)(pick(ew.weight), pick(ew.weight_scale), pick(ew.weight_scale_2), dtype)


def _dequant_mma_experts(ew, index, dtype):
    """NVFP4 experts in the CUDA kernels' layout (``ExpertWeights.to_mma_layout``): the exact
    dequantization rounded to bf16 by the CUDA dequantizer (then cast to ``dtype``)."""
    from quantomni.kernels.cuda import nvfp4_mma

    words, scales, gs = ew.weight_mma, ew.scale_mma, ew.weight_scale_2
    if index is not None:
        words, scales, gs = words.index_select(0, index), scales.index_select(0, index), gs.index_select(0, index)
    g, tiles, steps = words.shape[:3]
    w = nvfp4_mma.dequantize(words.reshape(g * tiles, steps, 32, 4), scales.reshape(g * tiles, steps, 32),
                             gs.reshape(-1), g * ew.out_features, ew.in_features)
    return w.view(g, ew.out_features, ew.in_features).to(dtype)


def moe_decode_mma(x, top_k_index, top_k_weights, gate_up, down, act_fn):
    """NVFP4 experts in the CUDA layout on few tokens: grouped decode-GEMVs on the packed experts,
    with no host sync (routing is sorted and counted on the device), so it can be captured in a
    CUDA graph. Same contract as ``moe_experts_reference``."""
    from quantomni.kernels.cuda import nvfp4_mma

    t, k = top_k_index.shape
    e = gate_up.num_experts
    sorted_expert, order = torch.sort(top_k_index.reshape(-1), stable=True)
    expert_of = sorted_expert.clamp(max=e).to(torch.int32)  # index >= E: a dropped slot, sorted last
    # start of each expert's rows (searchsorted, not bincount: bincount syncs with the host)
    offs = torch.searchsorted(expert_of, torch.arange(e + 1, device=x.device, dtype=torch.int32), out_int32=True)
    token_of = order // k
    scale_idx = expert_of.clamp(max=e - 1).long()
    rows = x.index_select(0, token_of)
    h = fake_quant_act(rows, gate_up.act, _rows_scale(gate_up, scale_idx)).to(torch.bfloat16)
    gu = nvfp4_mma.moe_gemv(h, gate_up.weight_mma, gate_up.scale_mma, gate_up.weight_scale_2, expert_of, offs,
                            gate_up.out_features, t)  # dropped slots' rows stay zero, and so do their outputs
    gate, up = gu.float().chunk(2, dim=-1)
    h2 = (act_fn(gate) * up).to(x.dtype)
    h2 = fake_quant_act(h2, down.act, _rows_scale(down, scale_idx)).to(torch.bfloat16)
    y = nvfp4_mma.moe_gemv(h2, down.weight_mma, down.scale_mma, down.weight_scale_2, expert_of, offs,
                           down.out_features, t).float()
    y = y * top_k_weights.reshape(-1)[order].float().unsqueeze(-1)
    out = torch.zeros(t, y.shape[1], dtype=torch.float32, device=x.device)
    out.index_add_(0, token_of, y)
    return out.to(x.dtype)


# ----------------------------------------------------------------------------- activations
def _nvfp4_rows(x: torch.Tensor, gs: torch.Tensor) -> torch.Tensor:
    """Fake-quantize rows x [M, K] to NVFP4 with a per-row global scale gs f32 [M]."""
    m, k = x.shape
    blocks = x.float().view(m, k // NVFP4_BLOCK_SIZE, NVFP4_BLOCK_SIZE)
    g = gs.float().view(m, 1)
    scale = blocks.abs().amax(-1) / (E2M1_MAX * g)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale).clamp(E4M3_MIN_SCALE, E4M3_MAX)
    scale = scale.to(torch.float8_e4m3fn).float() * g
    codes = e2m1_round_codes(blocks / scale.unsqueeze(-1))
    vals = E2M1_VALUES.to(x.device)[codes.long()]
    return (vals * scale.unsqueeze(-1)).view(m, k).to(x.dtype)


def fake_quant_act(x: torch.Tensor, mode: str, input_scale_rows: torch.Tensor | None) -> torch.Tensor:
    """Emulate the activation quantization ``mode`` on rows x [M, K]; input_scale_rows f32 [M]
    (the static scale of each row's expert) for the static modes. Returns [M, K] in x.dtype."""
    if mode == "none":
        return x
    if mode == "fp8_token":
        q, s = quantize_act_fp8(x, "token")
        return (q.float() * s).to(x.dtype)
    if mode == "int8_token":
        q, s = quantize_act_int8(x)
        return (q.float() * s).to(x.dtype)
    if mode == "fp8_static":
        s = input_scale_rows.float().view(-1, 1)
        return ((x.float() / s).clamp(-448.0, 448.0).to(torch.float8_e4m3fn).float() * s).to(x.dtype)
    if mode == "nvfp4_static":
        return _nvfp4_rows(x, input_scale_rows)
    raise ValueError(f"activation mode {mode!r} unknown; modes: {list(ACT_MODES)}")


# ----------------------------------------------------------------------------- backends
def moe_experts_reference(x, top_k_index, top_k_weights, gate_up, down, act_fn):
    """Reference: loop over the experts that received tokens.

    x: [T, H]; top_k_index: long [T, k]; top_k_weights: [T, k]; gate_up / down: ExpertWeights
    ([E, 2I, H] and [E, H, I]); act_fn: the gate activation. Returns [T, H] in x.dtype.
    """
    out = torch.zeros(x.shape[0], down.out_features, dtype=torch.float32, device=x.device)
    for e in torch.unique(top_k_index).tolist():
        if not 0 <= e < gate_up.num_experts:  # index E marks a dropped/padded slot (as in transformers)
            continue
        tok, slot = torch.where(top_k_index == e)
        idx = torch.tensor([e], device=x.device)
        rows = x[tok]
        h = fake_quant_act(rows, gate_up.act, _rows_scale(gate_up, idx.expand(len(tok))))
        w1 = dequant_experts(gate_up, idx, torch.float32)[0]
        gate, up = (h.float() @ w1.t()).chunk(2, dim=-1)
        h2 = (act_fn(gate) * up).to(x.dtype)
        h2 = fake_quant_act(h2, down.act, _rows_scale(down, idx.expand(len(tok))))
        w2 = dequant_experts(down, idx, torch.float32)[0]
        y = h2.float() @ w2.t()
        out.index_add_(0, tok, y * top_k_weights[tok, slot, None].float())
    return out.to(x.dtype)


def _rows_scale(ew, expert_of_row):
    return None if ew.input_scale is None else ew.input_scale.index_select(0, expert_of_row)


def grouped_mm_available(device: torch.device, dtype: torch.dtype) -> tuple[bool, str]:
    """torch._grouped_mm: CUDA sm90+, bf16 operands (checked without compiling anything)."""
    if device.type != "cuda":
        return False, f"torch._grouped_mm needs CUDA, device is {device}"
    if not hasattr(torch, "_grouped_mm"):
        return False, "this torch build has no torch._grouped_mm"
    cap = torch.cuda.get_device_capability(device)
    if cap < (9, 0):
        return False, f"torch._grouped_mm needs compute capability >= 9.0, device has {cap[0]}.{cap[1]}"
    if dtype != torch.bfloat16:
        return False, f"torch._grouped_mm needs bfloat16, model dtype is {dtype}"
    return True, f"torch._grouped_mm on sm_{cap[0]}{cap[1]}"


def _group_matmul(rows: torch.Tensor, counts: torch.Tensor, w: torch.Tensor, use_grouped_mm: bool) -> torch.Tensor:
    """rows [R, K] sorted by group; counts long [G] (sum R); w [G, N, K]. Returns [R, N]."""
    if use_grouped_mm:
        offs = torch.cumsum(counts, 0).to(torch.int32)
        return torch._grouped_mm(rows, w.transpose(1, 2), offs=offs)
    g = counts.shape[0]
    max_c = int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    group_of_row = torch.repeat_interleave(torch.arange(g, device=rows.device), counts)
    pos = torch.arange(rows.shape[0], device=rows.device) - starts[group_of_row]
    padded = rows.new_zeros(g, max_c, rows.shape[1])
    padded[group_of_row, pos] = rows
    out = torch.bmm(padded, w.transpose(1, 2).to(rows.dtype))
    return out[group_of_row, pos]


#: NVFP4 experts in the CUDA layout run the grouped decode-GEMV up to this many tokens (each expert
#: re-reads its weights once per 16 of its rows; above it, dequantize + grouped GEMM)
MMA_GEMV_MAX_TOKENS = 64


def moe_experts_grouped(x, top_k_index, top_k_weights, gate_up, down, act_fn, use_grouped_mm: bool = False):
    """Grouped path: same contract as ``moe_experts_reference``, no Python loop over experts."""
    t, k = top_k_index.shape
    if getattr(gate_up, "weight_mma", None) is not None and x.dtype == torch.bfloat16 and t <= MMA_GEMV_MAX_TOKENS:
        return moe_decode_mma(x, top_k_index, top_k_weights, gate_up, down, act_fn)
    flat_expert = top_k_index.reshape(-1)
    order = torch.argsort(flat_expert, stable=True)
    sorted_expert = flat_expert[order]
    # slots routed to index >= E (dropped/padded, as in transformers) sort last and are cut off
    valid = int((sorted_expert < gate_up.num_experts).sum())
    if valid == 0:
        return torch.zeros(t, down.out_features, dtype=x.dtype, device=x.device)
    order, sorted_expert = order[:valid], sorted_expert[:valid]
    token_of = order // k
    uniq, counts = torch.unique_consecutive(sorted_expert, return_counts=True)
    rows = x.index_select(0, token_of)
    compute = torch.bfloat16 if use_grouped_mm else (x.dtype if x.dtype != torch.float16 else torch.float32)
    h = fake_quant_act(rows, gate_up.act, _rows_scale(gate_up, sorted_expert)).to(compute)
    w1 = dequant_experts(gate_up, uniq, compute)
    gate, up = _group_matmul(h, counts, w1, use_grouped_mm).float().chunk(2, dim=-1)
    h2 = (act_fn(gate) * up).to(x.dtype)
    h2 = fake_quant_act(h2, down.act, _rows_scale(down, sorted_expert)).to(compute)
    w2 = dequant_experts(down, uniq, compute)
    y = _group_matmul(h2, counts, w2, use_grouped_mm).float()
    y = y * top_k_weights.reshape(-1)[order].float().unsqueeze(-1)
    out = torch.zeros(t, y.shape[1], dtype=torch.float32, device=x.device)
    out.index_add_(0, token_of, y)
    return out.to(x.dtype)


def grouped_mm_can_implement(dims: tuple[int, ...]) -> tuple[bool, str]:
    """cuBLAS grouped GEMM needs 16-byte aligned rows: every K and N a multiple of 8 in bf16."""
    bad = [d for d in dims if d % 8]
    if bad:
        return False, f"torch._grouped_mm needs feature sizes divisible by 8, got {bad}"
    return True, "aligned"


def select_moe_backend(requested: str, device: torch.device, dtype: torch.dtype,
                       dims: tuple[int, ...] = ()) -> tuple[str, bool, str]:
    """-> (backend name, use torch._grouped_mm, reason). "auto": grouped on CUDA, torch on CPU.
    dims: the experts' feature sizes (H, 2I, I) checked against grouped-GEMM alignment."""
    if requested not in MOE_BACKENDS:
        raise ValueError(f"moe_backend: unknown backend {requested!r}; choose from {list(MOE_BACKENDS)}")
    ok, why = grouped_mm_available(device, dtype)
    if ok:
        ok, why = grouped_mm_can_implement(dims)
        why = "torch._grouped_mm" if ok else why
    if requested == "torch":
        return "torch", False, "requested: reference loop over active experts"
    if requested == "grouped":
        return "grouped", ok, ("requested; " + (why if ok else f"padded bmm ({why})"))
    if device.type == "cuda":
        return "grouped", ok, "auto on CUDA; " + (why if ok else f"padded bmm ({why})")
    return "torch", False, "auto on CPU: reference"
