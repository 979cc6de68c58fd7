"""Decode tokens/s of a Qwen3-Omni-thinker-shaped MoE text stack: BF16 vs FP8 vs NVFP4.

The stack is transformers' own ``Qwen3OmniMoeThinkerTextModel`` + an LM head with the real
Qwen3-Omni-30B-A3B thinker sizes (hidden 2048, 32 query / 4 KV heads of 128, 128 experts of
768, top-8, vocab 151936) and fewer layers (--layers, default 4), random weights. Modes:
  bf16   — as built, transformers' eager experts (a Python loop over experts);
  bf16_grouped — as built, transformers' grouped_mm experts (the fair BF16 baseline: the quantized
           modes below also run grouped expert GEMMs);
  fp8    — attention linears FP8 W8A8 (quantomni QuantLinear, best kernel: scaled_mm on H100),
           experts FP8 per-expert/per-channel (QuantMoEExperts, grouped backend);
  nvfp4  — attention linears NVFP4 W4A16 (weight dequant + bf16 matmul), experts NVFP4 W4A16
           with per-expert block scales (grouped backend, only the active experts dequantized).
  nvfp4_cuda — the same NVFP4 weights on quantomni's CUDA kernels (``kernels/cuda``): attention
           linears through the ``cuda`` backend, experts in its layout (``QuantMoEExperts.prepare``:
           decode-GEMVs on the packed experts while no expert gets more than 16 rows).
The router (mlp.gate), norms, embeddings and the LM head stay BF16 in every mode.
Each mode: prefill --prompt tokens for each batch size, then time --decode greedy steps with a
KV cache (CUDA-synchronised wall clock, after --warmup steps). Also reports the prefill logits'
relative error against BF16 (fresh random prompt, same weights) as a sanity check.

Pluggable NVFP4 kernels (e.g. a Triton W4A16 GEMM): --nvfp4-linear MODULE:FN with
FN(x [M,K] bf16, weight uint8 [N,K/2], weight_scale e4m3 [N,K/16], weight_scale_2 f32 []) -> [M,N]
bf16; --nvfp4-expert-dequant MODULE:FN replacing ``kernels.moe_torch.dequant_nvfp4_experts``
("triton" = ``kernels.moe_nvfp4_triton``, a one-pass Triton dequantizer). Suggested H100 runs:

    python benchmarks/bench_omni_decode.py --out a.json --commit SHA
    python benchmarks/bench_omni_decode.py --modes bf16,nvfp4 --nvfp4-expert-dequant triton --out b.json --commit SHA

    PYTHONPATH=src python benchmarks/bench_omni_decode.py --out omni_decode.json --commit $(git rev-parse --short HEAD)
    PYTHONPATH=src python benchmarks/bench_omni_decode.py --tiny      # CPU smoke run, seconds
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import platform
import subprocess
import sys
import time
import traceback

import torch
from torch import nn

REAL = dict(hidden_size=2048, num_attention_heads=32, num_key_value_heads=4, head_dim=128, moe_intermediate_size=768,
            num_experts=128, num_experts_per_tok=8, vocab_size=151936, intermediate_size=768)
REAL_MROPE = [24, 20, 20]  # Qwen3-Omni's rope_scaling.mrope_section (sums to head_dim / 2)
TINY = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, moe_intermediate_size=32,
            num_experts=8, num_experts_per_tok=2, vocab_size=512, intermediate_size=64)


def build_stack(dims: dict, layers: int, device, seed: int = 0, experts_impl: str = "eager"):
    """(text model, lm_head) in bf16 on ``device``, random weights (same for a given seed).
    experts_impl: transformers' experts implementation ("eager" loops over experts in Python;
    "grouped_mm" is its grouped GEMM, the fair BF16 baseline for a grouped quantized path)."""
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeTextConfig
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeThinkerTextModel

    half = dims["head_dim"] // 2
    section = REAL_MROPE if dims["head_dim"] == 128 else [half - 2 * (half // 4), half // 4, half // 4]
    rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": section,
            "interleaved": True, "mrope_interleaved": True}
    cfg = Qwen3OmniMoeTextConfig(num_hidden_layers=layers, rope_parameters=rope, max_position_embeddings=4096,
                                 decoder_sparse_step=1, norm_topk_prob=True, **dims)
    cfg._experts_implementation = experts_impl
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen3OmniMoeThinkerTextModel(cfg).to(torch.bfloat16)
        head = nn.Linear(dims["hidden_size"], dims["vocab_size"], bias=False, dtype=torch.bfloat16)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():  # transformers' init (std 0.02) for the rest; the router starts at zeros
        for name, p in model.named_parameters():
            if name.endswith("mlp.gate.weight"):
                p.copy_(torch.randn(p.shape, generator=g, device=device, dtype=torch.float32).mul_(0.5))
        head.weight.copy_(torch.randn(head.weight.shape, generator=g, device=device).mul_(0.02))
    return model.eval().requires_grad_(False), head.eval().requires_grad_(False)


class Nvfp4W4A16Linear(nn.Module):
    """NVFP4 weights, bf16 activations: dequantize (or a plugged kernel) then bf16 matmul."""

    kernel = None  # optional FN(x, weight, weight_scale, weight_scale_2) -> out

    def __init__(self, lin: nn.Linear):
        super().__init__()
        from quantomni.kernels.nvfp4_ref import nvfp4_quantize

        w, s, s2 = nvfp4_quantize(lin.weight.detach())
        self.register_buffer("weight", w)
        self.register_buffer("weight_scale", s)
        self.register_buffer("weight_scale_2", s2)
        self.out_features, self.in_features = lin.out_features, lin.in_features

    def forward(self, x):
        from quantomni.kernels.nvfp4_ref import nvfp4_dequantize

        x2 = x.reshape(-1, self.in_features)
        if self.kernel is not None:
            out = self.kernel(x2, self.weight, self.weight_scale, self.weight_scale_2)
        else:
            out = x2 @ nvfp4_dequantize(self.weight, self.weight_scale, self.weight_scale_2, x2.dtype).t()
        return out.reshape(*x.shape[:-1], self.out_features)


class CudaNvfp4Linear(Nvfp4W4A16Linear):
    """The same NVFP4 weights, re-laid out for and run by quantomni's ``cuda`` NVFP4 backend."""

    def __init__(self, lin: nn.Linear):
        super().__init__(lin)
        from quantomni.kernels.nvfp4_cuda import CudaNvfp4Kernel

        self.bias = None
        CudaNvfp4Kernel.prepare()
        CudaNvfp4Kernel.process_loaded(self)

    def forward(self, x):
        from quantomni.kernels.nvfp4_cuda import CudaNvfp4Kernel

        return CudaNvfp4Kernel.apply(self, x.reshape(-1, self.in_features)).reshape(*x.shape[:-1], self.out_features)


def quantize_stack(model, mode: str, device, moe_backend: str) -> dict:
    """In place; returns what was done. Attention linears + experts; router/norms/head stay BF16."""
    from quantomni.layers.moe import QuantMoEExperts
    from quantomni.multistage.moe_quant import fused_experts

    if mode in ("bf16", "bf16_grouped"):
        return {"linears": 0, "experts": 0}
    n_lin = 0
    for layer in model.layers:
        attn = layer.self_attn
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            lin = getattr(attn, proj)
            setattr(attn, proj, _quantize_linear(lin, mode, device))
            n_lin += 1
    n_exp = 0
    fmt, act = {"fp8": ("fp8", "fp8_token"), "nvfp4": ("nvfp4", "none"), "nvfp4_cuda": ("nvfp4", "none")}[mode]
    expert_prep = None
    for name in [n for n, _ in fused_experts(model)]:  # names only: each BF16 module is freed once replaced
        q = QuantMoEExperts.from_module(model.get_submodule(name), fmt, act, moe_backend, name).to(device)
        if mode == "nvfp4_cuda":
            expert_prep = q.prepare(torch.device(device))
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, q)
        n_exp += 1
    if n_exp == 0:
        raise RuntimeError("no fused MoE experts (3-D gate_up_proj/down_proj) found in the stack: this transformers "
                           "version builds experts differently; nothing to quantize there")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"linears": n_lin, "experts": n_exp, "expert_layout": expert_prep,
            "expert_backend": q.backend_info(torch.device(device), torch.bfloat16)[2] if n_exp else None}


def _quantize_linear(lin, mode, device):
    if mode == "nvfp4":
        return Nvfp4W4A16Linear(lin)
    if mode == "nvfp4_cuda":
        return CudaNvfp4Linear(lin)
    from quantomni.kernels.base import KernelSpec, select_linear_kernel
    from quantomni.layers.linear import QuantLinear
    from quantomni.methods.fp8 import Fp8Config

    method = Fp8Config().get_linear_method("", lin.in_features, lin.out_features)
    kernel, _ = select_linear_kernel(KernelSpec("fp8", lin.in_features, lin.out_features, torch.bfloat16,
                                                torch.device(device), method.scheme))
    ql = QuantLinear(lin.in_features, lin.out_features, lin.bias is not None, method, "", torch.bfloat16)
    ql.kernel = kernel
    method.load_tensor(ql, "weight", lin.weight.detach())
    method.process_weights_after_loading(ql, torch.device(device))
    return ql


def weight_bytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()) if t is not None)


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def decode(model, head, batch, prompt, steps, warmup, device, vocab):
    """Prefill, then greedy decode; returns (decode seconds for `steps`, prefill logits of row 0)."""
    from transformers import DynamicCache

    from quantomni.multistage.textgen import cache_kwarg

    kw = cache_kwarg(model)
    g = torch.Generator(device="cpu").manual_seed(1234)
    ids = torch.randint(0, vocab, (batch, prompt), generator=g).to(device)
    cache = DynamicCache(config=model.config)
    out = model(input_ids=ids, use_cache=True, **{kw: cache})
    logits = head(out.last_hidden_state[:, -1])
    prefill_logits = head(out.last_hidden_state[0]).float()
    tok = logits.argmax(-1, keepdim=True)
    for _ in range(warmup):
        out = model(input_ids=tok, use_cache=True, **{kw: cache})
        tok = head(out.last_hidden_state[:, -1]).argmax(-1, keepdim=True)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        out = model(input_ids=tok, use_cache=True, **{kw: cache})
        tok = head(out.last_hidden_state[:, -1]).argmax(-1, keepdim=True)
    sync(device)
    return time.perf_counter() - t0, prefill_logits


def _load_fn(spec: str):
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ValueError(f"expected MODULE:FUNCTION, got {spec!r}")
    return getattr(importlib.import_module(module), attr)


def commit(value):
    if value:
        return value
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True, stderr=subprocess.DEVNULL).strip()
    except Exception:
        return "unknown"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny dims (CPU smoke run)")
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default 4; tiny 2)")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--modes", default="bf16,fp8,nvfp4")
    ap.add_argument("--prompt", type=int, default=None, help="prompt tokens (default 128; tiny 16)")
    ap.add_argument("--decode", type=int, default=None, help="timed decode steps (default 32; tiny 4)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--moe-backend", default="auto", choices=["auto", "torch", "grouped"])
    ap.add_argument("--device", default=None)
    ap.add_argument("--nvfp4-linear", default=None, help="MODULE:FN NVFP4 W4A16 linear kernel")
    ap.add_argument("--nvfp4-expert-dequant", default=None,
                    help="MODULE:FN NVFP4 expert dequantizer, or 'triton' for quantomni's one-pass Triton kernel")
    ap.add_argument("--out", default=None, help="write results JSON here")
    ap.add_argument("--commit", default=None, help="commit of the tree (the device copy has no .git)")
    args = ap.parse_args(argv)

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("--device cuda requested but CUDA is not available", file=sys.stderr)
        return 2
    if device == "cpu" and not args.tiny:
        print("no GPU: use --tiny for a CPU smoke run (the real sizes need ~6 GB and a GPU)", file=sys.stderr)
        return 2
    dims = TINY if args.tiny else REAL
    layers = args.layers or (2 if args.tiny else 4)
    prompt = args.prompt or (16 if args.tiny else 128)
    steps = args.decode or (4 if args.tiny else 32)
    batches = [int(b) for b in args.batches.split(",") if b]
    modes = [m for m in args.modes.split(",") if m]
    if args.nvfp4_linear:
        Nvfp4W4A16Linear.kernel = staticmethod(_load_fn(args.nvfp4_linear))
    if args.nvfp4_expert_dequant:
        from quantomni.kernels.moe_torch import register_expert_dequantizer

        if args.nvfp4_expert_dequant == "triton":
            args.nvfp4_expert_dequant = "quantomni.kernels.moe_nvfp4_triton:dequant_nvfp4_experts_triton"
        register_expert_dequantizer("nvfp4", args.nvfp4_expert_dequant)

    dev_name = torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or "cpu"
    report = {"benchmark": "omni_decode", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "commit": commit(args.commit), "device": dev_name, "torch": torch.__version__,
              "dims": dims, "layers": layers, "prompt_tokens": prompt, "decode_steps": steps,
              "moe_backend": args.moe_backend, "nvfp4_linear": args.nvfp4_linear,
              "nvfp4_expert_dequant": args.nvfp4_expert_dequant, "rows": []}
    ref_logits = {}
    t_start = time.perf_counter()
    for mode in modes:
        try:
            model, head = build_stack(dims, layers, device,
                                      experts_impl="grouped_mm" if mode == "bf16_grouped" else "eager")
            info = quantize_stack(model, mode, device, args.moe_backend)
            wb = weight_bytes(model)
        except Exception as exc:
            traceback.print_exc()
            report["rows"].append({"mode": mode, "error": f"{type(exc).__name__}: {exc}"})
            continue
        for batch in batches:
            row = {"mode": mode, "batch": batch, "stack_weight_bytes": wb, **info}
            try:
                if device.startswith("cuda"):
                    torch.cuda.reset_peak_memory_stats()
                decode(model, head, batch, prompt, 1, args.warmup, device, dims["vocab_size"])  # first-call costs
                secs, logits = decode(model, head, batch, prompt, steps, args.warmup, device, dims["vocab_size"])
                row.update(tokens_per_s=batch * steps / secs, ms_per_step=1000 * secs / steps)
                if mode in ("bf16", "bf16_grouped") and batch not in ref_logits:
                    ref_logits[batch] = logits
                elif batch in ref_logits:
                    ref = ref_logits[batch]
                    row["prefill_logits_rel_err_vs_bf16"] = float((logits - ref).norm() / ref.norm())
                    row["finite"] = bool(torch.isfinite(logits).all())
                if device.startswith("cuda"):
                    row["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
            except Exception as exc:
                traceback.print_exc()
                row["error"] = f"{type(exc).__name__}: {exc}"
            report["rows"].append(row)
            print(json.dumps(row), flush=True)
        del model, head
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    report["total_s"] = time.perf_counter() - t_start
    base_mode = "bf16_grouped" if "bf16_grouped" in modes else "bf16"  # the fair baseline when it ran
    base = {r["batch"]: r.get("tokens_per_s") for r in report["rows"] if r["mode"] == base_mode}
    print(f"\nQwen3-Omni thinker-shaped MoE stack, {layers} layers, {dims['num_experts']} experts top-"
          f"{dims['num_experts_per_tok']}, prompt {prompt}, {steps} decode steps, {dev_name}, commit {report['commit']}")
    print(f"(x base: tokens/s against {base_mode} in this run)")
    header = f"{'mode':10s} {'batch':>5s} {'tok/s':>10s} {'ms/step':>9s} {'x base':>8s} {'weights MiB':>12s} {'logit err':>10s}"
    print(header)
    print("-" * len(header))
    for r in report["rows"]:
        if "tokens_per_s" not in r:
            print(f"{r['mode']:10s} {r.get('batch', '-')!s:>5s}  error: {r.get('error')}")
            continue
        ratio = r["tokens_per_s"] / base[r["batch"]] if base.get(r["batch"]) else float("nan")
        err = r.get("prefill_logits_rel_err_vs_bf16")
        print(f"{r['mode']:10s} {r['batch']:>5d} {r['tokens_per_s']:>10.1f} {r['ms_per_step']:>9.2f} {ratio:>7.2f}x "
              f"{r['stack_weight_bytes'] / 2**20:>12.1f} {'-' if err is None else f'{err:.4f}':>10s}")
    print(f"total {report['total_s']:.1f} s")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=2)
    return 0 if all("error" not in r for r in report["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
