"""End-to-end comparison with fake engines: numbers, outputs, gates, 'not computed' everywhere."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from compare_fakes import KNOWN_METHODS, NOISE_SIGMA, baseline_pixels, candidate_pixels, make_factory, numpy_psnr  # noqa: E402

from quantomni.compare.cases import build_cases  # noqa: E402
from quantomni.compare.cli import add_compare_arguments, run_compare_command  # noqa: E402
from quantomni.compare.errors import ImageMismatchError  # noqa: E402
from quantomni.compare.perceptual import NOT_COMPUTED  # noqa: E402
from quantomni.compare.report import write_report  # noqa: E402
from quantomni.compare.runner import CompareSpec, run_comparison  # noqa: E402

PROMPTS = ["a red fox in snow", "a bowl of ramen"]
SEEDS = [0, 3]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    (d / "model_index.json").write_text("{}")
    return str(d)


@pytest.fixture(scope="module")
def run_result(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    cases = build_cases(model_dir, ["fp8", "int8"], known_methods=KNOWN_METHODS)
    factory = make_factory()
    spec = CompareSpec(cases=cases, prompts=PROMPTS, seeds=SEEDS, height=64, width=48, num_inference_steps=4,
                       guidance_scale=3.5, repeats=3, warmup=1, out_dir=str(out))
    report = run_comparison(spec, engine_factory=factory, progress=False)
    paths = write_report(report, out)
    return report, paths, factory, out


def test_psnr_matches_independent_numpy_formula(run_result):
    report, _, _, _ = run_result
    by_name = {c["name"]: c for c in report.cases}
    assert list(by_name) == ["fp8", "int8"]
    for name in ("fp8", "int8"):
        sigma = NOISE_SIGMA[name]
        for i, p in enumerate(by_name[name]["per_prompt"]):
            for row in p["per_seed"]:
                ref = baseline_pixels(PROMPTS[i], row["seed"], 64, 48)
                cand = candidate_pixels(PROMPTS[i], row["seed"], 64, 48, sigma)
                assert row["psnr"] == pytest.approx(numpy_psnr(ref, cand), abs=1e-9)
                assert row["mae"] == pytest.approx(np.abs(ref.astype(float) - cand).mean(), abs=1e-9)
        # Gaussian noise of std sigma: PSNR ~ 20 log10(255 / sigma) (values away from the clip range)
        assert by_name[name]["mean"]["psnr"] == pytest.approx(20 * math.log10(255 / sigma), abs=0.3)
    assert by_name["fp8"]["mean"]["psnr"] > by_name["int8"]["mean"]["psnr"]
    assert 0 < by_name["int8"]["mean"]["ssim"] < by_name["fp8"]["mean"]["ssim"] < 1


def test_same_settings_and_one_engine_at_a_time(run_result):
    _, _, factory, _ = run_result
    assert [e[0] for e in factory.log] == ["create", "close"] * 3
    assert [e[1] for e in factory.log if e[0] == "create"] == ["bf16", "fp8", "int8"]
    for eng in factory.engines:
        assert eng.closed
        # warmup + prompts x seeds x repeats
        assert len(eng.calls) == 1 + len(PROMPTS) * len(SEEDS) * 3
        assert {(c["height"], c["width"], c["steps"], c["guidance"]) for c in eng.calls} == {(64, 48, 4, 3.5)}
    timed = [[(c["prompt"], c["seed"]) for c in e.calls[1:]] for e in factory.engines]
    assert timed[0] == timed[1] == timed[2]


def test_perf_numbers(run_result):
    report, _, _, _ = run_result
    fp8 = report.engines["fp8"]
    assert fp8["latency_mean_s"] == pytest.approx(0.1 * 1.3)
    assert fp8["throughput_images_per_s"] == pytest.approx(1 / 0.13)
    assert fp8["n_timed_images"] == 12
    assert fp8["peak_memory_bytes"] == 5000 and fp8["denoiser_weight_bytes"] == 1000
    assert fp8["load_time_s"] == 0.25
    summary = report.case_summaries()["int8"]
    assert summary["speedup"] == pytest.approx(0.1 / 0.18)
    assert summary["weight_bytes_ratio"] == pytest.approx(0.5)


def test_outputs_exist_and_are_valid(run_result):
    _, paths, _, out = run_result
    data = json.loads((out / "report.json").read_text())  # strict JSON: no NaN/Infinity tokens
    assert [c["name"] for c in data["cases"]] == ["fp8", "int8"]
    assert set(data["engines"]) == {"bf16", "fp8", "int8"}
    md = (out / "report.md").read_text()
    assert "| case | vs | PSNR dB" in md and "| fp8 | bf16 |" in md and "| bf16 (baseline) |" in md
    grid = Image.open(out / "grid.png")
    grid.load()
    # 3 columns of 48-px-wide images, 2 rows of 64-px images
    assert grid.width >= 3 * 48 and grid.height >= 2 * 64
    trade = Image.open(out / "tradeoff.png")
    trade.load()
    assert trade.width > 100
    assert len(list((out / "images" / "fp8").glob("*.png"))) == len(PROMPTS) * len(SEEDS)


def test_not_computed_shows_everywhere_without_weights(run_result):
    report, _, _, out = run_result
    assert report.perceptual == {"lpips": NOT_COMPUTED, "clip_score": NOT_COMPUTED}
    data = json.loads((out / "report.json").read_text())
    for case in data["cases"]:
        for key in ("lpips", "clip_score", "clip_score_delta"):
            assert case["mean"][key] == NOT_COMPUTED
            assert all(p[key] == NOT_COMPUTED for p in case["per_prompt"])
    md = (out / "report.md").read_text()
    assert md.count(NOT_COMPUTED) >= 2 * 3
    assert "LPIPS: not computed: no weights" in md


def test_identical_candidate_gives_inf_psnr_as_json_string(model_dir, tmp_path):
    cases = build_cases(model_dir, ["bf16"], known_methods=KNOWN_METHODS)
    spec = CompareSpec(cases=cases, prompts=["x"], seeds=[1], warmup=0)
    report = run_comparison(spec, engine_factory=make_factory(), progress=False)
    assert math.isinf(report.cases[0]["mean"]["psnr"]) and report.cases[0]["mean"]["ssim"] == pytest.approx(1.0)
    paths = write_report(report, tmp_path)
    assert json.loads(paths["json"].read_text())["cases"][0]["mean"]["psnr"] == "inf"


def test_mismatched_resolution_is_a_clear_error(model_dir):
    cases = build_cases(model_dir, ["int8"], known_methods=KNOWN_METHODS)
    spec = CompareSpec(cases=cases, prompts=["x"], seeds=[0], warmup=0)
    with pytest.raises(ImageMismatchError, match=r"case 'int8'.*64x64.*32x48"):
        run_comparison(spec, engine_factory=make_factory(size_overrides={"int8": (48, 32)}), progress=False)


def _cli(argv):
    import argparse

    parser = add_compare_arguments(argparse.ArgumentParser())
    return parser.parse_args(argv)


def test_cli_gates_exit_code_and_names_failing_case(model_dir, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n\n# comment\na dog\n")
    argv = ["--model", model_dir, "--candidates", "fp8,int8", "--prompts", str(prompts), "--seeds", "0,1",
            "--out", str(tmp_path / "o"), "--warmup", "0"]
    # fp8 ~38.6 dB, int8 ~30.1 dB
    assert run_compare_command(_cli(argv + ["--gate", "psnr>=35"]), engine_factory=make_factory()) == 1
    err = capsys.readouterr().err
    assert "int8" in err and "fp8" not in err.split("failed the gates:")[1]
    md = (tmp_path / "o" / "report.md").read_text()
    assert "| int8 | psnr>=35 | **FAIL** |" in md and "| fp8 | psnr>=35 | pass |" in md
    assert run_compare_command(_cli(argv + ["--gate", "psnr>=25,ssim>0.5"]), engine_factory=make_factory()) == 0
    data = json.loads((tmp_path / "o" / "report.json").read_text())
    assert all(g["passed"] for g in data["gates"])


def test_cli_gate_on_not_computed_metric_fails_with_reason(model_dir, tmp_path, capsys):
    argv = ["--model", model_dir, "--candidates", "fp8", "--out", str(tmp_path), "--warmup", "0",
            "--gate", "lpips<=0.15"]
    assert run_compare_command(_cli(argv), engine_factory=make_factory()) == 1
    err = capsys.readouterr().err
    assert "fp8" in err and "lpips not computed: no weights" in err


def test_cli_bad_input_returns_2(model_dir, tmp_path, capsys):
    base = ["--out", str(tmp_path), "--model", model_dir]
    assert run_compare_command(_cli(base + ["--candidates", "fp9"]), engine_factory=make_factory()) == 2
    assert "unknown candidate 'fp9'" in capsys.readouterr().err
    assert run_compare_command(_cli(base + ["--candidates", "fp8", "--gate", "psnr=>3"]), make_factory()) == 2
    assert "cannot parse" in capsys.readouterr().err
    assert run_compare_command(_cli(base + ["--candidates", "fp8", "--lpips-weights", str(tmp_path / "no.st")]),
                               make_factory()) == 2
    assert "--lpips-weights" in capsys.readouterr().err
    assert run_compare_command(_cli(["--out", str(tmp_path), "--candidates", "fp8"]), make_factory()) == 2
    assert "--model is required" in capsys.readouterr().err


def test_cases_file_with_two_baselines(tmp_path):
    a, b, q = tmp_path / "flux", tmp_path / "sd3", tmp_path / "flux-fp8-prequant"
    for d in (a, b, q):
        d.mkdir()
    cases_file = tmp_path / "cases.json"
    cases_file.write_text(json.dumps([{"model": str(a), "method": "int8"}, {"model": str(b), "method": "fp8"},
                                      {"baseline": str(a), "quantized": str(q)}]))
    log = []
    argv = ["--cases", str(cases_file), "--out", str(tmp_path / "o"), "--warmup", "0", "--seeds", "2"]
    assert run_compare_command(_cli(argv), engine_factory=make_factory(log)) == 0
    data = json.loads((tmp_path / "o" / "report.json").read_text())
    assert [(c["name"], c["baseline"], c["candidate"]) for c in data["cases"]] == [
        ("int8", "bf16", "int8"), ("fp8", "bf16 [sd3]", "fp8"),
        ("flux-fp8-prequant vs flux", "bf16", "flux-fp8-prequant")]
    # the flux baseline is generated once and reused by the pre-quantized case
    assert [e[1] for e in log if e[0] == "create"] == ["bf16", "int8", "bf16", "fp8", "flux-fp8-prequant"]
    assert data["engines"]["bf16 [sd3]"]["role"] == "baseline"
    grid = Image.open(tmp_path / "o" / "grid.png")
    assert grid.width >= 5 * 64


def test_latency_percentiles():
    from quantomni.compare.runner import EngineRun

    run = EngineRun(label="x", spec=None, latencies_s=[0.5, 0.1, 0.2, 0.3, 0.4, 1.0])
    perf = run.perf()
    lat = np.array(run.latencies_s)
    assert perf["latency_mean_s"] == pytest.approx(lat.mean())
    assert perf["latency_p50_s"] == pytest.approx(0.35) and perf["latency_p90_s"] == pytest.approx(np.percentile(lat, 90))
    assert perf["throughput_images_per_s"] == pytest.approx(6 / lat.sum())


def test_spec_validation(model_dir):
    from quantomni.compare.errors import CompareInputError

    cases = build_cases(model_dir, ["fp8"], known_methods=KNOWN_METHODS)
    for kwargs, pattern in (({"repeats": 0}, "--repeats"), ({"height": -8}, "--height"),
                            ({"prompts": []}, "prompts"), ({"warmup": -1}, "--warmup")):
        args = {"cases": cases, "prompts": ["x"], **kwargs}
        with pytest.raises(CompareInputError, match=pattern):
            CompareSpec(**args)


def test_candidate_generated_before_its_second_baseline(tmp_path):
    from quantomni.compare.cases import Case, EngineSpec

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    base_a = EngineSpec(str(a), None, label="A")
    base_b = EngineSpec(str(b), None, label="B")
    cand = EngineSpec(str(a), "int8", label="int8")
    cases = [Case("int8 vs A", base_a, cand), Case("int8 vs B", base_b, cand)]
    spec = CompareSpec(cases=cases, prompts=["x"], seeds=[0, 1, 2], warmup=0)
    report = run_comparison(spec, engine_factory=make_factory(), progress=False)
    assert [c["name"] for c in report.cases] == ["int8 vs A", "int8 vs B"]
    assert all(len(c["per_prompt"][0]["per_seed"]) == 3 for c in report.cases)
