"""ModelOpt runtime methods layer by layer, on every quantized layer of real ModelOpt exports.

Each QuantLinear loads the stored tensors as they are and is compared, on fresh random inputs,
with (1) an independent float64 emulation of what ModelOpt's fake-quantized layer computes
(rel L2 < 1e-4: only float32 accumulation differs) and (2) the original bf16 layer (the
quantization error: FP8 < 0.06, INT8-SQ < 0.08, NVFP4 W4A16 < 0.15, W4A4 < 0.25).
"""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "formats"))
from modelopt_fixtures import modelopt_exports  # noqa: E402,F401

from qo_testing import rel_error  # noqa: E402
from quantomni import build_quant_config  # noqa: E402
from quantomni.formats.modelopt import ModelOptConfigError, ModelOptTensorError, read_modelopt_config  # noqa: E402
from quantomni.kernels.base import KernelSelectionError, KernelSpec, select_linear_kernel  # noqa: E402
from quantomni.kernels.nvfp4_ref import nvfp4_dequantize, nvfp4_fake_quantize_activation  # noqa: E402
from quantomni.layers.linear import QuantLinear  # noqa: E402
from quantomni.methods.registry import get_method_config_class  # noqa: E402

QUANT_TOL = {"fp8": 0.1, "fp8_pcpt": 0.1, "int8_sq": 0.12, "w4a16_nvfp4": 0.2, "nvfp4": 0.3}


def _bound_config(info):
    parsed = read_modelopt_config(info["component_dir"])
    return get_method_config_class(parsed.runtime_method)(checkpoint_dir=str(info["component_dir"])), parsed


def _layer_tensors(sd, name):
    return {k[len(name) + 1:]: v for k, v in sd.items() if k.rpartition(".")[0] == name}


def _make_layer(cfg, name, t, dtype=torch.float32, device="cpu", backend="auto"):
    n, k = t["weight"].shape[0], (t["weight"].shape[1] * 2 if t["weight"].dtype == torch.uint8 else t["weight"].shape[1])
    method = cfg.get_linear_method(name, k, n)
    layer = QuantLinear(k, n, "bias" in t, method, name, dtype)
    layer.kernel, _ = select_linear_kernel(KernelSpec(method.format, k, n, dtype, torch.device(device), method.scheme), backend)
    for suffix, tensor in t.items():
        method.load_tensor(layer, suffix, tensor)
    assert method.is_complete(layer)
    method.process_weights_after_loading(layer, torch.device(device))
    return layer


def _modelopt_emulation(algo, t, x):
    """float64 emulation of ModelOpt's fake-quantized Linear on the stored tensors."""
    xd = x.double()
    if algo in ("FP8", "FP8_PER_CHANNEL_PER_TOKEN"):
        # the rounding decision in float32, as the kernel makes it (see the INT8 branch)
        if algo == "FP8":
            s = t["input_scale"].float()
        else:
            s = (x.float().abs().amax(dim=1, keepdim=True) / 448).clamp_min(1e-12)
        xq = (x.float() / s).clamp(-448, 448).to(torch.float8_e4m3fn).double() * s.double()
        ws = t["weight_scale"].double()
        w = t["weight"].double() * (ws[:, None] if ws.dim() else ws)
    elif algo == "W8A8_SQ_PER_CHANNEL":
        # the rounding decision in float32, as the kernel makes it: in float64 a value within an ulp
        # of a .5 boundary can round the other way (seen: rel. err 8e-4 on one random draw)
        xs = x.float() * t["pre_quant_scale"].float() if "pre_quant_scale" in t else x.float()
        s = t["input_scale"].float()
        xq = torch.round(xs / s).clamp(-128, 127).double() * s.double()
        w = t["weight"].double() * t["weight_scale"].double()[:, None]
    else:
        xq = xd if "input_scale" not in t else nvfp4_fake_quantize_activation(x.float(), t["input_scale"]).double()
        w = nvfp4_dequantize(t["weight"], t["weight_scale"], t["weight_scale_2"]).double()
    out = xq @ w.t()
    return out + t["bias"].double() if "bias" in t else out


@pytest.mark.parametrize("kind", sorted(QUANT_TOL))
def test_every_layer_matches_modelopt_math(modelopt_exports, rng_seed, kind):
    info = modelopt_exports(kind)
    cfg, parsed = _bound_config(info)
    sd, orig = load_file(str(info["weights_path"])), load_file(str(info["original_weights_path"]))
    names = sorted({k.rpartition(".")[0] for k in sd if k.endswith(".weight_scale")})
    assert len(names) > 30
    for name in names:
        assert cfg.checkpoint_layer_reason(name, 0, 0) is None
        t = _layer_tensors(sd, name)
        layer = _make_layer(cfg, name, t)
        # stored as they are: no conversion at load
        assert layer.weight.dtype == t["weight"].dtype and torch.equal(layer.weight.view(torch.uint8) if layer.weight.dtype != torch.int8 else layer.weight,
                                                                       t["weight"].view(torch.uint8) if t["weight"].dtype != torch.int8 else t["weight"])
        k = layer.in_features
        amax = float(t["input_scale"]) * (448 if kind == "fp8" else 127 if kind == "int8_sq" else 6 * 448) if "input_scale" in t else 1.0
        # inside the calibrated range: static input scales saturate beyond amax by design, and a
        # few clipped values would make this float comparison flaky (seen at rel. err 0.102)
        x = (torch.randn(6, k) * (amax / 3)).clamp(-0.99 * amax, 0.99 * amax)
        if "pre_quant_scale" in t:
            x = x / t["pre_quant_scale"].float()  # SmoothQuant divides the activation outliers out
        out = layer(x)
        assert rel_error(out, _modelopt_emulation(parsed.scheme_for(name).algo, t, x)) < 1e-4, name
        ref = F.linear(x.double(), orig[f"{name}.weight"].double(),
                       orig[f"{name}.bias"].double() if f"{name}.bias" in orig else None)
        assert rel_error(out, ref) < QUANT_TOL[kind], name


def test_int8_sq_int_mm_equals_reference(modelopt_exports, rng_seed):
    info = modelopt_exports("int8_sq")
    cfg, _ = _bound_config(info)
    sd = load_file(str(info["weights_path"]))
    name = "transformer_blocks.0.ff.net.0.proj"
    t = _layer_tensors(sd, name)
    assert "pre_quant_scale" in t
    fast = _make_layer(cfg, name, t, backend="int_mm")
    ref = _make_layer(cfg, name, t, backend="torch")
    x = torch.randn(5, fast.in_features)
    torch.testing.assert_close(fast(x), ref(x), rtol=1e-6, atol=1e-6)
    x[1, 3] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN"):
        ref(x)


def test_native_fp4_stub_explains_itself():
    from quantomni.kernels.nvfp4_native import NativeFp4Kernel

    ok, why = NativeFp4Kernel.is_supported(torch.device("cpu"))
    assert not ok and "compute capability >= 10.0" in why and "FP4 scaled matmul" in why
    spec = KernelSpec("nvfp4", 64, 64, torch.bfloat16, torch.device("cpu"))
    with pytest.raises(KernelSelectionError, match="native_fp4.*compute capability >= 10.0"):
        select_linear_kernel(spec, "native_fp4")
    kernel, why = select_linear_kernel(spec)
    assert kernel.name == "torch" and "native_fp4" in why


def test_bad_tensor_at_load_names_layer(modelopt_exports):
    info = modelopt_exports("nvfp4")
    cfg, _ = _bound_config(info)
    sd = load_file(str(info["weights_path"]))
    name = "transformer_blocks.0.attn.to_k"
    t = _layer_tensors(sd, name)
    method = cfg.get_linear_method(name, 64, 64)
    layer = QuantLinear(64, 64, True, method, name, torch.float32)
    with pytest.raises(ModelOptTensorError, match=rf"'{name}' \(NVFP4\): tensor 'weight_scale'.*float8_e4m3fn.*got dtype float32"):
        method.load_tensor(layer, "weight_scale", t["weight_scale"].float())
    with pytest.raises(ModelOptTensorError, match="unexpected checkpoint tensor 'pre_quant_scale'"):
        method.load_tensor(layer, "pre_quant_scale", torch.ones(64))
    bad = t["weight_scale"].view(torch.uint8).clone()
    bad[0, 0] = 0x00  # zero block scale
    for suffix, tensor in t.items():
        method.load_tensor(layer, suffix, bad.view(torch.float8_e4m3fn) if suffix == "weight_scale" else tensor)
    with pytest.raises(ModelOptTensorError, match="non-positive"):
        method.process_weights_after_loading(layer, torch.device("cpu"))
    assert not layer.ready


def test_config_binding_rules(modelopt_exports, tmp_path):
    unbound = build_quant_config("modelopt").components["denoiser"]
    assert unbound.prequantized and unbound.checkpoint_dir is None
    with pytest.raises(ModelOptConfigError, match="not bound to a checkpoint"):
        unbound.get_linear_method("x", 32, 32)
    fp8_dir = str(modelopt_exports("fp8")["component_dir"])
    with pytest.raises(ModelOptConfigError, match="quant_algo='FP8'.*modelopt_fp4 serves"):
        get_method_config_class("modelopt_fp4")(checkpoint_dir=fp8_dir)
    with pytest.raises(ValueError, match="ignore"):
        build_quant_config({"method": "modelopt", "ignored_layers": ["x"]})
    with pytest.raises(ModelOptConfigError, match="has no ModelOpt quantization config"):
        get_method_config_class("modelopt")(checkpoint_dir=str(tmp_path))
    cfg = get_method_config_class("modelopt")(checkpoint_dir=fp8_dir)
    assert cfg.scheme_name() == "modelopt FP8 (modelopt 0.47.0)"
    assert cfg.checkpoint_layer_reason("proj_out", 64, 64) == "stored as BF16 (ModelOpt ignore list)"
    assert cfg.to_dict()["checkpoint_dir"] == fp8_dir


# ------------------------------------------------------------------ GPU (the lead runs these)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_fp8_scaled_mm_matches_reference(modelopt_exports, rng_seed):
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("scaled_mm needs compute capability >= 8.9")
    for kind in ("fp8", "fp8_pcpt"):
        info = modelopt_exports(kind)
        cfg, _ = _bound_config(info)
        sd = load_file(str(info["weights_path"]))
        for name in ("transformer_blocks.0.attn.to_q", "transformer_blocks.0.ff.net.0.proj"):
            t = _layer_tensors(sd, name)
            fast = _make_layer(cfg, name, t, torch.bfloat16, "cuda", "scaled_mm")
            ref = _make_layer(cfg, name, t, torch.bfloat16, "cpu", "torch")
            x = torch.randn(33, fast.in_features, dtype=torch.bfloat16)
            assert rel_error(fast(x.cuda()).cpu().float(), ref(x).float()) < 0.01, (kind, name)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_nvfp4_torch_path_matches_cpu(modelopt_exports, rng_seed):
    for kind in ("nvfp4", "w4a16_nvfp4"):
        info = modelopt_exports(kind)
        cfg, _ = _bound_config(info)
        sd = load_file(str(info["weights_path"]))
        name = "transformer_blocks.0.ff.net.2"
        t = _layer_tensors(sd, name)
        gpu = _make_layer(cfg, name, t, torch.float32, "cuda", "torch")
        cpu = _make_layer(cfg, name, t, torch.float32, "cpu", "torch")
        x = torch.randn(17, gpu.in_features)
        assert rel_error(gpu(x.cuda()).cpu(), cpu(x)) < 1e-5, kind
