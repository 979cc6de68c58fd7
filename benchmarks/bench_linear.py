"""FLUX.1-dev-shaped linears: BF16 vs FP8 (`_scaled_mm`) vs INT8 (`_int_mm`), each including its
activation quantization, measured side by side in one run on one GPU.

Shapes: M = 4608 tokens (1024x1024 image + 512 text tokens); (K, N) in (3072, 3072), (3072, 12288),
(12288, 3072), (3072, 15360). FP8 = per-token activation x per-channel weight scales
(quantomni's default scheme); INT8 = per-token x per-channel symmetric. "eager" runs quantomni's
torch kernels as they are; "compiled" wraps the same function in torch.compile (both sides).

    PYTHONPATH=src python benchmarks/bench_linear.py --out results.json

Prints a table of times and ratios vs BF16, checks each path's output against an FP32 reference
on fresh random data (relative L2 error; NaN fails), and writes everything to --out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys

import torch

from quantomni.kernels.fp8_scaled_mm import ScaledMmFp8Kernel
from quantomni.kernels.int8_int_mm import IntMmInt8Kernel
from quantomni.kernels.quant_ops import quantize_weight_fp8, quantize_weight_int8
from quantomni.schemes import Fp8Scheme

SHAPES = [(3072, 3072), (3072, 12288), (12288, 3072), (3072, 15360)]


class _Layer:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def bench(fn, warmup=10, rep=50):
    try:
        from triton.testing import do_bench

        return do_bench(fn, warmup=warmup, rep=rep, return_mode="median")
    except ImportError:  # pragma: no cover
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(20):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 20


def rel_err(out, ref):
    out = out.float()
    if not torch.isfinite(out).all():
        return float("nan")
    return float((out - ref).norm() / ref.norm())


def commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True).strip()
    except Exception:
        return "unknown"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", type=int, default=4608)
    ap.add_argument("--out", default="bench_linear.json")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--commit", default=None, help="commit of the tree (the device copy has no .git)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 1
    dev = torch.device("cuda")
    torch.manual_seed(0)
    rows = []
    modes = ["eager"] + ([] if args.no_compile else ["compiled"])
    for k, n in SHAPES:
        m = args.m
        x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
        w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) / k**0.5
        b = torch.randn(n, device=dev, dtype=torch.bfloat16) * 0.1
        ref = x.float() @ w.float().t() + b.float()
        wq8, ws8 = quantize_weight_fp8(w, "channel")
        fp8_layer = _Layer(weight=wq8, weight_scale=ws8, bias=b, input_scale=None, scheme=Fp8Scheme("channel", "token"))
        wqi, wsi = quantize_weight_int8(w)
        int8_layer = _Layer(weight=wqi, weight_scale=wsi, bias=b)

        def bf16():
            return torch.nn.functional.linear(x, w, b)

        def fp8():
            return ScaledMmFp8Kernel.apply(fp8_layer, x)

        def int8():
            return IntMmInt8Kernel.apply(int8_layer, x)

        xq8 = torch.randn(m, k, device=dev).to(torch.float8_e4m3fn)
        xs8 = torch.rand(m, 1, device=dev) + 0.5
        xqi = torch.randint(-127, 127, (m, k), device=dev, dtype=torch.int8)

        def fp8_gemm_only():
            return torch._scaled_mm(xq8, wq8.t(), scale_a=xs8, scale_b=ws8.view(1, -1), bias=b, out_dtype=torch.bfloat16)

        def int8_gemm_only():
            return torch._int_mm(xqi, wqi.t())

        flops = 2 * m * k * n
        for mode in modes:
            fns = {"bf16": bf16, "fp8": fp8, "int8": int8}
            if mode == "compiled":
                fns = {name: torch.compile(f, dynamic=False) for name, f in fns.items()}
            times = {}
            errs = {}
            for name, f in fns.items():
                out = f()
                errs[name] = rel_err(out, ref)
                times[name] = bench(f)
            row = {"M": m, "K": k, "N": n, "mode": mode}
            for name in fns:
                row[f"{name}_ms"] = times[name]
                row[f"{name}_tflops"] = flops / times[name] / 1e9
                row[f"{name}_rel_err"] = errs[name]
            row["fp8_speedup"] = times["bf16"] / times["fp8"]
            row["int8_speedup"] = times["bf16"] / times["int8"]
            if mode == "eager":
                row["fp8_gemm_only_ms"] = bench(fp8_gemm_only)
                row["int8_gemm_only_ms"] = bench(int8_gemm_only)
                row["fp8_gemm_only_tflops"] = flops / row["fp8_gemm_only_ms"] / 1e9
                row["int8_gemm_only_tops"] = flops / row["int8_gemm_only_ms"] / 1e9
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta = {
        "device": torch.cuda.get_device_name(),
        "capability": ".".join(map(str, torch.cuda.get_device_capability())),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "commit": args.commit or commit(),
        "timer": "triton.testing.do_bench median",
    }
    with open(args.out, "w") as fh:
        json.dump({"meta": meta, "rows": rows}, fh, indent=2)
    print()
    print(f"{meta['device']} (sm_{meta['capability']}), torch {meta['torch']}, CUDA {meta['cuda']}, commit {meta['commit']}")
    print(f"{'K':>6} {'N':>6} {'mode':9} {'bf16 ms':>8} {'fp8 ms':>8} {'int8 ms':>8} {'fp8 x':>6} {'int8 x':>6} "
          f"{'bf16 TF':>8} {'fp8 gemm TF':>11} {'int8 gemm TOP':>13} {'err fp8':>8} {'err int8':>8}")
    for r in rows:
        print(f"{r['K']:>6} {r['N']:>6} {r['mode']:9} {r['bf16_ms']:8.3f} {r['fp8_ms']:8.3f} {r['int8_ms']:8.3f} "
              f"{r['fp8_speedup']:6.2f} {r['int8_speedup']:6.2f} {r['bf16_tflops']:8.0f} "
              f"{r.get('fp8_gemm_only_tflops', float('nan')):11.0f} {r.get('int8_gemm_only_tops', float('nan')):13.0f} "
              f"{r['fp8_rel_err']:8.4f} {r['int8_rel_err']:8.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
