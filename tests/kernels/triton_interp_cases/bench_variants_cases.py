"""The benchmark script's variants and references agree on tiny CPU shapes under the interpreter,
so a bug in benchmarks/bench_triton_kernels.py shows up here and not on the GPU machine."""
import os
import sys
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

import torch  # noqa: E402

import bench_triton_kernels as bench  # noqa: E402

TRITON_VARIANTS = ["fp8_triton(quant+gemm)", "int8_triton(quant+gemm)", "nvfp4_w4a16_triton", "gguf_q8_0_triton",
                   "gguf_q4_k_triton", "gguf_q8_0_triton(repacked)", "gguf_q4_k_triton(repacked)",
                   "gguf_q8_0_dequant+torch.mm(diffusers-style)",
                   "gguf_q4_k_dequant+torch.mm(diffusers-style)", "act_quant_fp8_triton(only)"]


def test_bench_variants_match_their_references():
    gen = torch.Generator().manual_seed(0)
    K, N, M = 256, 48, 5
    w = (torch.randn(N, K, generator=gen) * 0.02).to(torch.bfloat16)
    bias = (torch.randn(N, generator=gen) * 0.1).to(torch.bfloat16)
    q = bench.quantize_weights(w, gen)
    x = torch.randn(M, K, generator=gen).to(torch.bfloat16)
    variants = bench.build_variants(x, w, bias, q)
    assert set(TRITON_VARIANTS) <= set(variants)
    for name in TRITON_VARIANTS + ["bf16_torch.mm"]:
        fn, ref_fn, tol = variants[name]
        out = fn()
        if ref_fn is None:
            continue
        err = bench.rel_err(out, ref_fn())
        # the interpreter truncates fp32->bf16 outputs: allow 2 bf16 ulps on the bf16-output rows
        assert err == err and err < max(tol, 1.6e-2), (name, err)


def test_row_formatting_handles_errors():
    row = bench._row({"M": 1, "K": 2, "N": 3, "variant": "v", "ok": False, "error": "boom"})
    assert "ERROR boom" in row


def test_bench_q4_k_dequant_matches_gguf_package():
    import gguf
    from gguf.quants import dequantize

    gen = torch.Generator().manual_seed(1)
    raw = bench.random_q4_k(6, 512, gen, "cpu")
    ref = torch.from_numpy(dequantize(raw.numpy(), gguf.GGMLQuantizationType.Q4_K)).reshape(6, 512)
    assert torch.allclose(bench.q4_k_dequant(raw, 512), ref, rtol=1e-6, atol=1e-6)


def test_bench_main_flow_writes_json(tmp_path):
    import json

    out = tmp_path / "bench.json"
    bench.main(["--out", str(out), "--cpu-smoke", "--m", "3,20", "--shapes", "256x40"])
    data = json.loads(out.read_text())
    rows = data["results"]
    assert {r["M"] for r in rows} == {3, 20}
    names = {r["variant"] for r in rows}
    assert set(TRITON_VARIANTS) <= names
    for r in rows:
        if r["variant"] in TRITON_VARIANTS and "rel_err" in r:
            assert r["ok"], r
        assert "ms" in r or "error" in r
