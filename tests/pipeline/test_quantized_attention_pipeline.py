"""attention="int8" in a pipeline: every attention of the denoiser goes through the quantized kernel
(counted), the image stays close to the model's own attention, unsupported cases are errors."""
import numpy as np
import pytest
import torch

from quantomni import Omni
from quantomni.errors import QuantizationError
from quantomni.layers import attention as attention_layer


def _psnr(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    mse = ((a - b) ** 2).mean()
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_flux_int8_attention_runs_every_call_and_stays_close(demo_model_dir, monkeypatch):
    model = demo_model_dir("flux")
    kw = dict(height=64, width=64, num_inference_steps=3, seed=4321)
    base = Omni(model, device="cpu", progress=False)
    assert base.describe()["attention"]["mode"] == "sdpa"
    ref = base.generate("a red teapot", **kw).images[0]

    calls = []
    from quantomni.kernels import attention_torch

    real = attention_torch.quantized_attention_torch

    def counting(q, k, v, scale=None):
        calls.append(tuple(q.shape))
        return real(q, k, v, scale)

    monkeypatch.setattr(attention_torch, "quantized_attention_torch", counting)
    omni = Omni(model, quantization="fp8", device="cpu", progress=False, attention="int8")
    info = omni.describe()["attention"]
    n_attn = sum(1 for m in omni.denoiser.modules() if hasattr(getattr(m, "processor", None), "_attention_backend"))
    assert info == {"mode": "int8", "kernel": "torch", "processors": n_attn, "reason": info["reason"]} and n_attn > 0
    img = omni.generate("a red teapot", **kw).images[0]
    # every attention module ran through the quantized path on every step (x2 for true-CFG off: 1 pass)
    assert len(calls) == n_attn * kw["num_inference_steps"]
    value = _psnr(ref, img)
    print(f"flux fp8 + int8 attention: PSNR {value:.2f} dB")
    assert 25.0 <= value < float("inf")


def test_sdpa_models_in_the_same_process_are_untouched(demo_model_dir):
    model = demo_model_dir("flux")
    kw = dict(height=32, width=32, num_inference_steps=2, seed=7)
    a = Omni(model, device="cpu", progress=False).generate("a cat", **kw).images[0]
    Omni(model, device="cpu", progress=False, attention="int8")  # patches the FLUX module's dispatch
    b = Omni(model, device="cpu", progress=False).generate("a cat", **kw).images[0]
    assert _psnr(a, b) == float("inf")


def test_unsupported_architecture_and_mode_are_errors(demo_model_dir):
    with pytest.raises(QuantizationError, match="not supported for architecture 'sd3'"):
        Omni(demo_model_dir("sd3"), device="cpu", progress=False, attention="int8")
    with pytest.raises(ValueError, match="attention: unknown mode 'fp4'"):
        Omni(demo_model_dir("flux"), device="cpu", progress=False, attention="fp4")


def test_masks_and_gqa_are_errors_not_fallbacks():
    from quantomni.kernels.attention import select_attention_kernel

    qa = attention_layer.QuantizedAttention(select_attention_kernel("cpu"))
    q = torch.randn(1, 8, 2, 32)
    with pytest.raises(QuantizationError, match="attention masks"):
        qa(q, q, q, attn_mask=torch.ones(1, 1, 8, 8, dtype=torch.bool))
    with pytest.raises(QuantizationError, match="non-causal"):
        qa(q, q, q, is_causal=True)
    with pytest.raises(QuantizationError, match="grouped-query"):
        qa(q, q[:, :, :1], q[:, :, :1])
    out = qa(q, q, q)
    assert out.shape == q.shape and torch.isfinite(out).all()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without CUDA")
def test_cuda_request_without_cuda_is_an_error(demo_model_dir):
    with pytest.raises(ValueError, match="CUDA is not available"):
        Omni(demo_model_dir("flux"), device="cuda", attention="int8", progress=False)


def test_wan_transformer_self_cross_and_image_attention():
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "formats"))
    from gguf_name_fixtures import tiny_model

    from quantomni.models.registry import get_adapter

    model = tiny_model("wan")
    gen = torch.Generator().manual_seed(3)
    inputs = dict(hidden_states=torch.randn(1, 4, 2, 8, 8, generator=gen), timestep=torch.tensor([500]),
                  encoder_hidden_states=torch.randn(1, 512, 32, generator=gen),  # Wan pads text to 512
                  encoder_hidden_states_image=torch.randn(1, 5, 32, generator=gen), return_dict=False)
    with torch.no_grad():
        ref = model(**inputs)[0]
    plan = attention_layer.install(model, "int8", get_adapter("wan"), "cpu")
    assert plan.processors == 2  # self-attention and cross-attention (text + image keys) of the one block
    with torch.no_grad():
        out = model(**inputs)[0]
    rel = ((out - ref).norm() / ref.norm()).item()
    assert 0 < rel < 5e-2, rel


def test_server_card_and_startup_summary_name_the_attention(demo_model_dir):
    pytest.importorskip("fastapi")
    from quantomni.serve.app import _json_safe, model_card
    from quantomni.serve.server import describe_summary

    omni = Omni(demo_model_dir("flux"), device="cpu", progress=False, attention="int8")
    description = _json_safe(omni.describe())
    card = model_card(omni, description, 0)
    assert card["metadata"]["attention"]["mode"] == "int8" and card["metadata"]["attention"]["kernel"] == "torch"
    assert "attention: int8 on" in describe_summary(description)
