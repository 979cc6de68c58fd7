"""ModelOpt tensor layouts: real exports validate, bad tensors fail clearly, fused shards unify."""

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from modelopt_fixtures import load_export, modelopt_exports  # noqa: E402,F401

from quantomni.formats.modelopt import (  # noqa: E402
    LayerScheme,
    ModelOptTensorError,
    expected_tensors,
    fuse_shards,
    read_modelopt_config,
    unify_fused_shards,
    validate_layer_tensors,
)
from quantomni.kernels.nvfp4_ref import nvfp4_dequantize, nvfp4_quantize  # noqa: E402

FP8 = LayerScheme("FP8")
NVFP4 = LayerScheme("NVFP4", 16)


def _layer_tensors(sd, layer):
    return {k[len(layer) + 1:]: v for k, v in sd.items() if k.rpartition(".")[0] == layer}


def _linear_layers(orig):
    return [k[: -len(".weight")] for k, v in orig.items() if k.endswith(".weight") and v.dim() == 2]


@pytest.mark.parametrize("kind", ["fp8", "fp8_pcpt", "nvfp4", "w4a16_nvfp4", "int8_sq", "mixed"])
def test_every_layer_of_real_export_validates(modelopt_exports, kind):
    """scheme_for + expected layout agree with every Linear ModelOpt wrote; BF16 ones stay BF16."""
    info = modelopt_exports(kind)
    sd, orig, _ = load_export(info)
    cfg = read_modelopt_config(info["component_dir"])
    n_quant = 0
    for layer in _linear_layers(orig):
        out_f, in_f = orig[layer + ".weight"].shape
        scheme = cfg.scheme_for(layer)
        tensors = _layer_tensors(sd, layer)
        if scheme is None:
            assert tensors["weight"].dtype == torch.bfloat16, layer
            assert set(tensors) <= {"weight", "bias"}, layer
        else:
            validate_layer_tensors(layer, scheme, tensors, out_f, in_f)
            n_quant += 1
    assert n_quant >= 30


def test_scalars_are_0dim_in_real_exports(modelopt_exports):
    sd, _, _ = load_export(modelopt_exports("nvfp4"))
    t = _layer_tensors(sd, "transformer_blocks.0.attn.to_q")
    assert t["weight_scale_2"].shape == () and t["input_scale"].shape == ()
    spec = expected_tensors(NVFP4, 64, 64)
    assert spec["weight"] == ((torch.uint8,), ((64, 32),))
    assert spec["weight_scale"] == ((torch.float8_e4m3fn,), ((64, 4),))


def test_fp8_and_int8_dequant_close_to_original(modelopt_exports):
    """Worst layer, measured on the tiny Flux: FP8 ~0.03, INT8-SQ 0.059 (SmoothQuant moves range
    into some weight columns; typical layers 0.007-0.016). Bounds 0.04 / 0.08."""
    worst = {}
    for kind, bound in (("fp8", 0.04), ("int8_sq", 0.08), ("fp8_pcpt", 0.04)):
        sd, orig, _ = load_export(modelopt_exports(kind))
        cfg = read_modelopt_config(modelopt_exports(kind)["component_dir"])
        errs = []
        for layer in _linear_layers(orig):
            if cfg.scheme_for(layer) is None:
                continue
            t = _layer_tensors(sd, layer)
            ws = t["weight_scale"].float()
            w = t["weight"].float() * (ws[:, None] if ws.dim() == 1 else ws)
            if "pre_quant_scale" in t:
                w = w * t["pre_quant_scale"].float()[None, :]
            ref = orig[layer + ".weight"].float()
            errs.append(float((w - ref).norm() / ref.norm()))
        worst[kind] = max(errs)
        assert 0 < worst[kind] < bound, (kind, worst[kind])
    print("worst dequant rel err", worst)


def test_nvfp4_dequant_close_to_original(modelopt_exports):
    """Measured: rel err 0.093..0.098 per layer (E2M1 has 1 mantissa bit); bound 0.12."""
    sd, orig, _ = load_export(modelopt_exports("nvfp4"))
    errs = []
    for layer in _linear_layers(orig):
        t = _layer_tensors(sd, layer)
        if "weight_scale_2" not in t:
            continue
        w = nvfp4_dequantize(t["weight"], t["weight_scale"], t["weight_scale_2"])
        ref = orig[layer + ".weight"].float()
        errs.append(float((w - ref).norm() / ref.norm()))
    assert len(errs) == 42 and 0.05 < max(errs) < 0.12


# ----------------------------------------------------------------------------- bad tensors

def _good_fp8():
    return {
        "weight": torch.randn(8, 32).to(torch.float8_e4m3fn),
        "weight_scale": torch.tensor(0.01),
        "input_scale": torch.tensor(0.02),
        "bias": torch.zeros(8, dtype=torch.bfloat16),
    }


def _good_nvfp4():
    packed, ws, ws2 = nvfp4_quantize(torch.randn(8, 32))
    return {"weight": packed, "weight_scale": ws, "weight_scale_2": ws2,
            "input_scale": torch.tensor(0.003)}


def test_good_layers_pass():
    validate_layer_tensors("l", FP8, _good_fp8(), 8, 32)
    validate_layer_tensors("l", NVFP4, _good_nvfp4(), 8, 32)
    t = _good_nvfp4()
    del t["input_scale"]
    validate_layer_tensors("l", LayerScheme("W4A16_NVFP4", 16), t, 8, 32)


@pytest.mark.parametrize("mutate, needles", [
    (lambda t: t.pop("weight_scale"), ["missing", "'weight_scale'", "float32", "()"]),
    (lambda t: t.__setitem__("weight", torch.zeros(8, 32, dtype=torch.bfloat16)),
     ["'weight'", "float8_e4m3fn", "got dtype bfloat16"]),
    (lambda t: t.__setitem__("weight_scale", torch.full((8,), 0.01)),
     ["'weight_scale'", "shape ()", "got dtype float32, shape (8,)"]),
    (lambda t: t.__setitem__("weight_scale", torch.tensor([0.01])), ["shape (1,)"]),
    (lambda t: t.__setitem__("input_scale", torch.tensor(float("nan"))), ["'input_scale'", "NaN"]),
    (lambda t: t.__setitem__("weight_scale", torch.tensor(float("inf"))), ["'weight_scale'", "Inf"]),
    (lambda t: t.__setitem__("weight_scale", torch.tensor(0.0)), ["non-positive"]),
    (lambda t: t.__setitem__("weight_scale", torch.tensor(-0.5)), ["non-positive", "-0.5"]),
    (lambda t: t.__setitem__("weight_scale_2", torch.tensor(1.0)), ["unexpected tensor 'weight_scale_2'"]),
    (lambda t: t.__setitem__("bias", torch.zeros(9)), ["'bias'", "(8,)", "(9,)"]),
])
def test_fp8_bad_tensors(mutate, needles):
    t = _good_fp8()
    mutate(t)
    with pytest.raises(ModelOptTensorError) as ei:
        validate_layer_tensors("blocks.3.attn.to_q", FP8, t, 8, 32)
    msg = str(ei.value)
    assert "blocks.3.attn.to_q" in msg
    for n in needles:
        assert n in msg, msg


@pytest.mark.parametrize("mutate, needles", [
    (lambda t: t.pop("weight_scale_2"), ["missing", "'weight_scale_2'"]),
    (lambda t: t.__setitem__("weight", torch.zeros(8, 16, dtype=torch.int8)), ["uint8", "got dtype int8"]),
    (lambda t: t.__setitem__("weight", torch.zeros(8, 32, dtype=torch.uint8)), ["(8, 16)", "(8, 32)"]),
    (lambda t: t.__setitem__("weight_scale", t["weight_scale"].float()), ["float8_e4m3fn", "float32"]),
    (lambda t: t.__setitem__("weight_scale", t["weight_scale"][:, :1].contiguous()), ["(8, 2)", "(8, 1)"]),
    (lambda t: t["weight_scale"].view(torch.uint8).__setitem__((0, 0), 0x7F), ["1 NaN E4M3", "clamp"]),
    (lambda t: t["weight_scale"].view(torch.uint8).__setitem__((1, 1), 0xFF), ["NaN E4M3"]),
    (lambda t: t["weight_scale"].view(torch.uint8).__setitem__((1, 1), 0x00), ["non-positive"]),
])
def test_nvfp4_bad_tensors(mutate, needles):
    t = _good_nvfp4()
    mutate(t)
    with pytest.raises(ModelOptTensorError) as ei:
        validate_layer_tensors("x_embedder", NVFP4, t, 8, 32)
    msg = str(ei.value)
    assert "x_embedder" in msg
    for n in needles:
        assert n in msg, msg


def test_nvfp4_in_features_not_multiple_of_16():
    with pytest.raises(ModelOptTensorError, match="in_features=40"):
        expected_tensors(NVFP4, 8, 40)


def test_int8_layout_and_pre_quant_scale():
    s = LayerScheme("W8A8_SQ_PER_CHANNEL")
    t = {"weight": torch.zeros(8, 32, dtype=torch.int8), "weight_scale": torch.full((8,), 0.1),
         "input_scale": torch.tensor(0.01)}
    validate_layer_tensors("l", s, t, 8, 32)  # INT8_DEFAULT_CFG exports have no pre_quant_scale
    t["pre_quant_scale"] = torch.ones(32, dtype=torch.bfloat16)
    validate_layer_tensors("l", s, t, 8, 32)
    t["pre_quant_scale"] = torch.ones(8, dtype=torch.bfloat16)
    with pytest.raises(ModelOptTensorError, match="pre_quant_scale"):
        validate_layer_tensors("l", s, t, 8, 32)


# ------------------------------------------------------------------------ fused shards

QKV = ["transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_k",
       "transformer_blocks.0.attn.to_v"]


def test_unify_fp8_real_qkv_preserves_weights(modelopt_exports):
    """Real FP8 export: q/k/v have different weight scales (ModelOpt does not unify them).

    Bound per element: |dW| <= 2^-4 |W| + 2^-10 s (half an E4M3 step); measured rel L2 change
    0.029 / 0.027 / 0 (the max-scale shard is untouched); bound 0.045. expand_rows is exact.
    """
    sd, _, _ = load_export(modelopt_exports("fp8"))
    shards = [_layer_tensors(sd, n) for n in QKV]
    scales = [float(t["weight_scale"]) for t in shards]
    assert len(set(scales)) == 3
    out = unify_fused_shards(QKV, shards, FP8)
    s = max(scales)
    for before, after in zip(shards, out):
        assert float(after["weight_scale"]) == s
        assert float(after["input_scale"]) == max(float(t["input_scale"]) for t in shards)
        w0 = before["weight"].float() * before["weight_scale"]
        w1 = after["weight"].float() * after["weight_scale"]
        assert torch.all((w1 - w0).abs() <= w0.abs() * 2**-4 + s * 2**-10 + 1e-12)
        assert float((w1 - w0).norm() / w0.norm()) < 0.045
    fused = fuse_shards(QKV, shards, FP8)
    assert fused["weight"].shape == (192, 64) and fused["weight_scale"].shape == ()
    assert fused["bias"].shape == (192,)
    exact = fuse_shards(QKV, shards, FP8, fp8_mode="expand_rows")
    assert exact["weight_scale"].shape == (192,)
    w_exact = exact["weight"].float() * exact["weight_scale"][:, None]
    w_orig = torch.cat([t["weight"].float() * t["weight_scale"] for t in shards])
    assert torch.equal(w_exact, w_orig)
    with pytest.raises(ValueError, match="fp8_mode"):
        unify_fused_shards(QKV, shards, FP8, fp8_mode="nope")


def test_unify_nvfp4_shards_with_different_globals():
    """Shards with global scales spanning 10x: block scales re-expressed under the max global.

    Measured rel L2 change of the dequantized weights 0.026 / 0 / 0.028 (E4M3 rounding of the
    block scales, half step = 2^-4 relative); bound 0.04. Codes are untouched.
    """
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"generator seed {seed}")
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(32, 64, generator=g) * s for s in (0.02, 0.2, 0.07)]
    shards = []
    for w in ws:
        p, bs, g2 = nvfp4_quantize(w)
        shards.append({"weight": p, "weight_scale": bs, "weight_scale_2": g2,
                       "input_scale": torch.tensor(0.01 * (1 + len(shards)))})
    out = unify_fused_shards(QKV, shards, NVFP4)
    gmax = max(float(t["weight_scale_2"]) for t in shards)
    for before, after, w in zip(shards, out, ws):
        assert float(after["weight_scale_2"]) == gmax
        assert float(after["input_scale"]) == pytest.approx(0.03)
        assert torch.equal(after["weight"], before["weight"])
        d0 = nvfp4_dequantize(before["weight"], before["weight_scale"], before["weight_scale_2"])
        d1 = nvfp4_dequantize(after["weight"], after["weight_scale"], after["weight_scale_2"])
        assert float((d1 - d0).norm() / d0.norm()) < 0.04
        # and still a faithful NVFP4 copy of the original weight
        assert float((d1 - w).norm() / w.norm()) < 0.13


def test_unify_nvfp4_real_export_is_noop(modelopt_exports):
    """ModelOpt already unified q/k/v global scales in NVFP4 exports: unify changes nothing."""
    sd, _, _ = load_export(modelopt_exports("nvfp4"))
    shards = [_layer_tensors(sd, n) for n in QKV]
    out = unify_fused_shards(QKV, shards, NVFP4)
    for before, after in zip(shards, out):
        for k in before:
            assert torch.equal(before[k].view(torch.uint8) if before[k].dtype == torch.float8_e4m3fn
                               else before[k],
                               after[k].view(torch.uint8) if after[k].dtype == torch.float8_e4m3fn
                               else after[k]), k


def test_unify_rejects_mixed_algos_and_wrong_layouts():
    with pytest.raises(ModelOptTensorError) as ei:
        unify_fused_shards(QKV, [_good_nvfp4(), _good_fp8(), _good_nvfp4()], [NVFP4, FP8, NVFP4])
    msg = str(ei.value)
    assert "transformer_blocks.0.attn.to_k=FP8" in msg and "to_q=NVFP4" in msg
    with pytest.raises(ModelOptTensorError, match="BF16"):
        unify_fused_shards(QKV, [{}, {}, {}], [None, FP8, FP8])
    with pytest.raises(ModelOptTensorError, match="to_v"):
        unify_fused_shards(QKV, [_good_fp8(), _good_fp8(), _good_nvfp4()], FP8)
    int8 = LayerScheme("W8A8_SQ_PER_CHANNEL")
    mk = lambda p: {"weight": torch.zeros(4, 8, dtype=torch.int8), "weight_scale": torch.ones(4),
                    "input_scale": torch.tensor(0.1), "pre_quant_scale": torch.full((8,), p)}
    unify_fused_shards(QKV, [mk(1.0), mk(1.0), mk(1.0)], int8)
    with pytest.raises(ModelOptTensorError, match="pre_quant_scale"):
        unify_fused_shards(QKV, [mk(1.0), mk(2.0), mk(1.0)], int8)


def test_group_clamp_and_describe_on_real_mixed_export(modelopt_exports):
    from quantomni.formats.modelopt import clamp_nan_block_scales, group_layer_tensors

    info = modelopt_exports("mixed")
    sd, orig, _ = load_export(info)
    cfg = read_modelopt_config(info["component_dir"])
    groups = group_layer_tensors(sd)
    assert groups["transformer_blocks.0.attn.to_q"] == {
        s: f"transformer_blocks.0.attn.to_q.{s}"
        for s in ("weight", "weight_scale", "weight_scale_2", "input_scale", "bias")}
    assert set(groups["transformer_blocks.0.ff.net.0.proj"]) == {
        "weight", "weight_scale", "input_scale", "bias"}
    desc = cfg.describe_layers(_linear_layers(orig))
    assert desc["transformer_blocks.0.attn.to_q"] == "NVFP4"
    assert desc["transformer_blocks.0.ff.net.0.proj"] == "FP8"
    assert desc["transformer_blocks.0.ff_context.net.0.proj"] == "BF16"
    assert clamp_nan_block_scales(sd) == {}
    key = "transformer_blocks.1.attn.to_k.weight_scale"
    before = sd[key]
    sd[key] = before.clone()
    sd[key].view(torch.uint8)[3, :2] = torch.tensor([0x7F, 0xFF], dtype=torch.uint8)
    fp8_scale = sd["transformer_blocks.0.ff.net.0.proj.weight_scale"]
    assert clamp_nan_block_scales(sd) == {key: 2}
    assert float(sd[key][3, 0]) == 448.0 and sd["transformer_blocks.0.ff.net.0.proj.weight_scale"] is fp8_scale
