"""Quality gate on a tiny random-weight FluxPipeline, through the whole compare command.

Until ``quantomni.Omni`` lands, candidates are built here by fake-quantizing the transformer's Linear
layers with the reference formats of ``quantomni.compare.fakequant`` (weights and activations); the
second test runs the same flow through the real engine (``default_factory``) once it exists.
"""

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from compare_tiny_flux import build_tiny_flux  # noqa: E402

from quantomni.compare.cli import add_compare_arguments, run_compare_command  # noqa: E402

@pytest.fixture(scope="module")
def tiny_flux_dir(tmp_path_factory):
    return build_tiny_flux(str(tmp_path_factory.mktemp("tiny_flux")))


class FakeQuantFluxEngine:
    """Engine API over diffusers' FluxPipeline; 'quantization' = reference fake-quant of transformer Linears."""

    def __init__(self, model, quantization=None, **_):
        import torch
        from diffusers import FluxPipeline

        from quantomni.compare.fakequant import BUILTIN_FORMATS

        self.pipe = FluxPipeline.from_pretrained(model)
        self.pipe.set_progress_bar_config(disable=True)
        self.bits = 16
        if quantization is not None:
            fmt = BUILTIN_FORMATS[quantization]
            self.bits = 8
            with torch.no_grad():
                for mod in self.pipe.transformer.modules():
                    if isinstance(mod, torch.nn.Linear):
                        mod.weight.copy_(fmt.quantize_dequantize(mod.weight).to(mod.weight.dtype))
                        mod.register_forward_pre_hook(
                            lambda _m, args: (fmt.activation_fake_quant(args[0]).to(args[0].dtype),) + args[1:])

    def generate(self, prompt, seed=None, num_images=1, height=None, width=None, num_inference_steps=None,
                 guidance_scale=None, negative_prompt=None):
        import time

        import torch

        start = time.perf_counter()
        out = self.pipe(prompt, height=height, width=width, num_inference_steps=num_inference_steps,
                        guidance_scale=3.5 if guidance_scale is None else guidance_scale, max_sequence_length=32,
                        generator=torch.Generator().manual_seed(seed), num_images_per_prompt=num_images)
        return SimpleNamespace(images=out.images, timings={"total_s": time.perf_counter() - start},
                               peak_memory_bytes=None)

    @property
    def denoiser_weight_bytes(self):
        return sum(p.numel() for p in self.pipe.transformer.parameters()) * self.bits // 8

    def close(self):
        del self.pipe


def _args(model, out, extra):
    prompts = Path(out) / "prompts.txt"
    Path(out).mkdir(parents=True, exist_ok=True)
    prompts.write_text("a lighthouse on a cliff\n")
    parser = add_compare_arguments(argparse.ArgumentParser())
    return parser.parse_args(["--model", model, "--prompts", str(prompts), "--seeds", "0", "--height", "64",
                              "--width", "64", "--num-inference-steps", "2", "--warmup", "0", "--out", str(out),
                              *extra])


@pytest.mark.slow
def test_tiny_flux_fp8_int8_quality_gate(tiny_flux_dir, tmp_path, monkeypatch):
    import quantomni.compare.cases as cases_mod

    monkeypatch.setattr(cases_mod, "default_known_methods", lambda: frozenset({"fp8", "int8"}))
    factory = lambda spec, kw: FakeQuantFluxEngine(spec.model, spec.quantization)  # noqa: E731
    code = run_compare_command(_args(tiny_flux_dir, tmp_path, ["--candidates", "fp8,int8",
                                                               "--gate", "psnr>=25,ssim>=0.8"]), factory)
    data = json.loads((tmp_path / "report.json").read_text())
    summary = {c["name"]: c["summary"] for c in data["cases"]}
    assert code == 0, summary
    for name in ("fp8", "int8"):
        assert 25 <= summary[name]["psnr"] < 200 and summary[name]["weight_bytes_ratio"] == pytest.approx(0.5)
    assert (tmp_path / "grid.png").is_file() and (tmp_path / "tradeoff.png").is_file()


def test_tiny_flux_through_real_engine(tiny_flux_dir, tmp_path):
    quantomni = pytest.importorskip("quantomni")
    if not hasattr(quantomni, "Omni"):
        pytest.skip("quantomni.Omni is not available yet")
    code = run_compare_command(_args(tiny_flux_dir, tmp_path, ["--candidates", "fp8,int8", "--dtype", "float32",
                                                               "--gate", "psnr>=20"]))
    data = json.loads((tmp_path / "report.json").read_text())
    assert code == 0, {c["name"]: c["summary"]["psnr"] for c in data["cases"]}
