"""NVFP4 reference math against real ModelOpt exports, ModelOpt's own code and float64 emulation."""

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "formats"))
from modelopt_fixtures import load_export, modelopt_exports  # noqa: E402,F401

from quantomni.formats.modelopt import LayerScheme, validate_layer_tensors  # noqa: E402
from quantomni.formats.modelopt_tensors import ModelOptTensorError  # noqa: E402
from quantomni.kernels.nvfp4_ref import (  # noqa: E402
    E2M1_VALUES,
    NVFP4ShapeError,
    clamp_nan_e4m3_scales,
    e2m1_round_codes,
    nvfp4_dequantize,
    nvfp4_fake_quantize_activation,
    nvfp4_linear_reference,
    nvfp4_pack,
    nvfp4_quantize,
    nvfp4_unpack,
)

NVFP4 = LayerScheme("NVFP4", 16)


def _nvfp4_layers(sd):
    return sorted(k[: -len(".weight_scale_2")] for k in sd if k.endswith(".weight_scale_2"))


def _modelopt_nvfp4_qtensor():
    """ModelOpt's own NVFP4 tensor class (an independent oracle); skip when not installed."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod = pytest.importorskip("modelopt.torch.quantization.qtensor",
                                  reason="needs nvidia-modelopt (pip install nvidia-modelopt)")
    return mod.NVFP4QTensor


def _fresh_generator():
    """Fresh random inputs every run; the seed is printed to reproduce a failure."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"generator seed {seed}")
    return torch.Generator().manual_seed(seed)


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


# ------------------------------------------------------------------ packing and rounding

def test_unpack_low_nibble_is_even_column():
    packed = torch.tensor([[0x21, 0xF7]], dtype=torch.uint8)
    assert nvfp4_unpack(packed).tolist() == [[0.5, 1.0, 6.0, -6.0]]


def test_pack_is_inverse_of_unpack_for_all_bytes():
    allbytes = torch.arange(256, dtype=torch.uint8).reshape(8, 32)
    assert torch.equal(nvfp4_pack(nvfp4_unpack(allbytes)), allbytes)


def test_e2m1_rounding_ties_to_even_and_saturation():
    v = torch.tensor([0.25, 0.26, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 5.01, 7.0, 1e9, -0.1, -0.75])
    codes = e2m1_round_codes(v)
    assert E2M1_VALUES[codes.long()].tolist() == [0, 0.5, 1, 1, 2, 2, 4, 4, 6, 6, 6, -0.0, -1]
    assert codes[-2] == 8  # negative rounding to zero keeps the sign bit, as ModelOpt
    with pytest.raises(ValueError, match="NaN"):
        e2m1_round_codes(torch.tensor([float("nan")]))


# ---------------------------------------------------------------- against the real export

def test_quantize_matches_real_export_bytes(modelopt_exports):
    """Every byte of weight and weight_scale equals ModelOpt's export (0 differences)."""
    sd, orig, _ = load_export(modelopt_exports("nvfp4"))
    layers = _nvfp4_layers(sd)
    assert len(layers) == 42
    n_own_global = 0
    for layer in layers:
        w = orig[layer + ".weight"]
        packed, ws, ws2 = nvfp4_quantize(w, sd[layer + ".weight_scale_2"])
        assert torch.equal(packed, sd[layer + ".weight"]), layer
        assert torch.equal(ws.view(torch.uint8), sd[layer + ".weight_scale"].view(torch.uint8)), layer
        # layers outside fused q/k/v groups: the default global scale is ModelOpt's as well
        p2, ws_2, g2 = nvfp4_quantize(w)
        if torch.equal(g2, sd[layer + ".weight_scale_2"]):
            n_own_global += 1
            assert torch.equal(p2, packed) and torch.equal(ws_2.view(torch.uint8), ws.view(torch.uint8))
    assert n_own_global >= 42 - 15  # 5 fused groups of 3 share the max global


def test_dequantize_matches_modelopt_and_low_nibble_first(modelopt_exports):
    NVFP4QTensor = _modelopt_nvfp4_qtensor()

    sd, orig, _ = load_export(modelopt_exports("nvfp4"))
    ours_err, swapped_err = [], []
    for layer in _nvfp4_layers(sd):
        w, ws, ws2 = (sd[layer + s] for s in (".weight", ".weight_scale", ".weight_scale_2"))
        ours = nvfp4_dequantize(w, ws, ws2)
        ref = orig[layer + ".weight"].float()
        qt = NVFP4QTensor(ref.shape, torch.float32, w)
        theirs = qt.dequantize(dtype=torch.float32, scale=ws, double_scale=ws2, block_sizes={-1: 16})
        assert torch.equal(ours, theirs), layer
        swapped = ((w & 0x0F) << 4) | (w >> 4)
        ours_err.append(_rel(ours, ref))
        swapped_err.append(_rel(nvfp4_dequantize(swapped, ws, ws2), ref))
    assert max(ours_err) < 0.12  # measured 0.093..0.098
    assert min(swapped_err) > 1.0  # high-nibble-first: measured ~1.4


def test_nan_clamp_on_real_export(modelopt_exports):
    sd, _, io = load_export(modelopt_exports("nvfp4"))
    layer = "transformer_blocks.0.ff.net.0.proj"
    t = {k[len(layer) + 1:]: v.clone() for k, v in sd.items() if k.rpartition(".")[0] == layer}
    raw = t["weight_scale"].view(torch.uint8)
    for (r, c), byte in zip([(0, 0), (5, 1), (100, 3), (255, 2), (7, 0)], [0x7F, 0xFF, 0x7F, 0xFF, 0x7F]):
        raw[r, c] = byte
    x = torch.randn(3, 64)
    bad = nvfp4_linear_reference(x, t["weight"], t["weight_scale"], t["weight_scale_2"], t["input_scale"])
    assert torch.isnan(bad).any()
    with pytest.raises(ModelOptTensorError, match="5 NaN E4M3"):
        validate_layer_tensors(layer, NVFP4, t, 256, 64)
    fixed, n = clamp_nan_e4m3_scales(t["weight_scale"])
    assert n == 5
    assert fixed.view(torch.uint8)[0, 0] == 0x7E and float(fixed[5, 1]) == 448.0
    assert torch.equal(fixed.view(torch.uint8)[1:5], sd[layer + ".weight_scale"].view(torch.uint8)[1:5])
    t["weight_scale"] = fixed
    validate_layer_tensors(layer, NVFP4, t, 256, 64)
    out = nvfp4_linear_reference(x, t["weight"], fixed, t["weight_scale_2"], t["input_scale"], t["bias"])
    assert torch.isfinite(out).all()
    same, n0 = clamp_nan_e4m3_scales(sd[layer + ".weight_scale"])
    assert n0 == 0 and same is sd[layer + ".weight_scale"]


# ---------------------------------------------------------------- activations (W4A4)

def _e4m3_round_f64(x):
    """Round positive float64 to E4M3FN by nearest-table search, ties to the even byte."""
    table = torch.arange(0x7F, dtype=torch.uint8).view(torch.float8_e4m3fn).double()  # 0..448
    d = (x.unsqueeze(-1) - table).abs()
    best = d.min(dim=-1, keepdim=True).values
    cand = (d == best)
    idx = torch.where(cand.sum(-1) > 1,  # tie: pick the even byte
                      (cand & (torch.arange(0x7F) % 2 == 0)).double().argmax(-1),
                      cand.double().argmax(-1))
    return table[idx]


def _fake_quant_f64(x, gs):
    """Independent float64 emulation: nearest-grid search instead of threshold counting."""
    grid = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6], dtype=torch.float64)
    xb = x.double().reshape(*x.shape[:-1], -1, 16)
    s = xb.abs().amax(-1) / (6.0 * gs)
    s = torch.where(s == 0, torch.ones_like(s), s).clamp(2.0**-9, 448.0)
    s = _e4m3_round_f64(s)
    v = xb / (s * gs).unsqueeze(-1)
    d = (v.abs().unsqueeze(-1) - grid).abs()
    best = d.min(-1, keepdim=True).values
    cand = d == best
    even = cand & (torch.arange(8) % 2 == 0)
    idx = torch.where(cand.sum(-1) > 1, even.double().argmax(-1), cand.double().argmax(-1))
    q = grid[idx] * torch.sign(v)
    return (q * (s * gs).unsqueeze(-1)).reshape(x.shape)


def test_activation_fake_quant_vs_float64_emulation():
    g = _fresh_generator()
    x = torch.randn(64, 128, generator=g) * torch.logspace(-3, 1, 128)  # wide per-column range
    x[0, :16] = 0  # an all-zero block
    gs = torch.tensor(float(x.abs().amax()) / (6 * 448) * 0.7)  # calibrated below the live amax
    ours = nvfp4_fake_quantize_activation(x, gs)
    ref = _fake_quant_f64(x, float(gs))
    diff = (ours.double() - ref).abs()
    # float32 vs float64 division may move a value sitting on a rounding boundary: allow a
    # handful of elements, each at most one E2M1 step (<= 2 * block scale * global)
    n_diff = int((diff > 1e-6 * ref.abs().clamp_min(1e-30)).sum())
    assert n_diff <= 8, n_diff
    assert _rel(ours, ref) < 1e-3
    assert torch.equal(ours[0, :16], torch.zeros(16))
    assert _rel(ours, x) < 0.2  # and it is a quantization of x, measured ~0.1


def test_activation_fake_quant_matches_modelopt_op():
    """Same values as ModelOpt's NVFP4QTensor round trip (what the fixture's fake-quant uses)."""
    NVFP4QTensor = _modelopt_nvfp4_qtensor()

    g = _fresh_generator()
    for dtype in (torch.float32, torch.bfloat16):
        x = (torch.randn(16, 96, generator=g) * 2).to(dtype)
        gs = (x.float().abs().amax() / (6 * 448)).reshape(())
        q, s, s2 = NVFP4QTensor.quantize(x.float().clone(), 16, weights_scaling_factor_2=gs)
        theirs = q.dequantize(dtype=torch.float32, scale=s, double_scale=s2, block_sizes={-1: 16})
        ours = nvfp4_fake_quantize_activation(x, gs)
        assert ours.dtype == dtype
        assert torch.equal(ours, theirs.to(dtype))


def test_linear_reference_w4a16_and_w4a4():
    g = _fresh_generator()
    w = torch.randn(48, 64, generator=g) * 0.05
    b = torch.randn(48, generator=g)
    x = torch.randn(2, 7, 64, generator=g)
    p, s, s2 = nvfp4_quantize(w)
    dq = nvfp4_dequantize(p, s, s2, torch.float64)
    w4a16 = nvfp4_linear_reference(x, p, s, s2, None, b)
    assert w4a16.shape == (2, 7, 48)
    assert _rel(w4a16, x.double() @ dq.T + b.double()) < 1e-6
    in_s = x.abs().amax() / (6 * 448)
    w4a4 = nvfp4_linear_reference(x, p, s, s2, in_s, b)
    xq = nvfp4_fake_quantize_activation(x, in_s)
    assert _rel(w4a4, xq.double() @ dq.T + b.double()) < 1e-6
    exact = x.double() @ w.double().T + b.double()
    e16, e4 = _rel(w4a16, exact), _rel(w4a4, exact)
    assert 0.005 < e16 < 0.15 and 0.01 < e4 < 0.25  # measured 0.033 (W4A16), 0.046 (W4A4)
    assert nvfp4_linear_reference(x.bfloat16(), p, s, s2, in_s).dtype == torch.bfloat16


# ---------------------------------------------------------------------------- bad input

def test_shape_and_dtype_errors():
    p, s, s2 = nvfp4_quantize(torch.randn(4, 64))
    with pytest.raises(NVFP4ShapeError, match="K \\(input features\\) = 48"):
        nvfp4_quantize(torch.randn(4, 48))
    with pytest.raises(NVFP4ShapeError, match="= 48"):
        nvfp4_fake_quantize_activation(torch.randn(2, 48), 0.01)
    with pytest.raises(NVFP4ShapeError, match="= 48"):
        nvfp4_dequantize(torch.zeros(4, 24, dtype=torch.uint8), torch.ones(4, 3).to(torch.float8_e4m3fn), 1.0)
    with pytest.raises(NVFP4ShapeError, match="uint8"):
        nvfp4_dequantize(p.to(torch.int8), s, s2)
    with pytest.raises(NVFP4ShapeError, match="weight_scale shape"):
        nvfp4_dequantize(p, s[:, :2], s2)
    with pytest.raises(NVFP4ShapeError, match="x has K=32"):
        nvfp4_linear_reference(torch.randn(2, 32), p, s, s2)
    with pytest.raises(NVFP4ShapeError, match="block_size"):
        nvfp4_quantize(torch.randn(4, 64), block_size=32)
    with pytest.raises(ValueError, match="NaN"):
        nvfp4_quantize(torch.full((4, 64), float("nan")))
    with pytest.raises(NVFP4ShapeError, match="float8_e4m3fn"):
        clamp_nan_e4m3_scales(torch.ones(3))
    with pytest.raises(ValueError, match="input_scale"):
        nvfp4_fake_quantize_activation(torch.randn(2, 64), 0.0)
    zp, zs, zg = nvfp4_quantize(torch.zeros(4, 64))  # all-zero weight: exact zeros back
    assert torch.equal(nvfp4_dequantize(zp, zs, zg), torch.zeros(4, 64))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(6)
    w = torch.randn(128, 256, generator=g)
    x = torch.randn(8, 256, generator=g)
    p, s, s2 = nvfp4_quantize(w)
    pc, sc, s2c = nvfp4_quantize(w.cuda())
    assert torch.equal(pc.cpu(), p) and torch.equal(sc.cpu().view(torch.uint8), s.view(torch.uint8))
    in_s = torch.tensor(0.002)
    out = nvfp4_linear_reference(x, p, s, s2, in_s)
    outc = nvfp4_linear_reference(x.cuda(), pc, sc, s2c, in_s.cuda())
    assert _rel(outc.cpu(), out) < 1e-5


def test_dequantize_matches_diffusers_bfl_oracle(modelopt_exports):
    """diffusers' BFL NVFP4 dequantizer (an independent implementation) agrees bit for bit."""
    bfl = pytest.importorskip("diffusers.quantizers.bfl.utils")
    sd, _, _ = load_export(modelopt_exports("nvfp4"))
    for layer in _nvfp4_layers(sd)[:8]:
        w, ws, ws2 = (sd[layer + s] for s in (".weight", ".weight_scale", ".weight_scale_2"))
        assert torch.equal(nvfp4_dequantize(w, ws, ws2), bfl.dequantize_nvfp4(w, ws, ws2).float()), layer
