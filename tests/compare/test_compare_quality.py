"""Quality gate on a tiny torch 'generator' whose candidates really quantize its weights (fake-quant).

Until ``quantomni.Omni`` is wired in, this drives the whole compare machinery (runner, metrics,
report, gates) with real quantization noise instead of synthetic noise: a small MLP denoiser run
for a few steps on seeded latents, decoded to a 64x64 image by a fixed projection.
"""

import argparse
import json
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image
from torch import nn

from quantomni.compare.cli import add_compare_arguments, run_compare_command
from quantomni.compare.fakequant import BUILTIN_FORMATS


class TinyTorchEngine:
    """Engine API subset: generate/describe/denoiser_weight_bytes/close. Candidates fake-quantize weights."""

    def __init__(self, method):
        torch.manual_seed(0)
        self.denoiser = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 32))
        self.decoder = torch.randn(32, 48) / 32 ** 0.5  # token (32 ch) -> 4x4 RGB patch, kept in float
        self.method = method
        if method is not None:
            fmt = BUILTIN_FORMATS[method]
            with torch.no_grad():
                for mod in self.denoiser.modules():
                    if isinstance(mod, nn.Linear):
                        mod.weight.copy_(fmt.quantize_dequantize(mod.weight))
        self.closed = False

    def generate(self, prompt, seed=None, num_images=1, height=None, width=None, num_inference_steps=None, **_):
        h, w, steps = height or 64, width or 64, num_inference_steps or 4
        g = torch.Generator().manual_seed(int(seed) * 1000 + len(prompt))
        x = torch.randn((h // 4) * (w // 4), 32, generator=g)
        with torch.no_grad():
            for _ in range(steps):
                x = x - 0.3 * self.denoiser(x)
            patches = torch.tanh(x @ self.decoder).reshape(h // 4, w // 4, 4, 4, 3)
        pixels = ((patches.permute(0, 2, 1, 3, 4).reshape(h, w, 3) + 1) * 127.5).round().clamp(0, 255)
        image = Image.fromarray(pixels.to(torch.uint8).numpy())
        return SimpleNamespace(images=[image], timings={"total_s": 0.01}, peak_memory_bytes=None)

    @property
    def denoiser_weight_bytes(self):
        bits = {None: 16, "fp8": 8, "int8": 8, "nvfp4": 4.5}[self.method]
        return int(sum(p.numel() for p in self.denoiser.parameters()) * bits / 8)

    def close(self):
        self.closed = True


def _factory(spec, kwargs):
    return TinyTorchEngine(spec.quantization)


def test_quality_gate_on_tiny_quantized_generator(tmp_path, monkeypatch):
    import quantomni.compare.cases as cases_mod

    monkeypatch.setattr(cases_mod, "default_known_methods", lambda: frozenset({"fp8", "int8", "nvfp4"}))
    model = tmp_path / "tiny"
    model.mkdir()
    parser = add_compare_arguments(argparse.ArgumentParser())
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(["a tiny test prompt"]))
    argv = ["--model", str(model), "--candidates", "fp8,int8,nvfp4", "--seeds", "0,1", "--warmup", "0",
            "--prompts", str(prompts),
            "--num-inference-steps", "4", "--out", str(tmp_path / "out")]
    # measured: int8 ~63 dB, fp8 ~55 dB, nvfp4 ~47 dB PSNR on this contractive toy; the gate separates 4-bit
    assert run_compare_command(parser.parse_args(argv + ["--gate", "psnr>=50,ssim>=0.99"]), _factory) == 1
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    summary = {c["name"]: c["summary"] for c in data["cases"]}
    failed = {g["case"] for g in data["gates"] if not g["passed"]}
    assert failed == {"nvfp4"}
    assert summary["int8"]["psnr"] > summary["fp8"]["psnr"] > summary["nvfp4"]["psnr"]
    assert summary["nvfp4"]["weight_bytes_ratio"] < summary["fp8"]["weight_bytes_ratio"] < 1
    assert np.isfinite(summary["nvfp4"]["psnr"])
