"""NVFP4 (W4A16) on Hopper: quantomni's Triton decode-GEMV (M <= 16) and dequantize + cuBLAS
(large M) against BF16 `F.linear` and the reference torch path, in one run. FLUX-width shapes plus
Qwen3-Omni-thinker-like shapes; checks every output against the float64 dequantize-then-matmul
reference (relative L2 error; NaN fails). Weights rotate over copies larger than L2 (as a model's
layers do) for both BF16 and NVFP4; "eager" = back-to-back calls timed with events, "graph" = the
same calls replayed from one CUDA graph (how a captured decode step runs them).

    PYTHONPATH=src python benchmarks/bench_nvfp4.py --out nvfp4.json --commit abc123
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys

import torch
import torch.nn.functional as F

SHAPES = [(3072, 3072), (3072, 12288), (12288, 3072), (3072, 15360), (2048, 768), (768, 2048), (2048, 6144)]
MS = [1, 4, 16, 32, 64, 4608]


def timing():
    import os

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from sweep_weight_kernels import copies_for, time_calls

    return copies_for, time_calls


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--ms", default=",".join(map(str, MS)), help="comma list of M (tokens)")
    args = ap.parse_args()
    ms = [int(m) for m in args.ms.split(",") if m.strip()]
    from quantomni.kernels.nvfp4_ref import nvfp4_dequantize, nvfp4_linear_reference, nvfp4_quantize
    from quantomni.kernels.nvfp4_cuda import CudaNvfp4Kernel
    from quantomni.kernels.nvfp4_triton import TritonNvfp4Kernel

    cuda_ok, cuda_why = CudaNvfp4Kernel.is_supported(torch.device("cuda"))
    print(f"# cuda backend: {cuda_ok} {cuda_why}", flush=True)
    if cuda_ok:
        CudaNvfp4Kernel.prepare()

    torch.manual_seed(0)
    rows = []

    class L:
        pass

    copies_for, time_calls = timing()
    for k, n in SHAPES:
        w = torch.randn(n, k, device="cuda") / k**0.5
        packed, ws, ws2 = nvfp4_quantize(w)
        w_deq = nvfp4_dequantize(packed, ws, ws2, torch.float64)
        w_bf16 = w.to(torch.bfloat16)
        layers = []
        for i in range(copies_for(packed.numel())):
            layer = L()
            layer.weight, layer.weight_scale = (packed, ws) if i == 0 else (packed.clone(), ws.clone())
            layer.weight_scale_2, layer.bias = ws2, None
            layers.append(layer)
        dense = [w_bf16] + [w_bf16.clone() for _ in range(copies_for(w_bf16.numel() * 2) - 1)]
        cuda_layers = []
        for lyr in layers if cuda_ok else []:
            c = torch.nn.Module()
            c.register_buffer("weight", lyr.weight)
            c.register_buffer("weight_scale", lyr.weight_scale)
            c.weight_scale_2, c.bias, c.out_features = ws2, None, n
            CudaNvfp4Kernel.process_loaded(c)  # a re-laid-out copy (the Triton layers keep theirs)
            cuda_layers.append(c)
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = (x.double() @ w_deq.t())
            row = {"M": m, "K": k, "N": n}
            out = TritonNvfp4Kernel.apply(layers[0], x)
            row["quantomni_triton_rel_err"] = float((out.double() - ref).norm() / ref.norm()) if torch.isfinite(out).all() else float("nan")
            if cuda_layers:
                out = CudaNvfp4Kernel.apply(cuda_layers[0], x)
                row["quantomni_cuda_rel_err"] = float((out.double() - ref).norm() / ref.norm()) if torch.isfinite(out).all() else float("nan")
            out = nvfp4_linear_reference(x, packed, ws, ws2, None, None)
            row["torch_reference_rel_err"] = float((out.double() - ref).norm() / ref.norm())
            for graph in (False, True):
                mode = "graph" if graph else "eager"
                try:
                    row[f"bf16_{mode}_ms"] = time_calls([lambda d=d: F.linear(x, d) for d in dense], graph)
                    row[f"quantomni_triton_{mode}_ms"] = time_calls(
                        [lambda lyr=lyr: TritonNvfp4Kernel.apply(lyr, x) for lyr in layers], graph)
                    row[f"x_bf16_{mode}"] = row[f"bf16_{mode}_ms"] / row[f"quantomni_triton_{mode}_ms"]
                    if cuda_layers:
                        row[f"quantomni_cuda_{mode}_ms"] = time_calls(
                            [lambda lyr=lyr: CudaNvfp4Kernel.apply(lyr, x) for lyr in cuda_layers], graph)
                        row[f"cuda_x_bf16_{mode}"] = row[f"bf16_{mode}_ms"] / row[f"quantomni_cuda_{mode}_ms"]
                except Exception as exc:
                    row[f"{mode}_error"] = f"{type(exc).__name__}: {exc}"[:300]
            row["weight_bytes_ratio"] = (packed.numel() + ws.numel() + 4) / (w_bf16.numel() * 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
        del layers, dense, cuda_layers
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"), "commit": args.commit,
            "timer": "CUDA events, median of 20; weights rotated over >= 256 MiB of copies; eager and CUDA-graph"}
    json.dump({"meta": meta, "rows": rows}, open(args.out, "w"), indent=1)
    print(f"\n{meta['device']} torch {meta['torch']} commit {args.commit}")
    print(f"{'M':>5} {'K':>6} {'N':>6} {'bf16 e/g us':>14} {'triton e/g us':>14} {'x bf16 e/g':>11} {'err':>8}"
          f" {'cuda e/g us':>14} {'x bf16 e/g':>11} {'err':>8}")
    for r in rows:
        print(f"{r['M']:>5} {r['K']:>6} {r['N']:>6} {r.get('bf16_eager_ms', float('nan')) * 1e3:6.1f}/{r.get('bf16_graph_ms', float('nan')) * 1e3:6.1f} "
              f"{r.get('quantomni_triton_eager_ms', float('nan')) * 1e3:6.1f}/{r.get('quantomni_triton_graph_ms', float('nan')) * 1e3:6.1f} "
              f"{r.get('x_bf16_eager', float('nan')):5.2f}/{r.get('x_bf16_graph', float('nan')):4.2f} {r.get('quantomni_triton_rel_err', float('nan')):8.1e}"
              f" {r.get('quantomni_cuda_eager_ms', float('nan')) * 1e3:6.1f}/{r.get('quantomni_cuda_graph_ms', float('nan')) * 1e3:6.1f} "
              f"{r.get('cuda_x_bf16_eager', float('nan')):5.2f}/{r.get('cuda_x_bf16_graph', float('nan')):4.2f} {r.get('quantomni_cuda_rel_err', float('nan')):8.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
