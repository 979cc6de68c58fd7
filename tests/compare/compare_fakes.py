"""Fake engines for compare tests: deterministic images, candidates = baseline + known Gaussian noise."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

# Noise standard deviation (uint8 units) added by each candidate label / quantization.
NOISE_SIGMA = {None: 0.0, "bf16": 0.0, "fp8": 3.0, "int8": 8.0, "gguf": 12.0, "bad": 40.0}
KNOWN_METHODS = frozenset({"fp8", "int8", "gguf", "bad"})


def baseline_pixels(prompt: str, seed: int, height: int, width: int) -> np.ndarray:
    """Smooth gradient + a few blocks, values in [40, 215] so sigma<=8 noise rarely clips."""
    rng = np.random.default_rng([seed, zlib.crc32(prompt.encode())])
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.zeros((height, width, 3))
    for c in range(3):
        a, b = rng.uniform(-1, 1, 2)
        img[..., c] = 127.5 + 60 * np.sin(a * xx / 7.0 + b * yy / 5.0 + c)
    for _ in range(4):
        y0, x0 = rng.integers(0, max(1, height // 2)), rng.integers(0, max(1, width // 2))
        img[y0:y0 + height // 4, x0:x0 + width // 4] += rng.uniform(-25, 25, 3)
    return np.clip(np.round(img), 40, 215).astype(np.uint8)


def candidate_pixels(prompt: str, seed: int, height: int, width: int, sigma: float) -> np.ndarray:
    base = baseline_pixels(prompt, seed, height, width)
    if sigma == 0:
        return base
    rng = np.random.default_rng([seed, zlib.crc32(prompt.encode()), 99])
    noisy = base.astype(np.float64) + rng.normal(0.0, sigma, base.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


@dataclass
class FakeResult:
    images: list
    timings: dict
    peak_memory_bytes: int | None


@dataclass
class FakeEngine:
    spec: object
    sigma: float
    log: list
    default_size: int = 64
    weight_bytes: int = 1000
    peak: int | None = 5000
    size_override: tuple | None = None
    calls: list = field(default_factory=list)
    closed: bool = False

    def generate(self, prompt, negative_prompt=None, height=None, width=None, num_inference_steps=None,
                 guidance_scale=None, seed=None, num_images=1):
        assert not self.closed, "generate after close"
        self.calls.append({"prompt": prompt, "seed": seed, "height": height, "width": width,
                           "steps": num_inference_steps, "guidance": guidance_scale, "negative": negative_prompt})
        h = height or self.default_size
        w = width or self.default_size
        if self.size_override:
            h, w = self.size_override
        arr = candidate_pixels(prompt, seed, h, w, self.sigma)
        latency = 0.1 * (1 + self.sigma / 10)  # deterministic "latency"
        return FakeResult(images=[Image.fromarray(arr)], timings={"total_s": latency, "denoise_s": latency * 0.8},
                          peak_memory_bytes=self.peak)

    @property
    def denoiser_weight_bytes(self):
        return self.weight_bytes

    def describe(self):
        return {"model": self.spec.model, "device": "cpu", "dtype": "bfloat16", "load_time_s": 0.25,
                "components": {"transformer": {"class": "Fake", "method": self.spec.quantization,
                                               "quantized_layers": 0, "weight_bytes": self.weight_bytes}}}

    def close(self):
        self.closed = True
        self.log.append(("close", self.spec.label))


def make_factory(log: list | None = None, size_overrides: dict | None = None):
    """engine_factory for run_comparison: sigma from the spec's quantization (or label), shrinking weights."""
    log = [] if log is None else log
    engines = []
    weight = {None: 2000, "fp8": 1000, "int8": 1000, "gguf": 600, "bad": 500}

    def factory(spec, engine_kwargs):
        open_engines = [e for e in engines if not e.closed]
        assert not open_engines, f"engine {open_engines[0].spec.label} still open when building {spec.label}"
        key = spec.quantization if spec.quantization in NOISE_SIGMA else spec.label
        sigma = NOISE_SIGMA.get(key, 5.0)
        log.append(("create", spec.label, dict(engine_kwargs)))
        eng = FakeEngine(spec=spec, sigma=sigma, log=log, weight_bytes=weight.get(spec.quantization, 1500),
                         size_override=(size_overrides or {}).get(spec.label))
        engines.append(eng)
        return eng

    factory.engines = engines
    factory.log = log
    return factory


def numpy_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Independent PSNR formula for the tests."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(20 * np.log10(255.0) - 10 * np.log10(mse))
