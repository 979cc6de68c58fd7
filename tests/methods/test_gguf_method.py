"""GGUF method at the layer level: config validation, the packed lifecycle, and the torch kernel for
every supported block type against float (K-quants and IQ4 are exercised here with 256-wide rows).

Tolerances (relative Frobenius error of the layer output against the float weight's output, random
N(0,1) weights [48, 512], inputs N(0,4)): ~1.3x the worst error measured over 6 seeds with ggml's own
quantizers (Q8_0 0.56%, Q6_K 1.8%, Q5_0 4.4%, Q5_1 3.9%, Q5_K 3.6%, Q4_0 8.8%, Q4_1 7.9%, Q4_K 7.2%,
IQ4_NL 7.7%, IQ4_XS 7.8%, Q3_K 15.4%, Q2_K 30.7%), so a wrong nibble order or a dropped scale (errors
of 50-100% and more) fails. The kernel against dequantize-then-F.linear is exact up to float32
summation order (< 1e-6).
"""

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "formats"))
from gguf_fixtures import quantize_array, write_gguf  # noqa: E402

from qo_testing import rel_error  # noqa: E402
from quantomni import build_quant_config  # noqa: E402
from quantomni.config.base import PipelineQuantConfig  # noqa: E402
from quantomni.errors import CheckpointError  # noqa: E402
from quantomni.kernels.base import KernelSpec, select_linear_kernel  # noqa: E402
from quantomni.kernels.gguf_dequant import dequantize_gguf, qtype_id  # noqa: E402
from quantomni.kernels.gguf_torch import TorchGgufKernel  # noqa: E402
from quantomni.layers.linear import QuantLinear  # noqa: E402
from quantomni.methods.gguf import GgufConfig, GgufLinearMethod  # noqa: E402
from quantomni.methods.registry import registered_methods  # noqa: E402
from quantomni.schemes import GgufScheme  # noqa: E402

# qtype -> max relative output error against the float weight (see module docstring)
TOLERANCE = {
    "Q8_0": 0.0075, "Q6_K": 0.024, "Q5_0": 0.058, "Q5_1": 0.052, "Q5_K": 0.048, "Q4_0": 0.115, "Q4_1": 0.105,
    "Q4_K": 0.095, "IQ4_NL": 0.1, "IQ4_XS": 0.1, "Q3_K": 0.2, "Q2_K": 0.4,
}


def _layer(qtype_name, k, n, bias=True, dtype=torch.float32):
    method = GgufLinearMethod(GgufScheme(qtype_name))
    layer = QuantLinear(k, n, bias, method, "blk.lin", dtype)
    spec = KernelSpec(method.format, k, n, dtype, torch.device("cpu"), method.scheme)
    layer.kernel, _ = select_linear_kernel(spec)
    return layer


def _packed(weight, qtype_name):
    from gguf import GGMLQuantizationType as QT

    return torch.from_numpy(quantize_array(weight.numpy(), QT[qtype_name]))


@pytest.mark.parametrize("qtype_name", sorted(TOLERANCE))
def test_packed_lifecycle_and_accuracy(rng_seed, qtype_name):
    k, n = 512, 48
    weight, bias = torch.randn(n, k), torch.randn(n)
    layer = _layer(qtype_name, k, n)
    assert layer.weight.device.type == "meta" and layer.weight.dtype == torch.uint8
    assert layer.kernel is TorchGgufKernel
    packed = _packed(weight, qtype_name)
    layer.method.load_tensor(layer, "weight", packed)
    layer.method.load_tensor(layer, "bias", bias)
    layer.method.process_weights_after_loading(layer, torch.device("cpu"))
    assert layer.ready and not layer._pending
    assert torch.equal(layer.weight, packed) and layer.weight.data_ptr() != packed.data_ptr()  # owned copy, still packed
    assert layer.quantized_bytes() == packed.numel() + n * 4
    x = torch.randn(3, 7, k) * 2
    out = layer(x)
    assert out.shape == (3, 7, n) and out.dtype == torch.float32
    dense = dequantize_gguf(packed, qtype_id(qtype_name), (n, k))
    assert rel_error(out, F.linear(x, dense, bias)) < 1e-6
    err = rel_error(out, F.linear(x, weight, bias))
    print(f"{qtype_name}: rel err vs float {err:.4f}")
    assert 0 < err < TOLERANCE[qtype_name]


def test_bf16_activations_and_no_bias(rng_seed):
    k, n = 256, 32
    weight = torch.randn(n, k)
    layer = _layer("Q4_K", k, n, bias=False, dtype=torch.bfloat16)
    layer.method.load_tensor(layer, "weight", _packed(weight, "Q4_K"))
    layer.method.process_weights_after_loading(layer, torch.device("cpu"))
    x = torch.randn(5, k)
    out = layer(x)
    assert out.dtype == torch.bfloat16
    assert rel_error(out.float(), x @ weight.t()) < 0.1


def test_bad_packed_tensors_are_rejected():
    layer = _layer("Q8_0", 64, 16)  # 64 weights per row = 2 blocks of 34 bytes
    with pytest.raises(CheckpointError, match=r"'blk.lin': packed Q8_0 weight must be uint8 \[16, 68\].*got torch.uint8 \[16, 70\]"):
        layer.method.load_tensor(layer, "weight", torch.zeros(16, 70, dtype=torch.uint8))
    with pytest.raises(CheckpointError, match=r"got torch.float32 \[16, 64\]"):
        layer.method.load_tensor(layer, "weight", torch.randn(16, 64))
    with pytest.raises(ValueError, match=r"bias has shape \(15,\)"):
        layer.method.load_tensor(layer, "bias", torch.randn(15))
    with pytest.raises(ValueError, match="unexpected checkpoint tensor 'weight_scale'"):
        layer.method.load_tensor(layer, "weight_scale", torch.randn(16))
    with pytest.raises(CheckpointError, match="row length 100 is not a multiple of the Q4_K block size 256"):
        _layer("Q4_K", 100, 16)
    layer.method.load_tensor(layer, "weight", torch.zeros(16, 68, dtype=torch.uint8))
    layer.method.load_tensor(layer, "bias", torch.full((16,), float("nan")))
    with pytest.raises(CheckpointError, match="NaN/Inf"):
        layer.method.process_weights_after_loading(layer, torch.device("cpu"))


def test_kernel_selection_reasons():
    ok = KernelSpec("gguf", 256, 8, torch.float32, torch.device("cpu"), GgufScheme("Q4_K"))
    assert select_linear_kernel(ok)[0] is TorchGgufKernel
    assert select_linear_kernel(ok, "torch")[0] is TorchGgufKernel
    fits, why = TorchGgufKernel.can_implement(dataclasses.replace(ok, in_features=128))
    assert not fits and "128 is not a multiple of the Q4_K block size 256" in why
    ok_, why = TorchGgufKernel.can_implement(KernelSpec("gguf", 256, 8, torch.float32, torch.device("cpu"),
                                                        GgufScheme("IQ2_XXS")))
    assert not ok_ and "IQ2_XXS" in why and "Q4_K" in why


@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory):
    from gguf import GGMLQuantizationType as QT

    path = tmp_path_factory.mktemp("gguf-cfg") / "tiny.gguf"
    torch.manual_seed(0)
    tensors = {"x_embedder.weight": torch.randn(64, 64), "x_embedder.bias": torch.randn(64),
               "proj_out.weight": torch.randn(16, 64)}
    # the names diffusers-named FLUX files are recognised by (1-D here: they are not 2-D weights)
    for name in ("single_transformer_blocks.0.proj_mlp.weight", "time_text_embed.timestep_embedder.linear_1.weight",
                 "transformer_blocks.0.norm1.linear.weight"):
        tensors[name] = torch.randn(32)
    write_gguf(path, tensors, arch="flux",
               qtype_policy=lambda name, t: QT.Q8_0 if name == "x_embedder.weight" else QT.F16 if t.ndim == 2 else QT.F32)
    return path


def test_config_validation(tmp_path, small_gguf):
    assert "gguf" in registered_methods()
    with pytest.raises(ValueError, match=r"gguf.path: GGUF file '.*nope.gguf' does not exist"):
        build_quant_config({"method": "gguf", "path": str(tmp_path / "nope.gguf")})
    with pytest.raises(ValueError, match="gguf.path: expected the path of a .gguf file, got ''"):
        build_quant_config("gguf")
    with pytest.raises(ValueError, match=r"gguf.ignored_layers: got \['x_embedder'\].*not supported"):
        GgufConfig(path=str(small_gguf), ignored_layers=("x_embedder",))
    with pytest.raises(ValueError, match="unknown option"):
        build_quant_config({"method": "gguf", "path": str(small_gguf), "qtype": "Q4_K"})
    cfg = build_quant_config({"method": "gguf", "path": small_gguf})  # a Path is accepted and stored as str
    method_cfg = cfg.components["denoiser"]
    assert isinstance(method_cfg, GgufConfig) and method_cfg.prequantized


def test_one_gguf_file_cannot_feed_two_denoisers(small_gguf):
    """Wan 2.2 has transformer and transformer_2: a single file for the "denoiser" alias is refused
    (it would load the same weights twice); one file per denoiser, or the alias with the other
    denoiser named explicitly, is accepted."""
    both = ["transformer", "transformer_2", "vae"]
    with pytest.raises(ValueError, match=r'one file holds one denoiser.*transformer, transformer_2.*"transformer_2": '):
        build_quant_config({"method": "gguf", "path": str(small_gguf)}).resolve(both)
    per = build_quant_config({"transformer": {"method": "gguf", "path": str(small_gguf)},
                              "transformer_2": {"method": "gguf", "path": str(small_gguf)}}).resolve(both)
    assert per["transformer"].path == per["transformer_2"].path == str(small_gguf)
    mixed = build_quant_config({"denoiser": {"method": "gguf", "path": str(small_gguf)}, "transformer_2": None}).resolve(both)
    assert isinstance(mixed["transformer"], GgufConfig) and mixed["transformer_2"] is None
    assert isinstance(build_quant_config({"method": "gguf", "path": str(small_gguf)}).resolve(["transformer"])["transformer"], GgufConfig)


def test_config_hooks_read_the_file_once_and_stay_serialisable(small_gguf, monkeypatch):
    import quantomni.formats.gguf_file as gguf_file

    calls = []
    real = gguf_file.read_gguf
    monkeypatch.setattr(gguf_file, "read_gguf", lambda p: calls.append(p) or real(p))
    cfg = GgufConfig(path=str(small_gguf))
    assert calls == []  # lazy: nothing is read while building the config
    assert cfg.checkpoint_layer_reason("x_embedder", 64, 64) is None
    assert cfg.checkpoint_layer_reason("proj_out", 64, 16) == "stored as F16 in the GGUF file"
    assert cfg.checkpoint_layer_reason("norm_out.linear", 64, 16) == "no weight in the GGUF file"
    method = cfg.get_linear_method("x_embedder", 64, 64)
    assert method.scheme == GgufScheme("Q8_0") and method.scheme.describe() == "gguf Q8_0"
    assert cfg.scheme_name() == "gguf flux (F16: 1, Q8_0: 1)"
    assert cfg.summary()["architecture"] == "flux" and cfg.summary()["naming"] == "diffusers"
    assert len(calls) == 1
    data = PipelineQuantConfig({"denoiser": cfg}).to_json()
    assert json.loads(data)["components"]["denoiser"] == {
        "method": "gguf", "path": str(small_gguf), "ignored_layers": [], "skip_sensitive_layers": True}
    assert PipelineQuantConfig.from_json(data).components["denoiser"] == cfg
