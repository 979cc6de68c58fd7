"""Quantized attention (INT8 QK, FP8 PV; kernels/triton/attention_int8.py) against BF16 SDPA, in one run.

For each shape: SDPA with torch's default backend choice and with each of the flash / cuDNN /
efficient backends that runs, then the quantized kernel with every candidate config (quantize_kv
included in its time, and timed alone). Times are medians of CUDA-graph replays (sweep_weight_kernels
.time_calls). Accuracy: relative L2 error of each output against a float32 SDPA on the same inputs
(inputs: bf16 N(0, 1) for q and k scaled so the logits have a realistic spread, v N(0, 1)).

    PYTHONPATH=src python benchmarks/bench_attention.py --out attn.json --commit abc123
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import torch
import torch.nn.functional as F

#: (name, batch, tokens, heads, head_dim): FLUX.1 at 1024x1024 (4096 image + 512 text tokens), FLUX at
#: 512x512, Wan 2.1 14B 480p 81 frames (32760 tokens, 40 heads), Qwen-Image 1328x1328 (~7.4k tokens)
SHAPES = [("flux_1024", 1, 4608, 24, 128), ("flux_512", 1, 1536, 24, 128), ("qwen_image_1328", 1, 7326, 24, 128),
          ("wan_480p", 1, 32760, 40, 128)]


def flops(b, n, h, d):
    return 4.0 * b * h * n * n * d


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--commit", default="wip")
    ap.add_argument("--shapes", default=",".join(s[0] for s in SHAPES))
    ap.add_argument("--configs", default="all", help="'all' or 'default'")
    ap.add_argument("--logit-std", type=float, default=3.0,
                    help="std of the scaled logits q.k/sqrt(d) (attention in trained DiTs is peaked)")
    args = ap.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from sweep_weight_kernels import time_calls
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from quantomni.kernels.triton import attention_int8 as fa

    dev = torch.device("cuda")
    rows = []
    wanted = args.shapes.split(",")
    configs = fa.CANDIDATE_CONFIGS if args.configs == "all" else [fa.DEFAULT_CONFIG]
    for name, b, n, h, d in SHAPES:
        if name not in wanted:
            continue
        torch.manual_seed(0)
        # q.k / sqrt(d) has std logit_std when q, k ~ N(0, s^2) with s^2 = logit_std
        s = args.logit_std ** 0.5
        q = (torch.randn(b, n, h, d, device=dev) * s).bfloat16()
        k = (torch.randn(b, n, h, d, device=dev) * s).bfloat16()
        v = torch.randn(b, n, h, d, device=dev).bfloat16()
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
        ref = F.scaled_dot_product_attention(qt.float(), kt.float(), vt.float()).transpose(1, 2)
        fl = flops(b, n, h, d)

        def rel(o):
            o = o.float()
            if not torch.isfinite(o).all():
                return float("nan")
            return ((o - ref).norm() / ref.norm()).item()

        out = {}

        def sdpa(backend=None):
            def call():
                if backend is None:
                    out["o"] = F.scaled_dot_product_attention(qt, kt, vt)
                else:
                    with sdpa_kernel(backend):
                        out["o"] = F.scaled_dot_product_attention(qt, kt, vt)
            return call

        base = None
        for label, backend in (("sdpa_default", None), ("sdpa_flash", SDPBackend.FLASH_ATTENTION),
                               ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION),
                               ("sdpa_efficient", SDPBackend.EFFICIENT_ATTENTION)):
            try:
                ms = time_calls([sdpa(backend)], graph=True)
                err = rel(out["o"].transpose(1, 2))
            except Exception as exc:  # a backend that does not run here is reported, not fatal
                rows.append({"shape": name, "variant": label, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
                print(name, label, "error", str(exc)[:120], flush=True)
                continue
            if base is None:
                base = ms
            rows.append({"shape": name, "variant": label, "ms": ms, "tflops": fl / ms / 1e9,
                         "x_sdpa_default": base / ms, "rel_err": err})
            print(f"{name:16s} {label:22s} {ms:8.3f} ms {fl / ms / 1e9:7.1f} TFLOP/s x{base / ms:5.2f} err {err:.2e}",
                  flush=True)
        for cfg in configs:
            label = "q8attn " + ",".join(f"{k}={v}" for k, v in cfg.items())
            try:
                ms = time_calls([lambda: out.__setitem__("o", fa.attention_int8_fp8(q, k, v, config=cfg))], graph=True)
                err = rel(out["o"])
                bn = cfg["BLOCK_N"]
                ms_kv = time_calls([lambda: fa.quantize_kv(k, v, bn)], graph=True)
            except Exception as exc:
                rows.append({"shape": name, "variant": label, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
                print(name, label, "error", str(exc)[:300], flush=True)
                continue
            rows.append({"shape": name, "variant": label, "config": cfg, "ms": ms, "ms_quantize_kv": ms_kv,
                         "tflops": fl / ms / 1e9, "x_sdpa_default": base / ms, "rel_err": err})
            print(f"{name:16s} {label:60s} {ms:8.3f} ms (kv quant {ms_kv:.3f}) {fl / ms / 1e9:7.1f} TFLOP/s "
                  f"x{base / ms:5.2f} err {err:.2e}", flush=True)
        del q, k, v, ref
        torch.cuda.empty_cache()
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "commit": args.commit,
            "date": datetime.date.today().isoformat(), "logit_std": args.logit_std,
            "script": "benchmarks/bench_attention.py"}
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
