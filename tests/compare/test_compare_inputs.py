"""Parsing of candidates, cases files, prompts, seeds and gates; pixel metrics; bad input errors."""

import json
import math

import numpy as np
import pytest

from quantomni.compare.cases import (build_cases, default_known_methods, load_cases_file,
                                     load_prompts, parse_candidate, parse_seeds)
from quantomni.compare.errors import CompareInputError, GateSyntaxError, ImageMismatchError
from quantomni.compare.gates import evaluate_gates, failing_cases, parse_gates
from quantomni.compare.metrics import mae, psnr, ssim

METHODS = {"fp8", "int8", "gguf"}


@pytest.fixture()
def dirs(tmp_path):
    base = tmp_path / "flux-bf16"
    quant = tmp_path / "flux-fp8-modelopt"
    base.mkdir()
    quant.mkdir()
    gguf = tmp_path / "flux-Q4_K.gguf"
    gguf.write_bytes(b"GGUF")
    return base, quant, gguf


def test_parse_candidates_all_forms(dirs):
    base, quant, gguf = dirs
    m = str(base)
    assert parse_candidate("bf16", m, known_methods=METHODS).quantization is None
    assert parse_candidate("NONE", m, known_methods=METHODS).label == "bf16"
    fp8 = parse_candidate("fp8", m, known_methods=METHODS)
    assert (fp8.model, fp8.quantization, fp8.label) == (m, "fp8", "fp8")
    g = parse_candidate("gguf", m, gguf_model=str(gguf), known_methods=METHODS)
    assert (g.quantization, g.gguf_model, g.label) == ("gguf", str(gguf), "gguf:flux-Q4_K.gguf")
    assert parse_candidate(f"gguf:{gguf}", m, known_methods=METHODS).gguf_model == str(gguf)
    assert parse_candidate(str(gguf), m, known_methods=METHODS).quantization == "gguf"
    pre = parse_candidate(str(quant), m, known_methods=METHODS)
    assert (pre.model, pre.quantization, pre.label) == (str(quant), None, "flux-fp8-modelopt")
    assert pre.attention == fp8.attention == "sdpa"
    qa = parse_candidate("FP8+int8attn", m, known_methods=METHODS)
    assert (qa.quantization, qa.attention, qa.label) == ("fp8", "int8", "fp8+int8attn")
    assert qa.key() != fp8.key()  # loaded as its own engine
    assert parse_candidate("bf16+int8attn", m, known_methods=METHODS).to_dict()["attention"] == "int8"
    with pytest.raises(CompareInputError, match="names no engine before"):
        parse_candidate("+int8attn", m, known_methods=METHODS)


def test_candidate_errors(dirs, tmp_path):
    base, _, _ = dirs
    with pytest.raises(CompareInputError, match=r"unknown candidate 'fp4'.*fp8.*int8"):
        parse_candidate("fp4", str(base), known_methods=METHODS)
    with pytest.raises(CompareInputError, match="needs a GGUF file"):
        parse_candidate("gguf", str(base), known_methods=METHODS)
    with pytest.raises(CompareInputError, match="GGUF file .*missing.gguf.* does not exist"):
        parse_candidate(f"gguf:{tmp_path}/missing.gguf", str(base), known_methods=METHODS)
    with pytest.raises(CompareInputError, match="model path .* does not exist"):
        build_cases(str(tmp_path / "nope"), ["fp8"], known_methods=METHODS)
    with pytest.raises(CompareInputError, match="no candidates"):
        build_cases(str(base), [], known_methods=METHODS)


def test_default_known_methods_come_from_the_registry():
    from quantomni.methods.registry import registered_methods

    methods = default_known_methods()
    assert "fp8" in methods and "int8" in methods
    assert methods == frozenset(registered_methods())


def test_build_cases_unique_names(dirs):
    base, _, _ = dirs
    cases = build_cases(str(base), ["fp8", "fp8", "int8"], known_methods=METHODS)
    assert [c.name for c in cases] == ["fp8", "fp8#2", "int8"]
    assert all(c.baseline.label == "bf16" for c in cases)


def test_cases_file(dirs, tmp_path):
    base, quant, _ = dirs
    path = tmp_path / "cases.json"
    path.write_text(json.dumps([{"model": str(base), "method": "int8"},
                                {"baseline": str(base), "quantized": str(quant), "name": "modelopt"}]))
    cases = load_cases_file(str(path), known_methods=METHODS)
    assert [c.name for c in cases] == ["int8", "modelopt"]
    assert cases[1].candidate.model == str(quant) and cases[1].baseline.model == str(base)
    bad = [([{"model": str(base)}], r"\[0\]: expected keys"),
           ([{"model": str(base), "method": "fp8", "oops": 1}], "unknown keys"),
           ([{"baseline": str(base), "quantized": str(tmp_path / "x")}], r"\[0\]\.quantized.*does not exist"),
           ([{"model": str(base), "method": "fp5"}], r"\[0\]\.method: unknown candidate"),
           ([], "non-empty JSON list")]
    for content, pattern in bad:
        path.write_text(json.dumps(content))
        with pytest.raises(CompareInputError, match=pattern):
            load_cases_file(str(path), known_methods=METHODS)
    path.write_text("{not json")
    with pytest.raises(CompareInputError, match="not valid JSON"):
        load_cases_file(str(path), known_methods=METHODS)
    with pytest.raises(CompareInputError, match="does not exist"):
        load_cases_file(str(tmp_path / "missing.json"), known_methods=METHODS)


def test_prompts_and_seeds(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("# header\n a cat \n\nsecond prompt\n")
    assert load_prompts(str(txt)) == ["a cat", "second prompt"]
    js = tmp_path / "p.json"
    js.write_text(json.dumps(["one", "two"]))
    assert load_prompts(str(js)) == ["one", "two"]
    js.write_text(json.dumps(["ok", 3]))
    with pytest.raises(CompareInputError, match="JSON list of non-empty strings"):
        load_prompts(str(js))
    txt.write_text("\n# only comments\n")
    with pytest.raises(CompareInputError, match="holds no prompts"):
        load_prompts(str(txt))
    assert parse_seeds("0, 1,2") == [0, 1, 2]
    for bad, pattern in (("0,x", "'x' is not an integer"), ("-1", "negative"), ("", "expected a comma")):
        with pytest.raises(CompareInputError, match=pattern):
            parse_seeds(bad)


def test_pixel_metrics_against_numpy():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-10, 11, a.shape), 0, 255).astype(np.uint8)
    mse = np.mean((a.astype(float) - b) ** 2)
    assert psnr(a, b) == pytest.approx(10 * np.log10(255 ** 2 / mse))
    assert mae(a, b) == pytest.approx(np.abs(a.astype(float) - b).mean())
    assert math.isinf(psnr(a, a)) and ssim(a, a) == pytest.approx(1.0) and mae(a, a) == 0
    assert 0 < ssim(a, b) < 1
    with pytest.raises(ImageMismatchError, match=r"baseline image is 30x40 but candidate image is 40x30"):
        psnr(a, a.transpose(1, 0, 2))
    with pytest.raises(ImageMismatchError, match="uint8"):
        psnr(a.astype(np.float32), a)


def test_gates_parse_and_evaluate():
    gates = parse_gates("lpips<=0.15, psnr>=25,clip_delta>-1.5")
    assert [(g.metric, g.op, g.threshold) for g in gates] == [("lpips", "<=", 0.15), ("psnr", ">=", 25.0),
                                                             ("clip_score_delta", ">", -1.5)]
    assert parse_gates(None) == [] and parse_gates("  ") == []
    for bad, pattern in (("psnr=25", "cannot parse"), ("psnr>=abc", "cannot parse"), ("psnr>=25,", "empty"),
                         ("sharpness>=1", "unknown metric 'sharpness'")):
        with pytest.raises(GateSyntaxError, match=pattern):
            parse_gates(bad)
    summaries = {"good": {"psnr": 30.0, "lpips": 0.1, "clip_score_delta": 0.0},
                 "blurry": {"psnr": 20.0, "lpips": 0.3, "clip_score_delta": -2.0},
                 "noweights": {"psnr": math.inf, "lpips": "not computed: no weights", "clip_score_delta": float("nan")}}
    results = evaluate_gates(gates, summaries)
    assert failing_cases(results) == ["blurry", "noweights"]
    reasons = {(r.case, r.gate.metric): r for r in results}
    assert reasons[("noweights", "lpips")].reason == "lpips not computed: no weights"
    assert not reasons[("noweights", "clip_score_delta")].passed
    assert reasons[("noweights", "psnr")].passed
    assert all(r.passed for r in results if r.case == "good")
    peak = evaluate_gates(parse_gates("peak_memory_bytes<=10"), {"cpu": {"peak_memory_bytes": None}})
    assert not peak[0].passed and "not reported" in peak[0].reason
