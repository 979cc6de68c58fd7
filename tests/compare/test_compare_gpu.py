"""The same sensitivity and LPIPS computations on CUDA give the CPU results (GPU only)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_sensitivity_on_cuda_matches_cpu():
    from test_compare_sensitivity import calib_inputs, fragile_mlp

    from quantomni.compare.sensitivity import run_sensitivity

    results = {}
    for device in ("cpu", "cuda"):
        model = fragile_mlp().to(device)
        xs = [x.to(device) for x in calib_inputs()]
        results[device] = run_sensitivity(model, lambda: [model(x) for x in xs], formats=["nvfp4", "fp8", "int8"])
    cpu, gpu = results["cpu"], results["cuda"]
    assert gpu["layers"][0]["name"] == "fc2"
    assert [r["name"] for r in gpu["layers"]] == [r["name"] for r in cpu["layers"]]
    for a, b in zip(cpu["layers"], gpu["layers"]):
        assert b["sqnr_db"] == pytest.approx(a["sqnr_db"], abs=0.5)


def test_lpips_on_cuda_matches_cpu(tmp_path):
    from compare_fakes import candidate_pixels
    from test_compare_perceptual import _random_lpips_file  # RANDOM backbone: plumbing only

    from quantomni.compare.perceptual import LpipsScorer

    path = tmp_path / "random_lpips.safetensors"
    _random_lpips_file(path)
    a = candidate_pixels("p", 0, 64, 64, 0.0)
    b = candidate_pixels("p", 0, 64, 64, 8.0)
    assert LpipsScorer(str(path), device="cuda")(a, b) == pytest.approx(LpipsScorer(str(path))(a, b), rel=1e-3)
