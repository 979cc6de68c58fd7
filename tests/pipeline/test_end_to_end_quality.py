"""End to end on each tiny architecture: the quantized image against BF16, same prompt and seed.

Threshold: 30 dB PSNR. With per-channel/per-token scales the per-layer output error is ~3% (FP8)
and ~1% (INT8) of the signal; over 4 steps of a 2+2-block random DiT, measured PSNR is ~45-50 dB
for both. 30 dB leaves room for seed-to-seed spread yet fails for a broken path: quantizing the
sensitive layers or a wrong scale drops it far below (a random image against the baseline is
~10 dB).
"""

import numpy as np
import pytest

from quantomni import Omni

PSNR_MIN_DB = 30.0


def _psnr(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    mse = ((a - b) ** 2).mean()
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.mark.parametrize("arch", ["flux", "qwen-image", "sd3"])
def test_quantized_images_close_to_bf16(demo_model_dir, arch):
    model = demo_model_dir(arch)
    kw = dict(height=64, width=64, num_inference_steps=4, seed=1234)
    base = Omni(model, device="cpu", progress=False)
    ref = base.generate("a red teapot", **kw).images[0]
    assert np.asarray(ref).std() > 5, "baseline image is flat; the check would be meaningless"
    for method in ("fp8", "int8"):
        omni = Omni(model, quantization=method, device="cpu", progress=False)
        assert omni.plans["transformer"].quantized_count > 0
        img = omni.generate("a red teapot", **kw).images[0]
        value = _psnr(ref, img)
        print(f"{arch} {method}: PSNR {value:.2f} dB")
        assert PSNR_MIN_DB <= value < float("inf"), f"{arch} {method}: PSNR {value:.2f} dB"
        assert omni.denoiser_weight_bytes < base.denoiser_weight_bytes


def test_generation_is_deterministic_and_batched_seeds_are_per_prompt(demo_model_dir):
    omni = Omni(demo_model_dir("flux"), quantization="fp8", device="cpu", progress=False)
    kw = dict(height=32, width=32, num_inference_steps=2)
    a = omni.generate("a cat", seed=5, **kw).images[0]
    b = omni.generate(["a dog", "a cat"], seed=[9, 5], **kw).images[1]
    # same seed, same prompt: batching changes only float summation order (not the noise)
    assert _psnr(a, b) > 40
    c = omni.generate("a cat", seed=6, **kw).images[0]
    assert _psnr(a, c) < 30, "a different seed must give a different image"
    r = omni.generate("a cat", seed=5, num_images=2, **kw)
    assert len(r.images) == 2 and r.timings["total_s"] > 0 and r.peak_memory_bytes is None


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(height=30), "height: expected a positive multiple of 16"),
    (dict(num_inference_steps=0), "num_inference_steps"),
    (dict(num_images=0), "num_images"),
    (dict(seed=[1, 2]), "seed: got 2 values for 1 prompts"),
])
def test_generate_validates_arguments(demo_model_dir, kwargs, fragment):
    omni = Omni(demo_model_dir("flux"), device="cpu", progress=False)
    with pytest.raises(ValueError, match=fragment):
        omni.generate("a cat", **kwargs)


def test_cancel_event_stops_generation(demo_model_dir):
    import threading

    from quantomni.errors import GenerationCancelled

    omni = Omni(demo_model_dir("flux"), device="cpu", progress=False)
    ev = threading.Event()
    ev.set()
    with pytest.raises(GenerationCancelled):
        omni.generate("a cat", height=32, width=32, num_inference_steps=3, cancel_event=ev)
