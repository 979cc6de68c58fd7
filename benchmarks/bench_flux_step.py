"""One FLUX.1-dev transformer step (1024x1024, batch 1): BF16 vs quantomni FP8 / INT8 vs torchao FP8,
in the same execution mode, side by side in one run.

Model: FluxTransformer2DModel with the FLUX.1-dev configuration (hidden 3072, 24 heads x 128,
19 double + 38 single blocks; `--depth small` keeps 2 + 4 blocks for iteration), random weights
(std 1/sqrt(in_features)), built directly on the GPU. Inputs: 4096 image tokens (1024x1024 after
the VAE and 2x2 packing) + 512 text tokens, timestep 0.5, guidance 3.5.

Variants: `bf16`; `fp8`/`int8` = quantomni online quantization (adapter-sensitive layers kept
BF16), optionally `fp8@BACKEND` to force a kernel; `torchao-fp8` = torchao
Float8DynamicActivationFloat8WeightConfig(PerRow) on the same layers.
Modes: `eager`; `graph` (eager kernels captured in one CUDA graph); `compiled` (diffusers'
regional compilation of the repeated blocks, fullgraph=True; a graph break is recorded as an error);
`compiled+graph` (the compiled step captured in one CUDA graph: no per-kernel launch cost, as a
server replaying a captured step runs it).

`--arch wan`: a Wan 2.1 14B-shaped transformer instead (hidden 5120, 40 heads x 128, FFN 13824,
40 blocks; `--depth small` keeps 4) on a 480p, 81-frame latent (21 x 60 x 104 -> 32760 tokens) with
512 text tokens.
A variant suffix `+int8attn` (e.g. `fp8+int8attn`) also routes the transformer's attention through
quantomni's INT8 QK^T + FP8 PV kernel (layers/attention.py), as `attention="int8"` does.

    PYTHONPATH=src python benchmarks/bench_flux_step.py --depth full --out step.json --commit abc123
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import statistics
import sys
import time
import traceback

import torch

DEVICE = "cuda"
ARCH = "flux"

FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=(16, 56, 56))
WAN_14B = dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16,
               text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True, eps=1e-6,
               rope_max_seq_len=1024)


def build_model(depth: str, seed: int = 0):
    if ARCH == "wan":
        from diffusers import WanTransformer3DModel as cls

        cfg = dict(WAN_14B)
        if depth == "small":
            cfg.update(num_layers=4)
        elif depth == "tiny":
            cfg.update(num_layers=1, num_attention_heads=2, attention_head_dim=64, text_dim=64, ffn_dim=256)
    else:
        from diffusers import FluxTransformer2DModel as cls

        cfg = dict(FLUX_DEV)
        if depth == "small":
            cfg.update(num_layers=2, num_single_layers=4)
        elif depth == "tiny":  # CPU smoke test of the script itself
            cfg.update(num_layers=1, num_single_layers=1, num_attention_heads=2, attention_head_dim=64,
                       joint_attention_dim=256, pooled_projection_dim=64, axes_dims_rope=(16, 24, 24))
    with torch.device("meta"):
        model = cls(**cfg)
    model = model.to_empty(device=DEVICE).to(torch.bfloat16)
    gen = torch.Generator(DEVICE).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and not name.endswith("scale_shift_table"):  # linears; Wan's Conv3d patch embedding
                p.copy_(torch.randn(p.shape, generator=gen, device=DEVICE, dtype=torch.float32) / p[0].numel() ** 0.5)
            elif name.endswith("scale_shift_table"):  # Wan's learned modulation table: small, as trained ones are
                p.copy_(torch.randn(p.shape, generator=gen, device=DEVICE) * 0.02)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen, device=DEVICE) * 0.02)
            else:
                p.fill_(1.0)
    if ARCH == "wan":  # the RoPE tables are buffers computed at construction: rebuild them on the CPU
        from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

        fresh = WanRotaryPosEmbed(cfg["attention_head_dim"], cfg["patch_size"], cfg["rope_max_seq_len"])
        for name, buf in fresh.named_buffers():
            model.rope.get_buffer(name).copy_(buf)
    elif list(model.buffers()):
        raise AssertionError("unexpected buffers left uninitialised")
    return model.eval().requires_grad_(False)


def make_inputs(depth: str, seed: int = 1):
    g = torch.Generator(DEVICE).manual_seed(seed)
    bf = torch.bfloat16
    if ARCH == "wan":
        frames, h, w, text = (21, 60, 104, 4096) if depth != "tiny" else (2, 8, 8, 64)
        return dict(hidden_states=torch.randn(1, 16, frames, h, w, generator=g, device=DEVICE, dtype=bf),
                    timestep=torch.full((1,), 500, device=DEVICE, dtype=torch.long),
                    encoder_hidden_states=torch.randn(1, 512, text, generator=g, device=DEVICE, dtype=bf),
                    return_dict=False)
    img, txt, joint, pooled = (4096, 512, 4096, 768) if depth != "tiny" else (64, 16, 256, 64)
    return dict(
        hidden_states=torch.randn(1, img, 64, generator=g, device=DEVICE, dtype=bf),
        encoder_hidden_states=torch.randn(1, txt, joint, generator=g, device=DEVICE, dtype=bf),
        pooled_projections=torch.randn(1, pooled, generator=g, device=DEVICE, dtype=bf),
        timestep=torch.full((1,), 0.5, device=DEVICE, dtype=bf),
        img_ids=torch.zeros(img, 3, device=DEVICE, dtype=bf),
        txt_ids=torch.zeros(txt, 3, device=DEVICE, dtype=bf),
        guidance=torch.full((1,), 3.5, device=DEVICE, dtype=bf),
        return_dict=False,
    )


def quantize(model, variant: str):
    """Apply a variant in place; returns (description, n quantized layers)."""
    from quantomni.config import build_quant_config
    from quantomni.models.registry import get_adapter

    adapter = get_adapter(ARCH)
    variant, plus, extra = variant.partition("+")
    if plus:
        if extra != "int8attn":
            raise ValueError(f"unknown variant suffix +{extra}")
        from quantomni.layers.attention import install

        desc, n = quantize(model, variant)
        plan = install(model, "int8", adapter, torch.device(DEVICE))
        return f"{desc}; attention int8 ({plan.kernel}, {plan.processors} modules)", n
    if variant == "bf16":
        return "bf16", 0
    if variant == "torchao-fp8":
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

        names = set()

        def keep(mod, fqn):
            ok = isinstance(mod, torch.nn.Linear) and adapter.sensitive_match(fqn) is None
            if ok:
                names.add(fqn)
            return ok

        quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=keep)
        return "torchao Float8DynamicActivationFloat8Weight PerRow", len(names)
    from quantomni.pipeline.backends import BackendRequest
    from quantomni.pipeline.loader import quantize_module_in_place

    method, _, backend = variant.partition("@")
    cfg = build_quant_config(method).components["denoiser"]
    backends = BackendRequest.parse(f"{method}={backend}" if backend else "auto")
    plan = quantize_module_in_place(model, "transformer", cfg, adapter, torch.device(DEVICE), torch.bfloat16, backends)
    return plan.summary(), plan.quantized_count


def tensor_bytes(t) -> int:
    """Bytes a tensor holds; a tensor subclass (torchao's FP8 weights) counts its inner tensors
    (``__tensor_flatten__``), not its logical dtype."""
    if type(t) not in (torch.Tensor, torch.nn.Parameter) and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def weight_bytes(model) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += tensor_bytes(t)
    return total


def time_fn(fn, warmup: int, iters: int) -> list[float]:
    if DEVICE == "cpu":
        out = []
        for _ in range(iters):
            t = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t) * 1e3)
        return out
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    return times


CATEGORIES = (  # (category, substrings of CUDA kernel names), first match wins
    ("attention", ("flash", "fmha", "attention", "sdpa", "attn")),
    ("w8a8/quant (triton)", ("quant",)),
    ("gemm", ("gemm", "xmma", "cutlass", "nvjet", "scaled_mm", "_mm_kernel", "wgmma", "sm90", "tma_kernel")),
)


def kernel_breakdown(fn, steps: int = 2) -> dict:
    """CUDA kernel time per step by category (torch.profiler), plus the 12 costliest kernels."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    per_kernel = {}
    for evt in prof.key_averages():
        t = getattr(evt, "self_device_time_total", 0) or 0
        if t > 0:
            per_kernel[evt.key] = per_kernel.get(evt.key, 0.0) + t / 1e3 / steps
    cats = {}
    for name, ms in per_kernel.items():
        low = name.lower()
        cat = next((c for c, keys in CATEGORIES if any(k in low for k in keys)), "other")
        cats[cat] = cats.get(cat, 0.0) + ms
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1])[:12]
    return {"ms_per_step_by_category": cats, "top_kernels_ms": [[k[:120], v] for k, v in top]}


def run_mode(model, inputs, mode: str, warmup: int, iters: int):
    info = {}
    call = lambda: model(**inputs)[0]  # noqa: E731
    if mode in ("compiled", "compiled+graph"):
        t0 = time.perf_counter()
        model.compile_repeated_blocks(fullgraph=True)
        call()
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        info["compile_s"] = time.perf_counter() - t0
    elif mode not in ("eager", "graph"):
        raise ValueError(mode)
    fn = call
    if mode in ("graph", "compiled+graph"):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                call()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = call()
        fn = lambda: (graph.replay(), static_out)[1]  # noqa: E731
    out = fn().float()
    times = time_fn(fn, warmup, iters)
    info["fn"] = fn
    return out, times, info


def sdpa_context(name: str):
    import contextlib

    if name == "default":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel({"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                        "efficient": SDPBackend.EFFICIENT_ATTENTION}[name])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", choices=["flux", "wan"], default="flux")
    ap.add_argument("--depth", choices=["tiny", "small", "full"], default="small")
    ap.add_argument("--device", default="cuda", help="cpu only for a smoke test of the script (--depth tiny)")
    ap.add_argument("--variants", default="bf16,fp8,int8,torchao-fp8")
    ap.add_argument("--modes", default="eager,graph,compiled")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--out", default="flux_step.json")
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--profile", action="store_true", help="also record CUDA kernel time by category per step")
    ap.add_argument("--sdpa", default="default", choices=["default", "cudnn", "flash", "efficient"],
                    help="SDPA backend for every variant (same for all: a fair comparison)")
    args = ap.parse_args()
    global DEVICE, ARCH
    DEVICE, ARCH = args.device, args.arch
    inputs = make_inputs(args.depth)
    rows, ref = [], {}
    meta = {"device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu", "torch": torch.__version__, "cuda": torch.version.cuda,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"), "commit": args.commit,
            "arch": args.arch, "depth": args.depth, "sdpa": args.sdpa, "timer": "CUDA events, median of iters after warmup"}
    try:
        import torchao

        meta["torchao"] = torchao.__version__
    except Exception:
        meta["torchao"] = None

    def save():  # after every row: a run cut short by a time limit keeps what it measured
        base = {r["mode"]: r["ms_median"] for r in rows if r["variant"] == "bf16" and "ms_median" in r}
        for r in rows:
            if "ms_median" in r and r["mode"] in base:
                r["speedup_vs_bf16_same_mode"] = base[r["mode"]] / r["ms_median"]
        with open(args.out, "w") as fh:
            json.dump({"meta": meta, "rows": rows}, fh, indent=2)

    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            row = {"variant": variant, "mode": mode, "depth": args.depth}
            model = None
            try:
                torch._dynamo.reset()
                model = build_model(args.depth)
                desc, nq = quantize(model, variant)
                row.update(description=desc, quantized_layers=nq, weight_bytes=weight_bytes(model))
                with torch.inference_mode(), sdpa_context(args.sdpa):
                    out, times, info = run_mode(model, inputs, mode, args.warmup, args.iters)
                    if args.profile and DEVICE == "cuda":
                        row["profile"] = kernel_breakdown(info.pop("fn"))
                info.pop("fn", None)
                row.update(info)
                row["ms_median"] = statistics.median(times)
                row["ms_min"] = min(times)
                row["finite"] = bool(torch.isfinite(out).all())
                if variant == "bf16":
                    ref.setdefault("eager", out) if mode == "eager" else ref.setdefault(mode, out)
                base_out = ref.get("eager", ref.get(mode))  # BF16 eager, else BF16 in this mode
                if base_out is not None:
                    row["rel_err_vs_bf16"] = float((out - base_out).norm() / base_out.norm())
            except Exception as exc:  # record and continue: one failure must not lose the run
                row["error"] = f"{type(exc).__name__}: {exc}"[:2000]
                traceback.print_exc()
            finally:
                del model
                gc.collect()
                torch.cuda.empty_cache()
            rows.append(row)
            save()
            print(json.dumps({k: v for k, v in row.items() if k != "description"}), flush=True)
    save()
    print(f"\n{meta['device']}, torch {meta['torch']}, depth {args.depth}, commit {args.commit}")
    print(f"{'variant':22s} {'mode':9s} {'ms':>8s} {'x BF16':>7s} {'rel err':>8s} {'GiB':>6s}  note")
    for r in rows:
        if "ms_median" in r:
            print(f"{r['variant']:22s} {r['mode']:9s} {r['ms_median']:8.2f} {r.get('speedup_vs_bf16_same_mode', float('nan')):7.2f} "
                  f"{r.get('rel_err_vs_bf16', float('nan')):8.4f} {r['weight_bytes'] / 2**30:6.2f}  {('compile %.0fs' % r['compile_s']) if 'compile_s' in r else ''}")
        else:
            print(f"{r['variant']:22s} {r['mode']:9s} ERROR {r.get('error', '')[:150]}")
    for r in rows:
        if "profile" in r:
            cats = ", ".join(f"{k} {v:.1f}" for k, v in sorted(r["profile"]["ms_per_step_by_category"].items()))
            print(f"profile {r['variant']} {r['mode']}: {cats} (ms/step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
