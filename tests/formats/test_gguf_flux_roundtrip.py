"""FLUX.1 end to end: tiny diffusers model -> BFL-named / diffusers-named GGUF -> our map + dequantizer
-> fresh model; same output as the original, and as diffusers' own GGUF loader on the same file."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from gguf_fixtures import diffusers_flux_converter, flux_diffusers_to_bfl, flux_inputs, policy, tiny_flux, write_gguf  # noqa: E402
from gguf import GGMLQuantizationType as QT  # noqa: E402

from quantomni.formats.gguf_file import read_gguf  # noqa: E402
from quantomni.formats.gguf_names import TensorEntry, check_against_model, select_rows  # noqa: E402
from quantomni.formats.gguf_tensors import (  # noqa: E402
    check_supported_qtypes,
    dense_entry,
    packed_entry,
    plan_gguf_load,
    state_dict_from_gguf,
)
from quantomni.kernels.gguf_dequant import dequantize_gguf  # noqa: E402


@pytest.fixture(scope="module")
def flux():
    model = tiny_flux()
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        ref = model(**flux_inputs(model))[0]
    return model, sd, ref


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _load_ours(path, model, round_quantized_to_f16=False):
    """Our path into a fresh float32 model. ``round_quantized_to_f16`` mimics diffusers' GGUF
    dequantizer, which multiplies the f16 block scale in float16 (our float32 product is exact)."""
    ck = read_gguf(path)
    name_map, entries = plan_gguf_load(ck)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_against_model(entries, expected)
    sd = dict(state_dict_from_gguf(ck, entries))
    if round_quantized_to_f16:
        for e in entries:
            if ck.tensors[e.source].qtype not in (QT.F32, QT.F16, QT.BF16):
                sd[e.target] = sd[e.target].half().float()
    fresh = type(model).from_config(model.config).eval()
    fresh.load_state_dict(sd, strict=True)
    return name_map, entries, ck, fresh


def test_bfl_fixture_matches_diffusers_converter(flux):
    _, sd, _ = flux
    bfl = flux_diffusers_to_bfl(sd, 1, 2)
    back = diffusers_flux_converter(256)(dict(bfl))
    assert set(back) == set(sd)
    for k in sd:
        assert torch.equal(back[k], sd[k]), k


@pytest.mark.parametrize("naming", ["bfl", "diffusers"])
def test_f32_roundtrip_exact(flux, tmp_path, naming):
    model, sd, ref = flux
    tensors = flux_diffusers_to_bfl(sd, 1, 2) if naming == "bfl" else sd
    path = tmp_path / f"flux_{naming}.gguf"
    write_gguf(path, tensors, arch="flux", qtype_policy=policy(QT.F32))
    name_map, entries, _, fresh = _load_ours(path, model)
    assert name_map.arch == "flux"
    if naming == "bfl":
        swaps = [e for e in entries if e.transform]
        assert {e.target for e in swaps} == {"norm_out.linear.weight", "norm_out.linear.bias"}
    with torch.no_grad():
        out = fresh(**flux_inputs(model))[0]
    assert torch.isfinite(out).all()
    assert _rel(out, ref) < 1e-6


@pytest.fixture(scope="module")
def q8_files(flux, tmp_path_factory):
    _, sd, _ = flux
    d = tmp_path_factory.mktemp("q8")
    paths = {"bfl": d / "flux_bfl_q8.gguf", "diffusers": d / "flux_diffusers_q8.gguf"}
    used = write_gguf(paths["bfl"], flux_diffusers_to_bfl(sd, 1, 2), arch="flux", qtype_policy=policy(QT.Q8_0))
    assert sum(q == QT.Q8_0 for q in used.values()) >= 15
    write_gguf(paths["diffusers"], sd, arch="flux", qtype_policy=policy(QT.Q8_0))
    return paths


@pytest.fixture(scope="module")
def q8_ours(flux, q8_files):
    model, _, ref = flux
    outs = {}
    for naming, path in q8_files.items():
        _, entries, ck, fresh = _load_ours(path, model)
        if naming == "bfl":  # the q/k/v split of a quantized qkv is a row slice of the packed bytes
            q = next(e for e in entries if e.target == "transformer_blocks.0.attn.to_q.weight")
            assert packed_entry(ck, q).shape == (256, 256 // 32 * 34)
        with torch.no_grad():
            outs[naming] = fresh(**flux_inputs(model))[0]
    return outs


def test_packed_rows_dequantize_like_dense(q8_files):
    """The loader's path (row slice / halves swap on packed bytes, dequantize later) equals dequantize-then-slice."""
    ck = read_gguf(q8_files["bfl"])
    _, entries = plan_gguf_load(ck)
    check_supported_qtypes(ck, entries)
    checked = set()
    for e in entries:
        info = ck.tensors[e.source]
        if len(info.shape) != 2 or info.qtype != QT.Q8_0:
            continue
        packed = packed_entry(ck, e)
        assert packed.dtype == torch.uint8 and packed.shape[0] == e.shape[0]
        whole_then_rows = select_rows(dequantize_gguf(ck.packed(e.source), info.qtype, info.shape), e)
        assert torch.equal(dequantize_gguf(packed, info.qtype, e.shape), whole_then_rows), e.target
        assert torch.equal(dense_entry(ck, e), whole_then_rows), e.target
        checked.add(e.transform or ("rows" if e.rows else "plain"))
    assert checked == {"plain", "rows", "swap_halves"}


def test_unsupported_qtype_listed(tmp_path):
    path = tmp_path / "iq2.gguf"
    import gguf

    w = gguf.GGUFWriter(str(path), "flux")
    w.add_tensor("x_embedder.weight", np.zeros((4, 66), np.uint8), raw_shape=(4, 66), raw_dtype=QT.IQ2_XXS)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ck = read_gguf(path)
    entries = [TensorEntry("x_embedder.weight", "x_embedder.weight", None, None, (4, 256))]
    with pytest.raises(ValueError, match=r"1 tensors use unsupported.*x_embedder.weight \(IQ2_XXS\).*Q4_K"):
        check_supported_qtypes(ck, entries)


def test_q8_0_close_to_float(flux, q8_ours):
    _, _, ref = flux
    for naming, out in q8_ours.items():
        assert torch.isfinite(out).all()
        err = _rel(out, ref)
        assert 0 < err < 2e-2, (naming, err)  # Q8_0 weights: ~0.5% weight error
    # quantization is per row-block, so fusing q/k/v before quantizing changes no byte: identical outputs
    assert torch.equal(q8_ours["bfl"], q8_ours["diffusers"])


@pytest.mark.parametrize("naming", ["bfl", "diffusers"])
def test_q8_0_matches_diffusers_gguf_loader(flux, q8_files, q8_ours, tmp_path, naming, monkeypatch):
    from diffusers import FluxTransformer2DModel, GGUFQuantizationConfig
    from diffusers.loaders.single_file_model import SINGLE_FILE_LOADABLE_CLASSES

    model, _, _ = flux
    if naming == "bfl":  # diffusers' converter assumes FLUX-dev width; rebind it to the tiny model's
        monkeypatch.setitem(SINGLE_FILE_LOADABLE_CLASSES["FluxTransformer2DModel"], "checkpoint_mapping_fn",
                            diffusers_flux_converter(256))
    (tmp_path / "cfg" / "transformer").mkdir(parents=True)
    model.save_config(tmp_path / "cfg" / "transformer")
    theirs_model = FluxTransformer2DModel.from_single_file(
        str(q8_files[naming]), config=str(tmp_path / "cfg"), subfolder="transformer",
        quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32), torch_dtype=torch.float32,
    ).eval()
    *_, ours_f16 = _load_ours(q8_files[naming], model, round_quantized_to_f16=True)
    with torch.no_grad():
        theirs = theirs_model(**flux_inputs(model))[0]
        ours_f16_out = ours_f16(**flux_inputs(model))[0]
    # same weights up to diffusers' float16 dequant rounding (2**-11 relative) ...
    assert _rel(q8_ours[naming], theirs) < 2e-3, _rel(q8_ours[naming], theirs)
    # ... and with that rounding reproduced, the same model
    assert _rel(ours_f16_out, theirs) < 1e-6, _rel(ours_f16_out, theirs)


def test_q4_k_both_namings_and_diffusers_loader(flux, tmp_path):
    """K-quant (libgguf-quantized) end to end; diffusers' loader does the Q4_K math in float16."""
    from diffusers import FluxTransformer2DModel, GGUFQuantizationConfig

    model, sd, ref = flux
    outs = {}
    for naming, tensors in (("bfl", flux_diffusers_to_bfl(sd, 1, 2)), ("diffusers", sd)):
        path = tmp_path / f"flux_{naming}_q4k.gguf"
        used = write_gguf(path, tensors, arch="flux", qtype_policy=policy(QT.Q4_K))
        assert sum(q == QT.Q4_K for q in used.values()) >= 15
        *_, fresh = _load_ours(path, model)
        with torch.no_grad():
            outs[naming] = fresh(**flux_inputs(model))[0]
    assert torch.equal(outs["bfl"], outs["diffusers"])
    err = _rel(outs["diffusers"], ref)
    assert torch.isfinite(outs["diffusers"]).all() and 0 < err < 0.3, err  # ~7% weight error, compounded (measured 0.157)

    (tmp_path / "cfg" / "transformer").mkdir(parents=True)
    model.save_config(tmp_path / "cfg" / "transformer")
    theirs_model = FluxTransformer2DModel.from_single_file(
        str(tmp_path / "flux_diffusers_q4k.gguf"), config=str(tmp_path / "cfg"), subfolder="transformer",
        quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32), torch_dtype=torch.float32,
    ).eval()
    with torch.no_grad():
        theirs = theirs_model(**flux_inputs(model))[0]
    assert _rel(outs["diffusers"], theirs) < 5e-3, _rel(outs["diffusers"], theirs)
