"""GGUF on FLUX.1-dev-width layers: BF16 vs quantomni's GGUF path (Q8_0, Q4_K; packed weights, torch
dequantize-per-call kernel) vs diffusers' GGUF path (``GGUFLinear``; ``from_single_file`` of the same
file), in one run on one device.

Part 1, per layer: M = 4608 tokens (1024x1024 image + 512 text), (K, N) in (3072, 3072),
(3072, 12288), (12288, 3072), (3072, 15360); time of one linear and relative error against the
float32 product with the unquantized weight.
Part 2, denoiser step: a FLUX-dev-width FluxTransformer2DModel (hidden 3072, 24 heads, default 2 double
+ 4 single blocks, random weights), one forward with 4096 image + 512 text tokens. The same GGUF file
(diffusers naming) is loaded by quantomni's streaming loader and by diffusers' ``from_single_file``;
outputs are compared with the BF16 model built from the same float weights.

Random weights: one N(0, 1/K) matrix per distinct (N, K), shared by every layer of that shape (so the
file is quantized once per shape: libgguf's Q4_K quantizer runs ~4M weights/s per core). Tensors whose
row length does not fill the type's blocks (x_embedder, K = 64, for Q4_K) are stored F16, as community
converters do; 1-D tensors F32.

    PYTHONPATH=src python benchmarks/bench_gguf.py --out results.json --commit abc1234
    PYTHONPATH=src python benchmarks/bench_gguf.py --tiny --out /tmp/t.json   # CPU smoke test, small dims

Needs diffusers and gguf (legacy quants) and libgguf (K-quants; without it Q4_K rows are skipped and
reported). A failure in one measurement is recorded under "errors" and the run goes on.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

_GGUF_PY_TYPES = ("F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")


# ----------------------------------------------------------------------------- quantization
def quantize(job):
    """(qtype name, float32 [rows, K]) -> packed uint8 [rows, bytes_per_row] (F16: float16 [rows, K]).
    Top level so that a spawned worker process can run it (libgguf holds the GIL)."""
    qtype_name, arr = job
    if qtype_name == "F16":
        return arr.astype(np.float16)
    import gguf

    if qtype_name in _GGUF_PY_TYPES:
        q = gguf.quants.quantize(arr, gguf.GGMLQuantizationType[qtype_name])
    else:
        try:
            import libgguf
        except ImportError as exc:
            raise ImportError(f"{qtype_name} needs libgguf (ggml's quantizers): pip install libgguf") from exc
        q = libgguf.quantize_rows(arr, getattr(libgguf.GGMLQuantizationType, qtype_name))
    return np.ascontiguousarray(q).view(np.uint8).reshape(arr.shape[0], -1)


def block_elems(qtype_name: str) -> int:
    import gguf

    return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype_name]][0]


def storage_type(qtype_name: str, shape) -> str:
    """Type a 2-D weight is stored in: the requested one if its rows fill whole blocks, else F16."""
    return qtype_name if shape[-1] % block_elems(qtype_name) == 0 else "F16"


def quantize_all(jobs: dict, workers: int, errors: list) -> dict:
    """{(qtype, shape): float32 array} -> {(qtype, shape): packed}, in parallel worker processes."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    keys = sorted(jobs, key=lambda k: -jobs[k][1].size)
    out = {}
    if workers <= 1:
        for k in keys:
            try:
                out[k] = quantize(jobs[k])
            except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
                errors.append(f"quantize {k}: {type(exc).__name__}: {exc}")
        return out
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
        futs = {k: ex.submit(quantize, jobs[k]) for k in keys}
        for k, f in futs.items():
            try:
                out[k] = f.result()
            except Exception as exc:  # noqa: BLE001
                errors.append(f"quantize {k}: {type(exc).__name__}: {exc}")
    return out


# ----------------------------------------------------------------------------- helpers
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, device, warmup=2, reps=10) -> float:
    """Median wall time of ``fn()`` in ms, synchronising the device around each call."""
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        sync(device)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            sync(device)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


LAYER_COPIES = 4  # layers timed round-robin over copies of their weights: not served from L2


def time_layer_calls(calls, device, reps: int, graph: bool = False) -> float:
    """Per-call ms of ``calls`` run back to back: on CUDA the shared event timer of
    sweep_weight_kernels.py (eager: launch overhead overlaps the GPU work, as inside a model;
    graph: the calls replayed from one CUDA graph, no launch cost); elsewhere wall time."""
    with torch.inference_mode():
        if device.type != "cuda":
            return time_ms(lambda: [c() for c in calls], device, reps=reps) / len(calls)
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from sweep_weight_kernels import time_calls

        return time_calls(calls, graph=graph, reps=reps)


def time_both(row, key, errors, what, calls, device, reps):
    """row[key + "_ms"] (eager) and, on CUDA, row[key + "_graph_ms"]."""
    row[f"{key}_ms"] = attempt(errors, what, lambda: time_layer_calls(calls, device, reps))
    if device.type == "cuda":
        row[f"{key}_graph_ms"] = attempt(errors, what + " (graph)", lambda: time_layer_calls(calls, device, reps, graph=True))


def rel_err(out, ref) -> float:
    out = out.float()
    if not torch.isfinite(out).all():
        return float("nan")
    return float((out - ref.float()).norm() / ref.float().norm())


def git_commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True, stderr=subprocess.DEVNULL).strip()
    except Exception:  # noqa: BLE001
        return "unknown"


def attempt(errors: list, what: str, fn):
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - one failure must not kill the rest
        errors.append(f"{what}: {type(exc).__name__}: {exc}")
        print(f"[bench_gguf] {what} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        traceback.print_exc(limit=3)
        return None


def free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- part 1: layers
def our_layer(packed, qtype_name, k, n, bias, device, dtype):
    from quantomni.kernels.base import KernelSpec, select_linear_kernel
    from quantomni.layers.linear import QuantLinear
    from quantomni.methods.gguf import GgufLinearMethod
    from quantomni.schemes import GgufScheme

    method = GgufLinearMethod(GgufScheme(qtype_name))
    layer = QuantLinear(k, n, True, method, "bench", dtype)
    layer.kernel, _ = select_linear_kernel(KernelSpec("gguf", k, n, dtype, device, method.scheme))
    method.load_tensor(layer, "weight", torch.from_numpy(packed))
    method.load_tensor(layer, "bias", bias)
    method.process_weights_after_loading(layer, device)
    return layer


def diffusers_layer(packed, qtype_name, k, n, bias, device, dtype):
    import gguf
    from diffusers.quantizers.gguf.utils import GGUFLinear, GGUFParameter

    layer = GGUFLinear(k, n, bias=True, compute_dtype=dtype, device="meta")
    qt = gguf.GGMLQuantizationType[qtype_name]
    layer.weight = GGUFParameter(torch.from_numpy(packed).to(device), quant_type=qt)
    layer.bias = torch.nn.Parameter(bias.to(device=device, dtype=dtype), requires_grad=False)
    return layer


def bench_layers(args, weights, packed, qtypes, device, dtype, errors):
    rows = []
    gen = torch.Generator(device="cpu").manual_seed(1)
    for k, n in args.shapes:
        row = {"M": args.m, "K": k, "N": n}
        w = torch.from_numpy(weights[(n, k)]).to(device)
        b = (torch.randn(n, generator=gen) * 0.1).to(device)
        x = torch.randn(args.m, k, generator=gen).to(device=device, dtype=dtype)
        ref = x.float() @ w.t() + b
        wb, bb = w.to(dtype), b.to(dtype)
        wbs = [wb] + [wb.clone() for _ in range(LAYER_COPIES - 1)]
        time_both(row, "bf16", errors, f"layer {k}x{n} bf16 time",
                  [lambda w_=w_: torch.nn.functional.linear(x, w_, bb) for w_ in wbs], device, args.reps)
        row["bf16_rel_err"] = rel_err(torch.nn.functional.linear(x, wb, bb), ref)
        for q in qtypes:
            p = packed.get((q, (n, k)))
            if p is None:
                continue
            ours = attempt(errors, f"layer {k}x{n} ours {q} build", lambda: our_layer(p, q, k, n, b, device, dtype))
            if ours is not None:
                with torch.inference_mode():
                    out_ours = attempt(errors, f"layer {k}x{n} ours {q}", lambda: ours(x))
                if out_ours is not None:
                    row[f"ours_{q}_rel_err"] = rel_err(out_ours, ref)
                    copies = [ours] + [our_layer(p, q, k, n, b, device, dtype) for _ in range(LAYER_COPIES - 1)]
                    time_both(row, f"ours_{q}", errors, f"layer {k}x{n} ours {q} time",
                              [lambda c=c: c(x) for c in copies], device, args.reps)
                    del copies
                    row[f"ours_{q}_weight_bytes"] = ours.quantized_bytes()
            theirs = attempt(errors, f"layer {k}x{n} diffusers {q} build", lambda: diffusers_layer(p, q, k, n, b, device, dtype))
            if theirs is not None:
                with torch.inference_mode():
                    out_theirs = attempt(errors, f"layer {k}x{n} diffusers {q}", lambda: theirs(x))
                if out_theirs is not None:
                    row[f"diffusers_{q}_rel_err"] = rel_err(out_theirs, ref)
                    copies = [theirs] + [diffusers_layer(p, q, k, n, b, device, dtype) for _ in range(LAYER_COPIES - 1)]
                    time_both(row, f"diffusers_{q}", errors, f"layer {k}x{n} diffusers {q} time",
                              [lambda c=c: c(x) for c in copies], device, args.reps)
                    del copies
                    if out_ours is not None:
                        row[f"ours_vs_diffusers_{q}_rel_err"] = rel_err(out_ours, out_theirs)
            del ours, theirs
        rows.append(row)
        print(json.dumps(row), flush=True)
        del w, x, ref, wb, wbs
        free(device)
    return rows


# ----------------------------------------------------------------------------- part 2: denoiser step
def flux_config(args) -> dict:
    return dict(patch_size=1, in_channels=64, num_layers=args.double, num_single_layers=args.single,
                attention_head_dim=128, num_attention_heads=args.hidden // 128, joint_attention_dim=args.joint,
                pooled_projection_dim=args.pooled, guidance_embeds=True, axes_dims_rope=(16, 56, 56))


def model_weight_shapes(args) -> dict[str, tuple[int, int]]:
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel

    with init_empty_weights():
        model = FluxTransformer2DModel(**flux_config(args))
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if v.ndim == 2}


def build_bf16_model(args, weights, device, dtype):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    with torch.device(device):
        model = FluxTransformer2DModel(**flux_config(args)).to(dtype).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.copy_(torch.from_numpy(weights[tuple(p.shape)]))
            elif name.endswith(".bias"):
                p.copy_(torch.randn_like(p, dtype=torch.float32) * 0.02)
    return model


def write_model_gguf(path, model, packed, qtype_name):
    import gguf

    w = gguf.GGUFWriter(str(path), "flux")
    for name, t in model.state_dict().items():
        if t.ndim == 2:
            st = storage_type(qtype_name, t.shape)
            data = packed[(st, tuple(t.shape))]
            if st == "F16":
                w.add_tensor(name, data)
            else:
                w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=gguf.GGMLQuantizationType[st])
        else:
            w.add_tensor(name, t.detach().float().cpu().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def model_inputs(args, device, dtype):
    g = torch.Generator(device="cpu").manual_seed(2)
    n_img = args.m - args.txt
    pos = torch.arange(n_img)
    img_ids = torch.stack([torch.zeros(n_img), (pos // 64).float(), (pos % 64).float()], dim=1)  # 64-wide latent grid
    return dict(
        hidden_states=torch.randn(1, n_img, 64, generator=g).to(device, dtype),
        encoder_hidden_states=torch.randn(1, args.txt, args.joint, generator=g).to(device, dtype),
        pooled_projections=torch.randn(1, args.pooled, generator=g).to(device, dtype),
        timestep=torch.tensor([0.7], device=device, dtype=dtype),
        guidance=torch.tensor([3.5], device=device, dtype=dtype),
        img_ids=img_ids.to(device, dtype),
        txt_ids=torch.zeros(args.txt, 3, device=device, dtype=dtype),
        return_dict=False,
    )


def param_bytes(model) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t is None or id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


def bench_model(args, weights, packed, qtypes, device, dtype, errors, workdir):
    from diffusers import FluxTransformer2DModel, GGUFQuantizationConfig

    from quantomni.config import build_quant_config
    from quantomni.models.registry import adapter_for_class
    from quantomni.pipeline.backends import BackendRequest
    from quantomni.pipeline.loader import load_component_streaming

    result = {"config": flux_config(args), "tokens": args.m}
    inputs = model_inputs(args, device, dtype)
    model = build_bf16_model(args, weights, device, dtype)
    (workdir / "transformer").mkdir(parents=True, exist_ok=True)
    model.save_config(workdir / "transformer")
    result["bf16_weight_bytes"] = param_bytes(model)
    with torch.inference_mode():
        ref = model(**inputs)[0].float()
    result["bf16_step_ms"] = attempt(errors, "model bf16 time", lambda: time_ms(lambda: model(**inputs), device, 1, args.model_reps))
    files = {}
    for q in qtypes:
        path = workdir / f"flux_dev_width_{q}.gguf"
        if attempt(errors, f"model write {q}", lambda: write_model_gguf(path, model, packed, q)) is not None:
            files[q] = path
            result[f"{q}_file_bytes"] = path.stat().st_size
    del model
    free(device)
    for q, path in files.items():
        out = out2 = None

        def ours_load():
            cfg = build_quant_config({"method": "gguf", "path": str(path)}).components["denoiser"]
            t0 = time.perf_counter()
            m, plan, _ = load_component_streaming("transformer", workdir / "transformer", FluxTransformer2DModel, cfg,
                                                  adapter_for_class("FluxPipeline"), device, dtype,
                                                  BackendRequest.parse("auto"), progress=False)
            sync(device)
            result[f"ours_{q}_load_s"] = time.perf_counter() - t0
            result[f"ours_{q}_layers"] = dict(plan.backends())
            return m

        m = attempt(errors, f"model ours {q} load", ours_load)
        if m is not None:
            result[f"ours_{q}_weight_bytes"] = param_bytes(m)
            with torch.inference_mode():
                out = attempt(errors, f"model ours {q} run", lambda: m(**inputs)[0])
            if out is not None:
                result[f"ours_{q}_rel_err"] = rel_err(out, ref)
                result[f"ours_{q}_step_ms"] = attempt(errors, f"model ours {q} time", lambda: time_ms(lambda: m(**inputs), device, 1, args.model_reps))
            del m
            free(device)

        def theirs_load():
            t0 = time.perf_counter()
            m = FluxTransformer2DModel.from_single_file(
                str(path), config=str(workdir), subfolder="transformer", local_files_only=True,
                quantization_config=GGUFQuantizationConfig(compute_dtype=dtype), torch_dtype=dtype,
            ).to(device).eval()
            sync(device)
            result[f"diffusers_{q}_load_s"] = time.perf_counter() - t0
            return m

        m = attempt(errors, f"model diffusers {q} load", theirs_load)
        if m is not None:
            result[f"diffusers_{q}_weight_bytes"] = param_bytes(m)
            with torch.inference_mode():
                out2 = attempt(errors, f"model diffusers {q} run", lambda: m(**inputs)[0])
            if out2 is not None:
                result[f"diffusers_{q}_rel_err"] = rel_err(out2, ref)
                result[f"diffusers_{q}_step_ms"] = attempt(errors, f"model diffusers {q} time", lambda: time_ms(lambda: m(**inputs), device, 1, args.model_reps))
                if out is not None:
                    result[f"ours_vs_diffusers_{q}_rel_err"] = rel_err(out, out2)
            del m
            free(device)
        print(json.dumps({k: v for k, v in result.items() if q in k}), flush=True)
    return result


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench_gguf.json")
    ap.add_argument("--commit", default=None, help="commit of the tree (the device copy has no .git)")
    ap.add_argument("--tiny", action="store_true", help="small dims (hidden 256, 64 tokens); runs on CPU")
    ap.add_argument("--device", default=None, help="cuda (default when present) or cpu")
    ap.add_argument("--qtypes", default="Q8_0,Q4_K")
    ap.add_argument("--m", type=int, default=4608, help="tokens (image + text)")
    ap.add_argument("--txt", type=int, default=512, help="text tokens of the denoiser step")
    ap.add_argument("--hidden", type=int, default=3072)
    ap.add_argument("--joint", type=int, default=4096, help="text encoder width (T5-XXL: 4096)")
    ap.add_argument("--pooled", type=int, default=768)
    ap.add_argument("--double", type=int, default=2)
    ap.add_argument("--single", type=int, default=4)
    ap.add_argument("--reps", type=int, default=20, help="timed calls per layer")
    ap.add_argument("--model-reps", type=int, default=5, help="timed denoiser steps")
    ap.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="quantization processes")
    ap.add_argument("--skip-model", action="store_true")
    args = ap.parse_args(argv)
    if args.tiny:
        args.m, args.txt, args.hidden, args.joint, args.pooled = 64, 16, 256, 256, 256
        args.double, args.single, args.reps, args.model_reps = 1, 1, 3, 2
    h = args.hidden
    args.shapes = [(h, h), (h, 4 * h), (4 * h, h), (h, 5 * h)]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda" and not args.tiny:
        print("full-size run needs a CUDA GPU; use --tiny for a CPU smoke test", file=sys.stderr)
        return 1
    dtype = torch.bfloat16
    qtypes = [q.strip() for q in args.qtypes.split(",") if q.strip()]
    errors: list[str] = []
    t_start = time.perf_counter()

    shapes = {(n, k) for k, n in args.shapes}
    model_shapes = {} if args.skip_model else attempt(errors, "model shapes", lambda: model_weight_shapes(args)) or {}
    shapes |= set(model_shapes.values())
    rng = np.random.default_rng(0)
    weights = {s: (rng.standard_normal(s, dtype=np.float32) / np.sqrt(s[1])).astype(np.float32) for s in sorted(shapes)}
    jobs = {}
    for q in qtypes:
        for s in shapes:
            st = storage_type(q, s)
            jobs[(st, s)] = (st, weights[s])
    t0 = time.perf_counter()
    packed = quantize_all(jobs, args.workers, errors)
    quantize_s = time.perf_counter() - t0
    print(f"[bench_gguf] quantized {len(packed)} distinct tensors in {quantize_s:.1f} s", flush=True)

    layers = bench_layers(args, weights, packed, qtypes, device, dtype, errors)
    model = None
    if not args.skip_model:
        with tempfile.TemporaryDirectory(prefix="bench_gguf_") as tmp:
            model = attempt(errors, "model benchmark", lambda: bench_model(args, weights, packed, qtypes, device, dtype,
                                                                          errors, Path(tmp)))

    meta = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": args.commit or git_commit(),
        "tiny": args.tiny,
        "qtypes": qtypes,
        "timer": "layers: CUDA events over back-to-back calls, round-robin over 4 weight copies (median); step: median wall time with device sync",
        "quantize_s": quantize_s,
        "total_s": time.perf_counter() - t_start,
    }
    for mod in ("diffusers", "gguf", "libgguf"):
        try:
            meta[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            meta[mod] = None
    with open(args.out, "w") as fh:
        json.dump({"meta": meta, "layers": layers, "model": model, "errors": errors}, fh, indent=2)
    print_table(meta, layers, model, qtypes, errors)
    return 0 if not errors else 3


def _f(v, fmt="8.3f"):
    return format(v, fmt) if isinstance(v, (int, float)) and v is not None else " " * (int(fmt.split(".")[0]) - 1) + "-"


def print_table(meta, layers, model, qtypes, errors):
    print()
    print(f"{meta['device']}, torch {meta['torch']}, diffusers {meta['diffusers']}, commit {meta['commit']}")
    head = f"{'K':>6} {'N':>6} {'bf16 ms':>8}"
    for q in qtypes:
        head += f" {'ours ' + q:>11} {'diff ' + q:>11} {'err ' + q:>9}"
    print(head)
    for r in layers:
        line = f"{r['K']:>6} {r['N']:>6} {_f(r.get('bf16_ms'))}"
        for q in qtypes:
            line += f" {_f(r.get(f'ours_{q}_ms'), '11.3f')} {_f(r.get(f'diffusers_{q}_ms'), '11.3f')} {_f(r.get(f'ours_{q}_rel_err'), '9.4f')}"
        print(line)
    if any("bf16_graph_ms" in r for r in layers):
        print("\nCUDA graph replay (ms, x BF16):")
        for r in layers:
            bf = r.get("bf16_graph_ms")
            line = f"{r['K']:>6} {r['N']:>6} {_f(bf)}"
            for q in qtypes:
                for who in ("ours", "diffusers"):
                    t = r.get(f"{who}_{q}_graph_ms")
                    ratio = f"({bf / t:.2f}x)" if t and bf else "(-)"
                    line += f" {who} {q} {_f(t, '7.3f')} {ratio}"
            print(line)
    if model:
        print()
        print(f"denoiser step ({model['config']['num_layers']} double + {model['config']['num_single_layers']} single "
              f"blocks, hidden {model['config']['num_attention_heads'] * 128}, {model['tokens']} tokens)")
        print(f"{'path':16s} {'step ms':>9} {'weights MiB':>12} {'rel err vs bf16':>16} {'vs diffusers':>13}")
        print(f"{'bf16':16s} {_f(model.get('bf16_step_ms'), '9.1f')} {model['bf16_weight_bytes'] / 2**20:12.1f} {'-':>16} {'-':>13}")
        for q in qtypes:
            for who in ("ours", "diffusers"):
                wb = model.get(f"{who}_{q}_weight_bytes")
                print(f"{who + ' ' + q:16s} {_f(model.get(f'{who}_{q}_step_ms'), '9.1f')} "
                      f"{(wb / 2**20) if wb else float('nan'):12.1f} {_f(model.get(f'{who}_{q}_rel_err'), '16.4f')} "
                      f"{_f(model.get(f'ours_vs_diffusers_{q}_rel_err') if who == 'ours' else None, '13.2e')}")
    if errors:
        print(f"\n{len(errors)} error(s):")
        for e in errors:
            print("  " + e)


if __name__ == "__main__":
    sys.exit(main())
