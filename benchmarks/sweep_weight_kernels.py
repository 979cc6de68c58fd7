"""Tile sweep for the weight-decoding kernels (GGUF Q8_0 / Q4_K and NVFP4 dequantizers, the NVFP4
decode-GEMV) and the W8A8 GEMMs, on the GPU, side by side with BF16 in the same run.

Why: the defaults in the kernels come from this sweep. Every variant is checked against a reference
first (relative error; NaN fails), then timed. Weights rotate over copies larger than L2 (a model's
layers are not cache-resident), so BF16 and quantized paths both read from device memory. "eager"
times back-to-back calls with events; "graph" captures the same calls in one CUDA graph (launch
gaps removed, as in a captured decode step).

    PYTHONPATH=src python benchmarks/sweep_weight_kernels.py --out sweep.json [--parts dequant,gemv,w8a8]

Parts: ``dequant`` (GGUF/NVFP4 Triton dequantizers), ``gemv`` (Triton NVFP4 decode-GEMV),
``cuda_gemv`` (the CUDA C++ NVFP4 mma GEMV and its dequantizer, ``kernels/cuda``), ``w8a8``.
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
                        if fmt == "Q8_0":  # eager back-to-back calls of a ~10 us kernel can be CPU-bound
                            row["graph_ms"] = time_calls([lambda s=s: fn(s, **kw) for s in src], graph=True)
                            row["graph_tb_s"] = moved / (row["graph_ms"] * 1e-3) / 1e12
                    except Exception as exc:
                        row["error"] = f"{type(exc).__name__}: {exc}"[:300]
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                del src, ref
            except Exception:
                errors.append(traceback.format_exc()[-1500:])
                print(errors[-1], flush=True)


# ----------------------------------------------------------------------------- NVFP4 GEMV
def gemv_grid(m: int) -> list[dict]:
    """Tile plans tried for the decode GEMV at M rows (see nvfp4_fast.gemv_kernel for the modes):
    the inline-PTX decode (decode_asm, the default for modes 1/2) over tiles, split-K and pipeline
    depth, the float32 decode for comparison, and at M = 1 the CUDA-core mode 0."""
    prod = itertools.product
    grid = [dict(mode=2, block_n=bn, block_k=bk, split=sp, num_stages=st)
            for (bn, bk), sp, st in prod(((64, 128), (64, 256), (128, 256)), (1, 2, 4, 8), (4, 6))]
    grid += [dict(mode=2, block_n=64, block_k=128, split=sp, decode_asm=False) for sp in (1, 8)]
    if m == 1:
        grid += [dict(mode=0, block_n=16, block_k=256, split=sp, num_stages=st) for sp, st in prod((1, 2, 4, 8), (2, 3, 4, 6))]
        grid += [dict(mode=0, block_n=bn, block_k=bk, split=sp, num_stages=4)
                 for (bn, bk), sp in prod(((32, 256), (16, 512), (8, 512)), (1, 2, 4))]
    return grid


def cuda_gemv_grid(m: int, n: int, k: int) -> list[dict]:
    """Plans tried for the CUDA GEMV: warps per block x unroll x K splits (as block counts)."""
    tiles, steps = n // 16, k // 64
    grid = []
    pairs = ((4, 1), (4, 2), (4, 4), (4, 6), (8, 1), (8, 2), (8, 3), (8, 6))
    for (w, u), sp in itertools.product(pairs, (1, 2, 3, 4, 6, 8, 12, 16)):
        if sp > steps or -(-steps // sp) < 1 or tiles * sp > 64 * 132:
            continue
        grid.append(dict(warps=w, unroll=u, splits=sp))
    return grid


def sweep_cuda_gemv(rows, errors, ms=(1, 4, 16), shard=None):
    """The CUDA mma GEMV over cuda_gemv_grid (graph mode), and its dequantizer's bandwidth."""
    del shard
    from quantomni.kernels.cuda import nvfp4_mma
    from quantomni.kernels.cuda.nvfp4_mma_layout import relayout
    from quantomni.kernels.nvfp4_ref import nvfp4_dequantize, nvfp4_quantize, nvfp4_unpack

    t = time.time()
    ok, why = nvfp4_mma.is_supported(torch.device("cuda"))
    print(f"# cuda kernels: {ok} {why} (build {time.time() - t:.1f} s)", flush=True)
    if not ok:
        errors.append(why)
        return
    for k, n in SHAPES + OMNI_SHAPES:
        w = torch.randn(n, k, device="cuda") / k**0.5
        packed, ws, ws2 = nvfp4_quantize(w)
        w_deq = nvfp4_dequantize(packed, ws, ws2, torch.float64)
        words, scales = relayout(packed, ws)
        q_src = [(words, scales)] + [(words.clone(), scales.clone()) for _ in range(copies_for(packed.numel()) - 1)]
        b_src = [w.to(torch.bfloat16)] + [w.to(torch.bfloat16) for _ in range(copies_for(w.numel() * 2) - 1)]
        exact = (nvfp4_unpack(packed).double().view(n, k // 16, 16) * ws.double().unsqueeze(-1) * float(ws2))
        exact = exact.reshape(n, k).float().to(torch.bfloat16)
        for items, staged in itertools.product(nvfp4_mma.DEQUANT_ITEMS, (False, True)):
            r = {"part": "cuda_dequant", "K": k, "N": n, "items": items, "staged": staged}
            try:
                out = nvfp4_mma.dequantize(words, scales, ws2, n, k, items=items, staged=staged)
                r["exact"] = bool(torch.equal(out, exact))
                r["ms"] = time_calls([lambda s=s: nvfp4_mma.dequantize(*s, ws2, n, k, items=items, staged=staged)
                                      for s in q_src], True)
                r["tb_s"] = (packed.numel() + ws.numel() + n * k * 2) / (r["ms"] * 1e-3) / 1e12
            except Exception as exc:
                r["error"] = f"{type(exc).__name__}: {exc}"[:300]
            rows.append(r)
            print(json.dumps(r), flush=True)
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = x.double() @ w_deq.t()
            base = {"part": "gemv", "M": m, "K": k, "N": n}
            r = dict(base, variant="bf16", graph=True)
            r["ms"] = time_calls([lambda wb=wb: F.linear(x, wb) for wb in b_src], True)
            rows.append(r)
            print(json.dumps(r), flush=True)
            for kw in [{}] + cuda_gemv_grid(m, n, k):
                plan = nvfp4_mma.gemv_plan(m, n, k, **kw)
                r = dict(base, variant="cuda_gemv", plan=kw or "default", resolved=str(plan))
                try:
                    out = nvfp4_mma.gemv(x, words, scales, ws2, None, n, plan=plan)
                    r["rel_err"] = rel(out, ref)
                    if not r["rel_err"] < 1e-2:
                        raise AssertionError(f"rel_err {r['rel_err']}")
                    r["graph_ms"] = time_calls([lambda s=s: nvfp4_mma.gemv(x, *s, ws2, None, n, plan=plan) for s in q_src], True)
                except Exception as exc:
                    r["error"] = f"{type(exc).__name__}: {exc}"[:300]
                rows.append(r)
                if kw == {} or "error" in r:
                    print(json.dumps(r), flush=True)
        del q_src, b_src


def sweep_gemv(rows, errors, ms=(1, 4, 16), shard=None):
    """Graph-mode time of every plan in gemv_grid (eager time is CPU launch cost; bench_nvfp4.py
    reports both for the chosen plans). shard=(i, n): compile and check only every n-th case from
    i, without timing (parallel processes fill Triton's kernel cache before the timed run)."""
    from quantomni.kernels.nvfp4_ref import nvfp4_dequantize, nvfp4_quantize
    from quantomni.kernels.triton.nvfp4_fast import nvfp4_gemv

    case = -1
    for k, n in SHAPES + OMNI_SHAPES:
        w = torch.randn(n, k, device="cuda") / k**0.5
        packed, ws, ws2 = nvfp4_quantize(w)
        w_deq = nvfp4_dequantize(packed, ws, ws2, torch.float64)
        w_bf16 = w.to(torch.bfloat16)
        # a shard only compiles and checks: one copy, and no BF16 timing
        q_src = [(packed, ws, ws2)] + [(packed.clone(), ws.clone(), ws2)
                                       for _ in range(0 if shard else copies_for(packed.numel()) - 1)]
        b_src = [w_bf16] + [w_bf16.clone() for _ in range(0 if shard else copies_for(w_bf16.numel() * 2) - 1)]
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = x.double() @ w_deq.t()
            base = {"part": "gemv", "M": m, "K": k, "N": n}
            if not shard:
                r = dict(base, variant="bf16", graph=True)
                r["ms"] = time_calls([lambda wb=wb: F.linear(x, wb) for wb in b_src], True)
                rows.append(r)
                print(json.dumps(r), flush=True)
            for kw in [{}] + gemv_grid(m):
                case += 1
                if shard and case % shard[1] != shard[0]:
                    continue
                r = dict(base, variant="nvfp4_gemv", plan=kw or "default")
                try:
                    out = nvfp4_gemv(x, *q_src[0], **kw)
                    r["rel_err"] = rel(out, ref)
                    if not r["rel_err"] < 1e-2:
                        raise AssertionError(f"rel_err {r['rel_err']}")
                    if shard:
                        continue
                    r["graph_ms"] = time_calls([lambda s=s: nvfp4_gemv(x, *s, **kw) for s in q_src], True)
                except Exception as exc:
                    r["error"] = f"{type(exc).__name__}: {exc}"[:300]
                rows.append(r)
                print(json.dumps(r), flush=True)
        del q_src, b_src


# ----------------------------------------------------------------------------- W8A8 GEMM
def sweep_w8a8(rows, errors, rounds=3):
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
        b_src = [w] + [w.clone() for _ in range(3)]
        variants = {"bf16": (lambda wb: F.linear(a, wb), b_src, None)}
        # INT8 only: FP8 runs cuBLAS _scaled_mm (its speed is in bench_flux_step / bench_linear)
        a_s = a.float().abs().amax(1) / 127.0
        w_s = w.float().abs().amax(1) / 127.0
        aq = (a.float() / a_s[:, None]).round().clamp(-127, 127).to(torch.int8)
        wq = (w.float() / w_s[:, None]).round().clamp(-127, 127).to(torch.int8)
        ref = (aq.double() @ wq.double().t()) * a_s.double()[:, None] * w_s.double()[None, :]
        wq_src = [wq] + [wq.clone() for _ in range(3)]
        variants["triton_current"] = (lambda wq_: launch_scaled_mm(aq, wq_, a_s, w_s, None, torch.bfloat16, True),
                                      wq_src, ref)
        variants["torch_int_mm"] = (lambda wq_: torch._int_mm(aq, wq_.t()), wq_src, None)
        for i, cfg in enumerate(TMA_CANDIDATE_CONFIGS):
            variants[f"tma{i}"] = (lambda wq_, cfg=cfg: scaled_mm_tma(aq, wq_, a_s, w_s, None, torch.bfloat16, True, cfg),
                                   wq_src, ref)
        results = {}
        for name, (fn, src, ref_) in variants.items():
            r = {"part": "w8a8", "M": m, "K": k, "N": n, "dtype": "bf16" if name == "bf16" else "torch.int8",
                 "variant": name, "rounds_ms": []}
            if name.startswith("tma"):
                r["config"] = dict(TMA_CANDIDATE_CONFIGS[int(name[3:])])
            try:
                if ref_ is not None:
                    r["rel_err"] = rel(fn(src[0]), ref_)
                    if not r["rel_err"] < 1e-2:
                        raise AssertionError(f"rel_err {r['rel_err']}")
            except Exception as exc:
                r["error"] = f"{type(exc).__name__}: {exc}"[:300]
            results[name] = r
        for _ in range(rounds):  # interleaved rounds; the fastest round counts (clock and noise drift)
            for name, (fn, src, _ref) in variants.items():
                r = results[name]
                if "error" in r:
                    continue
                try:
                    r["rounds_ms"].append(time_calls([lambda q=q: fn(q) for q in src], False))
                except Exception as exc:
                    r["error"] = f"{type(exc).__name__}: {exc}"[:300]
        for r in results.values():
            if r["rounds_ms"]:
                r["ms"] = min(r["rounds_ms"])
                r["tops"] = 2 * m * n * k / (r["ms"] * 1e-3) / 1e12
            rows.append(r)
            print(json.dumps(r), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--parts", default="dequant,gemv,w8a8")
    ap.add_argument("--gemv-m", default="1,4,16", help="token counts for the gemv part")
    ap.add_argument("--gemv-shard", default=None, help="I/N: compile and check every N-th gemv case from I, no timing")
    args = ap.parse_args(argv)
    gemv_kw = {"ms": tuple(int(v) for v in args.gemv_m.split(","))}
    if args.gemv_shard:
        gemv_kw["shard"] = tuple(int(v) for v in args.gemv_shard.split("/"))
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
            if part in ("gemv", "cuda_gemv"):
                (sweep_gemv if part == "gemv" else sweep_cuda_gemv)(rows, errors, **gemv_kw)
            else:
                {"dequant": sweep_dequant, "w8a8": sweep_w8a8}[part](rows, errors)
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
        graphed = [c for c in grp if "graph_ms" in c]
        if graphed:
            bg = min(graphed, key=lambda c: c["graph_ms"])
            print("   graph: best", f"{bg['graph_ms'] * 1e3:.1f} us {bg['graph_tb_s']:.2f} TB/s",
                  {x: bg[x] for x in bg if x in ("blocks", "num_warps")})
    for r in rows:
        if r["part"] == "cuda_dequant":
            print("cuda dequant", r["K"], r["N"], r["items"], "staged" if r["staged"] else "direct", f"{r.get('ms', float('nan')) * 1e3:.1f} us {r.get('tb_s', float('nan')):.2f} TB/s",
                  "exact" if r.get("exact") else "NOT EXACT", r.get("error", ""))
    print("\n== gemv (graph): bf16 vs default plan vs best plan, us ==")
    key = lambda r: (r["M"], r["K"], r["N"])
    g = [r for r in rows if r["part"] == "gemv"]
    for variant in sorted({r["variant"] for r in g} - {"bf16"}):
        print(f"-- {variant}")
        summarize_gemv(g, variant)
    print("\n== w8a8 M=4608 [ms, TOP/s] ==")
    for r in rows:
        if r["part"] == "w8a8":
            print(r["K"], r["N"], r.get("dtype", "bf16"), r["variant"], f"{r.get('ms', float('nan')):.4f}",
                  f"{r.get('tops', float('nan')):.0f}", r.get("rel_err", ""), r.get("error", "")[:120])


def summarize_gemv(g, variant):
    key = lambda r: (r["M"], r["K"], r["N"])
    for kk, grp in itertools.groupby(sorted(g, key=key), key):
        grp = list(grp)
        bf = [r["ms"] for r in grp if r["variant"] == "bf16"]
        q = [r for r in grp if r["variant"] == variant and "graph_ms" in r]
        if not q or not bf:
            print(kk, "no result")
            continue
        best = min(q, key=lambda r: r["graph_ms"])
        dflt = [r for r in q if r["plan"] == "default"]
        d = f"default {dflt[0]['graph_ms'] * 1e3:.1f} ({bf[0] / dflt[0]['graph_ms']:.2f}x)" if dflt else "default failed"
        print(kk, f"bf16 {bf[0] * 1e3:.1f} | {d} | best {best['graph_ms'] * 1e3:.1f} ({bf[0] / best['graph_ms']:.2f}x) "
              f"{best['plan']} err {best['rel_err']:.1e}")


if __name__ == "__main__":
    sys.exit(main())
