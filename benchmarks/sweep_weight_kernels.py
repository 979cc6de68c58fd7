"""Tile sweep for the weight-decoding kernels (GGUF Q8_0 / Q4_K and NVFP4 dequantizers, the NVFP4
decode-GEMV) and the W8A8 GEMMs, on the GPU, side by side with BF16 in the same run.

Why: the defaults in the kernels come from this sweep. Every variant is checked against a reference
first (relative error; NaN fails), then timed. Weights rotate over copies larger than L2 (a model's
layers are not cache-resident), so BF16 and quantized paths both read from device memory. "eager"
times back-to-back calls with events; "graph" captures the same calls in one CUDA graph (launch
gaps removed, as in a captured decode step).

    PYTHONPATH=src python benchmarks/sweep_weight_kernels.py --out sweep.json [--parts dequant,gemv,w8a8]
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import sys
import time
import traceback

import torch
import torch.nn.functional as F

SHAPES = [(3072, 3072), (3072, 12288), (12288, 3072), (3072, 15360)]  # (K, N)
OMNI_SHAPES = [(2048, 768), (768, 2048), (2048, 6144)]
ROTATE_BYTES = 256 << 20


def copies_for(nbytes: int, cap: int = 16) -> int:
    return max(2, min(cap, -(-ROTATE_BYTES // max(nbytes, 1))))


def time_calls(calls, graph: bool, reps: int = 20) -> float:
    """Median ms per call of the list `calls` run back to back (eager, or replayed as one graph)."""
    for c in calls:
        c()
    torch.cuda.synchronize()
    if graph:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for c in calls:
                c()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for c in calls:
                c()
        run = g.replay
    else:
        def run():
            for c in calls:
                c()
    run()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        run()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / len(calls))
    times.sort()
    return times[len(times) // 2]


def rel(out, ref) -> float:
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return float("nan")
    return float((out - ref).norm() / ref.norm())


def copy_bandwidth() -> float:
    x = torch.randn(256 << 20, device="cuda", dtype=torch.bfloat16)
    y = torch.empty_like(x)
    ms = time_calls([lambda: y.copy_(x)], graph=False)
    del x, y
    return 2 * (256 << 20) * 2 / (ms * 1e-3) / 1e12


# ----------------------------------------------------------------------------- dequantizers
def gguf_packed(qtype: str, n: int, k: int):
    """Random valid GGUF blocks made on the GPU: Q8_0 = fp16 scale + 32 int8; Q4_K = d, dmin, 12 scale
    bytes (random 6-bit fields), 128 code bytes."""
    g = torch.Generator(device="cuda").manual_seed(n * 7 + k)
    if qtype == "Q8_0":
        blocks = torch.randint(0, 256, (n, k // 32, 34), device="cuda", dtype=torch.uint8, generator=g)
        d = (torch.rand(n, k // 32, device="cuda", generator=g) * 0.01 + 1e-3).half()
        blocks[:, :, :2] = d.view(torch.uint8).view(n, k // 32, 2)
    else:
        blocks = torch.randint(0, 256, (n, k // 256, 144), device="cuda", dtype=torch.uint8, generator=g)
        d = (torch.rand(n, k // 256, 2, device="cuda", generator=g) * 0.01 + 1e-3).half()
        blocks[:, :, :4] = d.view(torch.uint8).view(n, k // 256, 4)
    return blocks.reshape(n, -1).contiguous()


def sweep_dequant(rows, errors):
    from quantomni.kernels.gguf_dequant import dequantize_gguf
    from quantomni.kernels.nvfp4_ref import nvfp4_dequantize, nvfp4_quantize
    from quantomni.kernels.triton.nvfp4_fast import nvfp4_dequantize_bf16
    from quantomni.kernels.triton.q4_k_dequant import q4_k_dequantize
    from quantomni.kernels.triton.q8_0_dequant import q8_0_dequantize
    from gguf import GGMLQuantizationType as QT

    for k, n in SHAPES:
        for fmt in ("Q8_0", "Q4_K", "NVFP4"):
            try:
                if fmt == "NVFP4":
                    w = torch.randn(n, k, device="cuda") / k**0.5
                    packed, ws, ws2 = nvfp4_quantize(w)
                    ref = nvfp4_dequantize(packed, ws, ws2, torch.float32).to(torch.bfloat16)
                    src = [(packed, ws, ws2)] + [(packed.clone(), ws.clone(), ws2) for _ in range(copies_for(packed.numel()) - 1)]
                    in_bytes = packed.numel() + ws.numel()
                    grid = [dict(block_n=bn, block_k=bk, num_warps=nw) for bn, bk, nw in
                            itertools.product((8, 16, 32, 64), (128, 256, 512), (4, 8)) if bn * bk <= 32768]
                    fn = lambda s, **kw: nvfp4_dequantize_bf16(*s, torch.bfloat16, **kw)
                else:
                    packed = gguf_packed(fmt, n, k)
                    ref = dequantize_gguf(packed, getattr(QT, fmt), (n, k), dtype=torch.float32).to(torch.bfloat16)
                    src = [packed] + [packed.clone() for _ in range(copies_for(packed.numel()) - 1)]
                    in_bytes = packed.numel()
                    if fmt == "Q8_0":
                        grid = [dict(blocks=b, num_warps=nw) for b, nw in itertools.product((32, 64, 128, 256, 512), (4, 8))]
                        fn = lambda s, **kw: q8_0_dequantize(s, k, torch.bfloat16, **kw)
                    else:
                        grid = [dict(super_blocks=b, num_warps=nw) for b, nw in itertools.product((2, 4, 8, 16, 32), (4, 8))]
                        fn = lambda s, **kw: q4_k_dequantize(s, k, torch.bfloat16, **kw)
                moved = in_bytes + n * k * 2
                for kw in grid:
                    row = {"part": "dequant", "fmt": fmt, "K": k, "N": n, **kw}
                    try:
                        out = fn(src[0], **kw)
                        row["mismatch"] = float((out.float() - ref.float()).abs().max())
                        row["rel_err"] = rel(out, ref)
                        ms = time_calls([lambda s=s: fn(s, **kw) for s in src], graph=False)
                        row.update(ms=ms, tb_s=moved / (ms * 1e-3) / 1e12)
                    except Exception as exc:
                        row["error"] = f"{type(exc).__name__}: {exc}"[:300]
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                del src, ref
            except Exception:
                errors.append(traceback.format_exc()[-1500:])
                print(errors[-1], flush=True)


# ----------------------------------------------------------------------------- NVFP4 GEMV
def sweep_gemv(rows, errors):
    from quantomni.kernels.nvfp4_ref import nvfp4_dequantize, nvfp4_quantize
    from quantomni.kernels.triton.nvfp4_fast import nvfp4_gemv

    for k, n in SHAPES + OMNI_SHAPES:
        w = torch.randn(n, k, device="cuda") / k**0.5
        packed, ws, ws2 = nvfp4_quantize(w)
        w_deq = nvfp4_dequantize(packed, ws, ws2, torch.float64)
        w_bf16 = w.to(torch.bfloat16)
        q_src = [(packed, ws, ws2)] + [(packed.clone(), ws.clone(), ws2) for _ in range(copies_for(packed.numel()) - 1)]
        b_src = [w_bf16] + [w_bf16.clone() for _ in range(copies_for(w_bf16.numel() * 2) - 1)]
        for m in (1, 16):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = x.double() @ w_deq.t()
            base = {"part": "gemv", "M": m, "K": k, "N": n}
            for graph in (False, True):
                r = dict(base, variant="bf16", graph=graph)
                r["ms"] = time_calls([lambda wb=wb: F.linear(x, wb) for wb in b_src], graph)
                rows.append(r)
                print(json.dumps(r), flush=True)
            grid = [dict(block_n=bn, block_k=bk, split=sp, use_dot=ud) for bn, bk, sp, ud in
                    itertools.product((32, 64, 128), (128, 256), (None, 1, 4), (None, True)) if m == 1 or ud is None]
            for kw in grid:
                r = dict(base, variant="nvfp4_gemv", **kw)
                try:
                    out = nvfp4_gemv(x, *q_src[0], **kw)
                    r["rel_err"] = rel(out, ref)
                    for graph in (False, True):
                        r["graph_ms" if graph else "eager_ms"] = time_calls(
                            [lambda s=s: nvfp4_gemv(x, *s, **kw) for s in q_src], graph)
                except Exception as exc:
                    r["error"] = f"{type(exc).__name__}: {exc}"[:300]
                rows.append(r)
                print(json.dumps(r), flush=True)
        del q_src, b_src


# ----------------------------------------------------------------------------- W8A8 GEMM
def sweep_w8a8(rows, errors):
    from quantomni.kernels.triton._scaled_mm_core import launch_scaled_mm

    try:
        from quantomni.kernels.triton.w8a8_gemm_tma import TMA_CANDIDATE_CONFIGS, scaled_mm_tma
    except Exception as exc:
        errors.append(f"tma import: {exc}")
        TMA_CANDIDATE_CONFIGS, scaled_mm_tma = [], None
    m = 4608
    for k, n in SHAPES:
        a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
        r = {"part": "w8a8", "M": m, "K": k, "N": n, "variant": "bf16"}
        b_src = [w] + [w.clone() for _ in range(3)]
        r["ms"] = time_calls([lambda wb=wb: F.linear(a, wb) for wb in b_src], False)
        rows.append(r)
        print(json.dumps(r), flush=True)
        for dt, acc_int32 in ((torch.int8, True),):  # FP8 runs cuBLAS _scaled_mm by default
            amax = 127.0 if acc_int32 else 448.0
            a_s = a.float().abs().amax(1) / amax
            w_s = w.float().abs().amax(1) / amax
            aq = (a.float() / a_s[:, None]).round().clamp(-amax, amax).to(dt) if acc_int32 else (a.float() / a_s[:, None]).to(dt)
            wq = (w.float() / w_s[:, None]).round().clamp(-amax, amax).to(dt) if acc_int32 else (w.float() / w_s[:, None]).to(dt)
            ref = (aq.double() @ wq.double().t()) * a_s.double()[:, None] * w_s.double()[None, :]
            wq_src = [wq] + [wq.clone() for _ in range(3)]
            variants = {"triton_current": lambda wq_: launch_scaled_mm(aq, wq_, a_s, w_s, None, torch.bfloat16, acc_int32)}
            if not acc_int32:
                variants["torch_scaled_mm"] = lambda wq_: torch._scaled_mm(aq, wq_.t(), scale_a=a_s[:, None], scale_b=w_s[None, :],
                                                                           out_dtype=torch.bfloat16)
            else:
                variants["torch_int_mm"] = lambda wq_: torch._int_mm(aq, wq_.t())
            for i, cfg in enumerate(TMA_CANDIDATE_CONFIGS):
                variants[f"tma{i}"] = lambda wq_, cfg=cfg: scaled_mm_tma(aq, wq_, a_s, w_s, None, torch.bfloat16, acc_int32, cfg)
            for name, fn in variants.items():
                r = {"part": "w8a8", "M": m, "K": k, "N": n, "dtype": str(dt), "variant": name}
                if name.startswith("tma"):
                    r["config"] = {kk: vv for kk, vv in TMA_CANDIDATE_CONFIGS[int(name[3:])].items()}
                try:
                    out = fn(wq)
                    if name != "torch_int_mm":
                        r["rel_err"] = rel(out, ref)
                    r["ms"] = time_calls([lambda q=q: fn(q) for q in wq_src], False)
                    r["tops"] = 2 * m * n * k / (r["ms"] * 1e-3) / 1e12
                except Exception as exc:
                    r["error"] = f"{type(exc).__name__}: {exc}"[:300]
                rows.append(r)
                print(json.dumps(r), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--parts", default="dequant,gemv,w8a8")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    rows, errors = [], []
    t0 = time.time()
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "commit": args.commit,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
            "copy_tb_s": copy_bandwidth()}
    print(json.dumps(meta), flush=True)
    for part in args.parts.split(","):
        t = time.time()
        try:
            {"dequant": sweep_dequant, "gemv": sweep_gemv, "w8a8": sweep_w8a8}[part](rows, errors)
        except Exception:
            errors.append(traceback.format_exc()[-2000:])
            print(errors[-1], flush=True)
        print(f"# part {part}: {time.time() - t:.0f} s", flush=True)
        meta["wall_s"] = time.time() - t0
        json.dump({"meta": meta, "rows": rows, "errors": errors}, open(args.out, "w"), indent=1)
    summarize(rows)
    return 0


def summarize(rows):
    """Best variant per shape, printed last (the device reply carries the tail)."""
    print("\n== dequant: best per (fmt, K, N) [TB/s moved] ==")
    key = lambda r: (r["fmt"], r["K"], r["N"])
    for kk, grp in itertools.groupby(sorted([r for r in rows if r["part"] == "dequant" and "ms" in r], key=key), key):
        grp = sorted(grp, key=lambda r: r["ms"])
        b = grp[0]
        cfg = {x: b[x] for x in b if x in ("blocks", "super_blocks", "block_n", "block_k", "num_warps")}
        print(kk, f"{b['ms'] * 1e3:.1f} us {b['tb_s']:.2f} TB/s mismatch {b['mismatch']:.3g} {cfg}")
    print("\n== gemv: bf16 vs best nvfp4 (eager / graph) us ==")
    key = lambda r: (r["M"], r["K"], r["N"])
    g = [r for r in rows if r["part"] == "gemv"]
    for kk, grp in itertools.groupby(sorted(g, key=key), key):
        grp = list(grp)
        bf = {r["graph"]: r["ms"] for r in grp if r["variant"] == "bf16"}
        q = [r for r in grp if r["variant"] != "bf16" and "graph_ms" in r]
        if not q:
            print(kk, "no nvfp4 result")
            continue
        be = min(q, key=lambda r: r["eager_ms"])
        bg = min(q, key=lambda r: r["graph_ms"])
        auto = [r for r in q if r["split"] is None and r["block_n"] == 64 and r["block_k"] == 128 and r["use_dot"] is None]
        print(kk, f"bf16 {bf[False] * 1e3:.1f}/{bf[True] * 1e3:.1f}  best eager {be['eager_ms'] * 1e3:.1f} "
              f"({bf[False] / be['eager_ms']:.2f}x) best graph {bg['graph_ms'] * 1e3:.1f} ({bf[True] / bg['graph_ms']:.2f}x) "
              f"cfg {[bg[x] for x in ('block_n', 'block_k', 'split', 'use_dot')]} err {bg['rel_err']:.1e}"
              + (f" | default plan graph {auto[0]['graph_ms'] * 1e3:.1f}" if auto else ""))
    print("\n== w8a8 M=4608 [ms, TOP/s] ==")
    for r in rows:
        if r["part"] == "w8a8":
            print(r["K"], r["N"], r.get("dtype", "bf16"), r["variant"], f"{r.get('ms', float('nan')):.4f}",
                  f"{r.get('tops', float('nan')):.0f}", r.get("rel_err", ""), r.get("error", "")[:120])


if __name__ == "__main__":
    sys.exit(main())
