"""Check and time quantomni's Triton kernels against BF16 torch.mm and torch's own quantized GEMMs.

For FLUX.1-dev linear shapes (M = 4608 image+text tokens; (K, N) in (3072, 3072), (3072, 12288),
(12288, 3072), (3072, 15360)) and small M (1, 16: decode-like), every variant is first checked
against a torch reference on fresh random data (relative error; NaN fails) and then timed with
triton.testing.do_bench (median), side by side with BF16 torch.mm in the same run. W8A8 variants
include their activation quantization. A kernel that fails to compile or run is recorded and the
run continues.

Usage (GPU):  PYTHONPATH=src python benchmarks/bench_triton_kernels.py --out bench.json
              [--m 4608,16,1] [--shapes 3072x3072,...] [--max-configs N] [--only fp8,nvfp4]
              [--budget-s 270]
The first run compiles about 50 Triton kernel variants (cached in ~/.triton afterwards); pass
--max-configs 1 for a quicker first run with the first (largest) tile of each kernel.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import subprocess
import sys
import time
import traceback

import torch

FLUX_SHAPES = [(3072, 3072), (3072, 12288), (12288, 3072), (3072, 15360)]  # (K, N)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="path of the JSON results file")
    p.add_argument("--m", default="4608,16,1", help="comma-separated token counts M")
    p.add_argument("--shapes", default=",".join(f"{k}x{n}" for k, n in FLUX_SHAPES), help="KxN list")
    p.add_argument("--max-configs", type=int, default=None, help="autotune at most this many configs per kernel")
    p.add_argument("--only", default="", help="comma-separated variant name filters (substring match)")
    p.add_argument("--rep-ms", type=int, default=60, help="do_bench measuring time per variant (ms)")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="run the whole flow on CPU (TRITON_INTERPRET=1, tiny shapes, wall-clock timing): tests only")
    p.add_argument("--budget-s", type=float, default=270.0,
                   help="stop starting new variants after this many seconds (results so far are kept)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- torch baselines
def torch_quant_fp8(x):
    s = (x.abs().amax(dim=1, keepdim=True).float() / 448.0).clamp(min=1e-12)
    return (x.float() / s).clamp(-448, 448).to(torch.float8_e4m3fn), s


def torch_quant_int8(x):
    s = (x.abs().amax(dim=1, keepdim=True).float() / 127.0).clamp(min=1e-12)
    return torch.round(x.float() / s).clamp(-127, 127).to(torch.int8), s


def scaled_mm_fp8(x_q, xs, w_q, ws_row, bias):
    """torch._scaled_mm, row-wise scales; bias fused where this torch allows it."""
    try:
        return torch._scaled_mm(x_q, w_q.t(), scale_a=xs, scale_b=ws_row, bias=bias,
                                out_dtype=torch.bfloat16, use_fast_accum=True)
    except RuntimeError:
        return torch._scaled_mm(x_q, w_q.t(), scale_a=xs, scale_b=ws_row,
                                out_dtype=torch.bfloat16, use_fast_accum=True) + bias


# ----------------------------------------------------------------------------- weight builders
def quantize_weights(w, gen):
    """All quantized forms of one bf16 weight [N, K] (Q4_K: random blocks, the others quantize w)."""
    n, k = w.shape
    wf = w.float()
    out = {}
    ws8 = (wf.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    out["int8"] = (torch.round(wf / ws8[:, None]).clamp(-127, 127).to(torch.int8), ws8)
    wsf = (wf.abs().amax(dim=1) / 448.0).clamp(min=1e-12)
    out["fp8"] = ((wf / wsf[:, None]).clamp(-448, 448).to(torch.float8_e4m3fn), wsf)
    from quantomni.kernels.nvfp4_ref import nvfp4_quantize

    out["nvfp4"] = nvfp4_quantize(w)
    blocks = wf.reshape(n, k // 32, 32)
    d = (blocks.abs().amax(dim=-1) / 127.0).clamp(min=1e-12).to(torch.float16)
    qs = torch.round(blocks / d.float()[..., None]).clamp(-127, 127).to(torch.int8)
    raw = torch.cat([d.view(torch.uint8).reshape(n, k // 32, 2), qs.view(torch.uint8)], dim=-1)
    out["q8_0"] = (raw.reshape(n, -1).contiguous(), (d.float()[..., None] * qs.float()).reshape(n, k))
    if k % 256 == 0:
        q4 = random_q4_k(n, k, gen, w.device)
        out["q4_k"] = (q4, q4_k_dequant(q4, k))
    return out


def random_q4_k(n, k, gen, device):
    """Random GGUF Q4_K bytes with sane f16 d/dmin (speed + exactness check, not a real quantizer)."""
    nb = k // 256
    raw = torch.randint(0, 256, (n, nb, 144), dtype=torch.uint8, device=device, generator=gen)
    d = (torch.rand(n, nb, device=device, generator=gen) * 0.01 + 0.001).to(torch.float16)
    dmin = (torch.rand(n, nb, device=device, generator=gen) * 0.01).to(torch.float16)
    raw[:, :, 0:2] = d.view(torch.uint8).reshape(n, nb, 2)
    raw[:, :, 2:4] = dmin.view(torch.uint8).reshape(n, nb, 2)
    return raw.reshape(n, -1).contiguous()


def q4_k_dequant(raw, k):
    """Torch Q4_K dequantizer (float32) for the reference; checked against the gguf package in tests."""
    n, nb = raw.shape[0], k // 256
    b = raw.reshape(n, nb, 144)
    d = b[..., 0:2].contiguous().view(torch.float16).float()[..., 0]
    dmin = b[..., 2:4].contiguous().view(torch.float16).float()[..., 0]
    s = b[..., 4:16].long()
    lo_sc, lo_mn = s[..., 0:4] & 63, s[..., 4:8] & 63
    hi_sc = (s[..., 8:12] & 0xF) | ((s[..., 0:4] >> 6) << 4)
    hi_mn = (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)
    sc = torch.cat([lo_sc, hi_sc], dim=-1).float()
    mn = torch.cat([lo_mn, hi_mn], dim=-1).float()
    qs = b[..., 16:144].reshape(n, nb, 4, 1, 32)
    q = torch.cat([qs & 15, qs >> 4], dim=3).reshape(n, nb, 8, 32).float()
    w = (d[..., None] * sc)[..., None] * q - (dmin[..., None] * mn)[..., None]
    return w.reshape(n, k)


def nvfp4_dequant(packed, scale, s2):
    table = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6, 0, -0.5, -1, -1.5, -2, -3, -4, -6],
                         dtype=torch.float32, device=packed.device)
    n = packed.shape[0]
    codes = torch.stack([packed & 15, packed >> 4], dim=-1).reshape(n, -1).long()
    return table[codes] * scale.float().repeat_interleave(16, dim=1) * s2


# ----------------------------------------------------------------------------- variants
def build_variants(x, w, bias, q):
    """name -> (callable, reference thunk, tolerance). References are fp32 torch on the same inputs.

    Every GEMM row also gets err_vs_float: its error against x @ w.T in fp32, i.e. the quantization
    error of the format (not meaningful for Q4_K, whose blocks are random here)."""
    from quantomni.kernels.triton.act_quant import per_token_quant_fp8, per_token_quant_int8
    from quantomni.kernels.triton.fp8_gemm import fp8_scaled_mm
    from quantomni.kernels.triton.gguf_gemm import q4_k_mm, q8_0_mm
    from quantomni.kernels.triton.group_affine_gemm import (
        group_affine_mm, prepare_q4_k_weight, prepare_q8_0_weight,
    )
    from quantomni.kernels.triton.int8_gemm import int8_scaled_mm
    from quantomni.kernels.nvfp4_triton import nvfp4_w4a16_linear

    w8, ws8 = q["int8"]
    wf8, wsf8 = q["fp8"]
    packed, fscale, s2 = q["nvfp4"]
    q8raw, q8deq = q["q8_0"]
    biasf = bias.float()
    M = x.shape[0]

    def ref_w8a8(quant, wq, ws):
        def thunk():
            xq, xs = quant(x)
            return (xq.float() @ wq.float().T) * xs * ws[None, :] + biasf
        return thunk

    v = {}
    v["bf16_torch.mm"] = (lambda: torch.nn.functional.linear(x, w, bias), lambda: x.float() @ w.float().T + biasf, 1e-2)
    wsf_row = wsf8[None, :].contiguous()
    v["fp8_torch_scaled_mm(+torch quant)"] = (
        lambda: scaled_mm_fp8(*torch_quant_fp8(x), wf8, wsf_row, bias), ref_w8a8(torch_quant_fp8, wf8, wsf8), 2e-2)
    v["fp8_torch_scaled_mm(+triton quant)"] = (
        lambda: scaled_mm_fp8(*per_token_quant_fp8(x), wf8, wsf_row, bias), ref_w8a8(torch_quant_fp8, wf8, wsf8), 2e-2)
    def fp8_triton():
        xq, xs = per_token_quant_fp8(x)
        return fp8_scaled_mm(xq, wf8, xs, wsf8, bias)

    def int8_triton():
        xq, xs = per_token_quant_int8(x)
        return int8_scaled_mm(xq, w8, xs, ws8, bias)

    v["fp8_triton(quant+gemm)"] = (fp8_triton, ref_w8a8(torch_quant_fp8, wf8, wsf8), 2e-2)

    def int_mm_path():
        xq, xs = torch_quant_int8(x)
        return (torch._int_mm(xq, w8.t()).float() * xs * ws8[None, :] + biasf).to(torch.bfloat16)

    v["int8_torch_int_mm(+torch quant)"] = (int_mm_path, ref_w8a8(torch_quant_int8, w8, ws8), 1e-2)
    v["int8_triton(quant+gemm)"] = (int8_triton, ref_w8a8(torch_quant_int8, w8, ws8), 1e-2)
    v["nvfp4_w4a16_triton"] = (  # the backend's path: decode-GEMV (M <= 16) or dequantize + cuBLAS
        lambda: nvfp4_w4a16_linear(x, packed, fscale, s2, bias),
        lambda: x.float() @ nvfp4_dequant(packed, fscale, s2).T + biasf, 1e-2)
    v["gguf_q8_0_triton"] = (
        lambda: q8_0_mm(x, q8raw, bias),
        lambda: x.float() @ q8deq.to(torch.bfloat16).float().T + biasf, 1e-2)
    q8prep = prepare_q8_0_weight(q8raw)
    v["gguf_q8_0_triton(repacked)"] = (
        lambda: group_affine_mm(x, q8prep, bias),
        lambda: x.float() @ q8deq.to(torch.bfloat16).float().T + biasf, 1e-2)
    if "q4_k" in q:
        q4raw, q4deq = q["q4_k"]
        q4prep = prepare_q4_k_weight(q4raw)
        v["gguf_q4_k_triton(repacked)"] = (
            lambda: group_affine_mm(x, q4prep, bias),
            lambda: x.float() @ q4deq.to(torch.bfloat16).float().T + biasf, 1e-2)
        v["gguf_q4_k_triton"] = (
            lambda: q4_k_mm(x, q4raw, bias),
            lambda: x.float() @ q4deq.to(torch.bfloat16).float().T + biasf, 1e-2)
        v["gguf_q4_k_dequant+torch.mm(diffusers-style)"] = (
            lambda: torch.nn.functional.linear(x, q4_k_dequant(q4raw, x.shape[1]).to(torch.bfloat16), bias),
            lambda: x.float() @ q4deq.to(torch.bfloat16).float().T + biasf, 1e-2)
    v["gguf_q8_0_dequant+torch.mm(diffusers-style)"] = (
        lambda: torch.nn.functional.linear(
            x, (q8raw.reshape(q8raw.shape[0], -1, 34)[..., :2].contiguous().view(torch.float16).float()
                * q8raw.reshape(q8raw.shape[0], -1, 34)[..., 2:].contiguous().view(torch.int8).float()
                ).reshape(q8raw.shape[0], -1).to(torch.bfloat16), bias),
        lambda: x.float() @ q8deq.to(torch.bfloat16).float().T + biasf, 1e-2)
    v["act_quant_fp8_torch(only)"] = (lambda: torch_quant_fp8(x), None, None)
    v["act_quant_fp8_triton(only)"] = (lambda: per_token_quant_fp8(x), None, None)
    return v


def rel_err(out, ref):
    out = out.float()
    if not torch.isfinite(out).all():
        return float("nan")
    return ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def limit_autotune(max_configs):
    """Trim each autotuned kernel's config list (a faster first run; first configs are the big tiles)."""
    if not max_configs:
        return
    from quantomni.kernels.triton import _scaled_mm_core, gguf_gemm, group_affine_gemm

    tuned = [_scaled_mm_core.build_scaled_mm(False)[1], *gguf_gemm._build(False)[1:],
             group_affine_gemm._build(False)[1]]
    for t in tuned:
        t.configs = t.configs[:max_configs]


def main(argv=None):
    args = parse_args(argv)
    if not args.cpu_smoke and not torch.cuda.is_available():
        sys.exit("bench_triton_kernels.py needs a CUDA GPU")
    import triton

    if args.cpu_smoke:
        def do_bench(fn, warmup, rep, return_mode):
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
    else:
        from triton.testing import do_bench

    torch.backends.cuda.matmul.allow_tf32 = False
    limit_autotune(args.max_configs)
    ms_list = [int(m) for m in args.m.split(",") if m]
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",") if s]
    only = [o for o in args.only.split(",") if o]
    dev = torch.device("cpu" if args.cpu_smoke else "cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    meta = {
        "device": "cpu (smoke test)" if args.cpu_smoke else torch.cuda.get_device_name(),
        "torch": torch.__version__, "triton": triton.__version__,
        "cuda": torch.version.cuda, "python": platform.python_version(), "commit": commit,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "timing": "triton.testing.do_bench median, ms; W8A8 rows include activation quantization",
    }
    results = []
    t_start = time.time()
    for (K, N) in shapes:
        w = (torch.randn(N, K, device=dev, generator=gen) * 0.02).to(torch.bfloat16)
        bias = (torch.randn(N, device=dev, generator=gen) * 0.1).to(torch.bfloat16)
        try:
            q = quantize_weights(w, gen)
        except Exception as exc:  # record and go on with the next shape
            results.append({"M": None, "K": K, "N": N, "variant": "quantize_weights", "ok": False,
                            "error": f"{type(exc).__name__}: {str(exc)[:500]}"})
            continue
        for M in ms_list:
            x = torch.randn(M, K, device=dev, generator=gen).to(torch.bfloat16)
            try:
                variants = build_variants(x, w, bias, q)
            except Exception as exc:
                results.append({"M": M, "K": K, "N": N, "variant": "build_variants", "ok": False,
                                "error": f"{type(exc).__name__}: {str(exc)[:500]}"})
                continue
            float_ref = x.float() @ w.float().T + bias.float()
            bf16_ms = None
            for name, (fn, ref_fn, tol) in variants.items():
                if only and name != "bf16_torch.mm" and not any(o in name for o in only):
                    continue
                rec = {"M": M, "K": K, "N": N, "variant": name}
                if time.time() - t_start > args.budget_s:
                    rec.update(ok=False, error=f"skipped: time budget of {args.budget_s} s spent")
                    results.append(rec)
                    continue
                try:
                    t0 = time.time()
                    out = fn()  # compiles + autotunes on first call
                    if not args.cpu_smoke:
                        torch.cuda.synchronize()
                    rec["first_call_s"] = round(time.time() - t0, 2)
                    if ref_fn is not None:
                        err = rel_err(out, ref_fn())
                        rec["rel_err"] = err
                        rec["ok"] = bool(err == err and err < tol)
                        if "q4_k" not in name:
                            rec["err_vs_float"] = rel_err(out, float_ref)
                    else:
                        rec["ok"] = True
                    ms = do_bench(fn, warmup=10, rep=args.rep_ms, return_mode="median")
                    rec["ms"] = ms
                    if ref_fn is not None:
                        rec["tflops"] = 2.0 * M * N * K / (ms * 1e-3) / 1e12
                    if name == "bf16_torch.mm":
                        bf16_ms = ms
                    if bf16_ms and ref_fn is not None:  # GEMM rows only (quant-only rows are not GEMMs)
                        rec["speedup_vs_bf16"] = bf16_ms / ms
                except Exception as exc:  # one failing kernel must not stop the run
                    rec["ok"] = False
                    rec["error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
                    rec["traceback"] = traceback.format_exc()[-1500:]
                results.append(rec)
                print(_row(rec), flush=True)
            del x, variants, float_ref
        del w, q
        if not args.cpu_smoke:
            torch.cuda.empty_cache()
        _write(args.out, meta, results, t_start)  # partial results survive a killed run
    _write(args.out, meta, results, t_start)
    print(f"\n{meta['device']}  torch {meta['torch']}  triton {meta['triton']}  wall {meta['wall_s']} s")
    print(_HEADER)
    for rec in results:
        print(_row(rec))
    print(f"wrote {args.out}")


def _write(path, meta, results, t_start):
    meta["wall_s"] = round(time.time() - t_start, 1)
    meta["nvfp4_weight_bytes_vs_bf16"] = (0.5 + 1 / 16) / 2  # 4-bit codes + one e4m3 scale per 16
    with open(path, "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)


_HEADER = (f"{'M':>5} {'K':>6} {'N':>6}  {'variant':38} {'ms':>9} {'TFLOP/s':>8} {'xBF16':>6} {'rel_err':>9} "
           f"{'vs_float':>9}  status")


def _row(rec):
    def f(key, fmt):
        val = rec.get(key)
        width = int(fmt.split(".")[0])
        ok = isinstance(val, (int, float)) and not (isinstance(val, float) and math.isnan(val))
        return format(val, fmt) if ok else "-".rjust(width)
    status = "ok" if rec.get("ok") else ("ERROR " + rec.get("error", "accuracy")[:60] if "error" in rec else "FAIL(accuracy)")
    return (f"{str(rec['M']):>5} {rec['K']:>6} {rec['N']:>6}  {rec['variant'][:38]:38} {f('ms', '9.4f')} "
            f"{f('tflops', '8.1f')} {f('speedup_vs_bf16', '6.2f')} {f('rel_err', '9.2e')} "
            f"{f('err_vs_float', '9.2e')}  {status}")


if __name__ == "__main__":
    main()
