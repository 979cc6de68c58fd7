"""Contract every online method passes: lifecycle, accuracy against float, memory, bad input."""

import pytest
import torch
from torch import nn

from qo_testing import rel_error
from quantomni import build_quant_config
from quantomni.kernels.base import KernelSpec, select_linear_kernel
from quantomni.layers.linear import QuantLinear

METHOD_SPECS = {
    "fp8-channel-token": ({"method": "fp8"}, 0.06),
    "fp8-tensor-tensor": ({"method": "fp8", "weight_granularity": "tensor", "activation_granularity": "tensor"}, 0.08),
    "fp8-static": ({"method": "fp8", "activation_scheme": "static", "activation_scales": {"*": 8.0 / 448}}, 0.08),
    "int8": ({"method": "int8"}, 0.02),
}


def _make(spec, k, n, bias=True, dtype=torch.float32):
    cfg = build_quant_config(spec).components["denoiser"]
    method = cfg.get_linear_method("blk.lin", k, n)
    layer = QuantLinear(k, n, bias, method, "blk.lin", dtype)
    kernel, _ = select_linear_kernel(KernelSpec(method.format, k, n, dtype, torch.device("cpu"), method.scheme))
    layer.kernel = kernel
    return layer


@pytest.mark.parametrize("name", sorted(METHOD_SPECS))
def test_lifecycle_and_accuracy(rng_seed, name):
    spec, tol = METHOD_SPECS[name]
    k, n = 96, 40
    ref = nn.Linear(k, n)
    layer = _make(spec, k, n)
    assert layer.weight.device.type == "meta"  # create_weights makes placeholders only
    layer.method.load_tensor(layer, "weight", ref.weight.detach().clone())
    assert not layer.method.is_complete(layer)
    layer.method.load_tensor(layer, "bias", ref.bias.detach().clone())
    assert layer.method.is_complete(layer)
    layer.method.process_weights_after_loading(layer, torch.device("cpu"))
    assert layer.ready and not layer._pending
    x = torch.randn(3, 5, k) * 2
    out = layer(x)
    assert out.shape == (3, 5, n)
    assert rel_error(out, ref(x).detach()) < tol
    assert layer.quantized_bytes() < (k * n + n) * 2  # smaller than the BF16 weight


@pytest.mark.parametrize("name", sorted(METHOD_SPECS))
def test_bad_tensors_are_rejected(name):
    spec, _ = METHOD_SPECS[name]
    layer = _make(spec, 32, 16)
    with pytest.raises(ValueError, match=r"checkpoint weight has shape \(16, 31\)"):
        layer.method.load_tensor(layer, "weight", torch.randn(16, 31))
    with pytest.raises(ValueError, match="unexpected checkpoint tensor 'weight_scale'"):
        layer.method.load_tensor(layer, "weight_scale", torch.randn(16))
    with pytest.raises(ValueError, match=r"bias has shape \(15,\)"):
        layer.method.load_tensor(layer, "bias", torch.randn(15))
    w = torch.randn(16, 32)
    w[0, 0] = float("inf")
    layer.method.load_tensor(layer, "weight", w)
    layer.method.load_tensor(layer, "bias", torch.randn(16))
    with pytest.raises(ValueError, match="NaN/Inf"):
        layer.method.process_weights_after_loading(layer, torch.device("cpu"))
