"""NVFP4 (W4A16) on Hopper: quantomni's Triton decode-GEMV (M <= 16) and dequantize + cuBLAS
(large M) against BF16 `F.linear`, the reference torch path and the tiled Triton W4A16 GEMM, in one
run. FLUX-width shapes plus Qwen3-Omni-thinker-like shapes; checks every output against the
float64 dequantize-then-matmul reference (relative L2 error; NaN fails).

    PYTHONPATH=src python benchmarks/bench_nvfp4.py --out nvfp4.json --commit abc123
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys

import torch
import torch.nn.functional as F

SHAPES = [(3072, 3072), (3072, 12288), (12288, 3072), (3072, 15360), (2048, 768), (768, 2048)]
MS = [1, 16, 4608]


def bench(fn):
    from triton.testing import do_bench

    return do_bench(fn, warmup=10, rep=40, return_mode="median")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--commit", default="unknown")
    args = ap.parse_args()
    from quantomni.kernels.nvfp4_ref import nvfp4_dequantize, nvfp4_linear_reference, nvfp4_quantize
    from quantomni.kernels.nvfp4_triton import TritonNvfp4Kernel

    torch.manual_seed(0)
    rows = []

    class L:
        pass

    for k, n in SHAPES:
        w = torch.randn(n, k, device="cuda") / k**0.5
        packed, ws, ws2 = nvfp4_quantize(w)
        layer = L()
        layer.weight, layer.weight_scale, layer.weight_scale_2, layer.bias = packed, ws, ws2, None
        w_deq = nvfp4_dequantize(packed, ws, ws2, torch.float64)
        w_bf16 = w.to(torch.bfloat16)
        for m in MS:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = (x.double() @ w_deq.t())
            row = {"M": m, "K": k, "N": n}
            variants = {
                "bf16": lambda: F.linear(x, w_bf16),
                "quantomni_triton": lambda: TritonNvfp4Kernel.apply(layer, x),
                "torch_reference": lambda: nvfp4_linear_reference(x, packed, ws, ws2, None, None),
            }
            try:
                from quantomni.kernels.triton.nvfp4_gemm import nvfp4_w4a16_mm

                variants["triton_tiled_w4a16"] = lambda: nvfp4_w4a16_mm(x, packed, ws, ws2.reshape(1).float(), None, torch.bfloat16)
            except Exception as exc:  # pragma: no cover
                row["tiled_import_error"] = str(exc)
            for name, fn in variants.items():
                try:
                    out = fn()
                    if name != "bf16":
                        err = float((out.double() - ref).norm() / ref.norm())
                        row[f"{name}_rel_err"] = err if torch.isfinite(out).all() else float("nan")
                    row[f"{name}_ms"] = bench(fn)
                except Exception as exc:
                    row[f"{name}_error"] = f"{type(exc).__name__}: {exc}"[:300]
            for name in variants:
                if f"{name}_ms" in row and name != "bf16":
                    row[f"{name}_x_bf16"] = row["bf16_ms"] / row[f"{name}_ms"]
            row["weight_bytes_ratio"] = (packed.numel() + ws.numel() + 4) / (w_bf16.numel() * 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"), "commit": args.commit,
            "timer": "triton.testing.do_bench median"}
    json.dump({"meta": meta, "rows": rows}, open(args.out, "w"), indent=1)
    print(f"\n{meta['device']} torch {meta['torch']} commit {args.commit}")
    print(f"{'M':>5} {'K':>6} {'N':>6} {'bf16 ms':>8} {'ours ms':>8} {'x bf16':>7} {'err':>8} {'tiled x':>8} {'torch x':>8}")
    for r in rows:
        print(f"{r['M']:>5} {r['K']:>6} {r['N']:>6} {r.get('bf16_ms', float('nan')):8.4f} {r.get('quantomni_triton_ms', float('nan')):8.4f} "
              f"{r.get('quantomni_triton_x_bf16', float('nan')):7.2f} {r.get('quantomni_triton_rel_err', float('nan')):8.1e} "
              f"{r.get('triton_tiled_w4a16_x_bf16', float('nan')):8.2f} {r.get('torch_reference_x_bf16', float('nan')):8.2f}"
              + (f"  ERR {r.get('quantomni_triton_error')}" if 'quantomni_triton_error' in r else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
