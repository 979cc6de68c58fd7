"""benchmarks/bench_omni_decode.py runs end to end on CPU (--tiny) and writes its JSON."""

import importlib.util
import json
from pathlib import Path


def test_bench_omni_decode_tiny(tmp_path):
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_omni_decode.py"
    spec = importlib.util.spec_from_file_location("bench_omni_decode", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "r.json"
    rc = bench.main(["--tiny", "--layers", "1", "--batches", "1,2", "--decode", "2", "--warmup", "1",
                     "--moe-backend", "grouped", "--out", str(out), "--commit", "test"])
    assert rc == 0
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert {r["mode"] for r in rows} == {"bf16", "fp8", "nvfp4"} and report["commit"] == "test"
    assert all(r["tokens_per_s"] > 0 for r in rows)
    quant = [r for r in rows if r["mode"] != "bf16"]
    assert all(r["finite"] and 0 < r["prefill_logits_rel_err_vs_bf16"] < 0.5 for r in quant)
    assert all(r["stack_weight_bytes"] < rows[0]["stack_weight_bytes"] for r in quant)
