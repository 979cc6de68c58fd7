"""Per-architecture name maps: detection, original -> diffusers conversion (checked against diffusers'
own converters), GGUF files in both namings, and the missing/extra/mis-shaped error."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from gguf_fixtures import write_gguf  # noqa: E402
from gguf_name_fixtures import diffusers_converter, tiny_model, to_original  # noqa: E402

from quantomni.formats.gguf_file import read_gguf  # noqa: E402
from quantomni.formats.gguf_names import (  # noqa: E402
    NAME_MAPS,
    GGUFNameError,
    check_against_model,
    detect_architecture_from,
    select_rows,
    supported_architectures,
)
from quantomni.formats.gguf_tensors import plan_gguf_load, state_dict_from_gguf  # noqa: E402

ARCHES = ["flux", "qwen_image", "sd3", "flux2", "z_image", "wan"]
WITH_ORIGINAL = ["flux", "sd3", "flux2", "z_image", "wan"]
CLASSES = {"flux": "FluxTransformer2DModel", "qwen_image": "QwenImageTransformer2DModel",
           "sd3": "SD3Transformer2DModel", "flux2": "Flux2Transformer2DModel",
           "z_image": "ZImageTransformer2DModel", "wan": "WanTransformer3DModel"}

_models = {}


def _sd(arch):
    if arch not in _models:
        m = tiny_model(arch)
        _models[arch] = {k: v.detach().clone() for k, v in m.state_dict().items()}
    return _models[arch]


def _shapes(sd):
    return {k: tuple(v.shape) for k, v in sd.items()}


def _apply(entries, tensors):
    return {e.target: select_rows(tensors[e.source], e).reshape(e.shape) for e in entries}


def test_registry():
    assert supported_architectures() == ARCHES
    for arch, m in NAME_MAPS.items():
        assert m.arch == arch and m.diffusers_class == CLASSES[arch]
        import diffusers

        assert hasattr(diffusers, m.diffusers_class)


@pytest.mark.parametrize("arch", ARCHES)
def test_diffusers_naming_detected_and_identity(arch):
    sd = _sd(arch)
    m = detect_architecture_from(sd)  # names alone
    assert m.arch == arch and m.naming(sd) == "diffusers"
    assert detect_architecture_from(sd, arch).arch == arch  # metadata agrees
    entries = m.entries(_shapes(sd))
    assert all(e.target == e.source and e.rows is None and e.transform is None for e in entries)
    check_against_model(entries, _shapes(sd))
    # a community prefix is stripped from targets but kept as the source name
    pref = {"model.diffusion_model." + k: v for k, v in _shapes(sd).items()}
    entries = detect_architecture_from(pref).entries(pref)
    check_against_model(entries, _shapes(sd))
    assert all(e.source == "model.diffusion_model." + e.target for e in entries)


@pytest.mark.parametrize("arch", [a for a in WITH_ORIGINAL if a != "flux"])
def test_original_fixture_agrees_with_diffusers_converter(arch):
    sd = _sd(arch)
    back = diffusers_converter(arch)(dict(to_original(arch, sd)))
    assert set(back) == set(sd), (set(back) ^ set(sd))
    for k in sd:
        assert torch.equal(back[k].reshape(sd[k].shape), sd[k]), k


@pytest.mark.parametrize("arch", WITH_ORIGINAL)
def test_original_naming_maps_to_diffusers(arch):
    sd = _sd(arch)
    orig = to_original(arch, sd)
    m = detect_architecture_from(orig)
    assert m.arch == arch and m.naming(orig) == "original"
    entries = m.entries(_shapes(orig))
    check_against_model(entries, _shapes(sd))
    got = _apply(entries, orig)
    for k in sd:
        assert torch.equal(got[k], sd[k]), k


@pytest.mark.parametrize("arch", ["sd3", "wan", "qwen_image"])
def test_gguf_file_roundtrip_by_name_detection(arch, tmp_path):
    """No general.architecture in the file: detected from names; Wan's 5-D conv uses the orig_shape record."""
    sd = _sd(arch)
    tensors = to_original(arch, sd) if arch != "qwen_image" else sd
    meta, stored = {}, {}
    for k, v in tensors.items():
        if v.ndim > 4:
            meta[f"comfy.gguf.orig_shape.{k}"] = list(v.shape)
            v = v.reshape(v.shape[0], v.shape[1], -1)
        stored[k] = v
    path = tmp_path / f"{arch}.gguf"
    write_gguf(path, stored, arch=None, metadata=meta)
    ck = read_gguf(path)
    assert ck.architecture is None
    m, entries = plan_gguf_load(ck)
    assert m.arch == arch
    check_against_model(entries, _shapes(sd))
    got = state_dict_from_gguf(ck, entries)
    for k in sd:
        assert torch.equal(got[k], sd[k]), k


def test_unknown_and_conflicting_architecture():
    names = ["foo.weight", "bar.bias"]
    with pytest.raises(GGUFNameError, match="unknown architecture.*flux.*qwen_image.*sd3.*flux2.*z_image.*wan"):
        detect_architecture_from(names)
    with pytest.raises(GGUFNameError, match="'llama' is not one of them"):
        detect_architecture_from(names, "llama")
    with pytest.raises(GGUFNameError, match="general.architecture is 'wan' but the tensor names"):
        detect_architecture_from(_sd("flux"), "wan")
    # FLUX.2 files labelled "flux" are recognised by their names
    assert detect_architecture_from(_sd("flux2"), "flux").arch == "flux2"


def test_check_against_model_names_everything():
    sd = _shapes(_sd("flux"))
    entries = NAME_MAPS["flux"].entries(sd)
    expected = dict(sd)
    expected.pop("proj_out.bias")  # -> extra
    expected["new.weight"] = (4, 4)  # -> missing
    expected["x_embedder.weight"] = (64, 17)  # -> mis-shaped
    with pytest.raises(GGUFNameError) as ei:
        check_against_model(entries, expected)
    msg = str(ei.value)
    assert "1 missing: new.weight" in msg and "1 extra: proj_out.bias" in msg
    assert "x_embedder.weight: file gives [64, 16], model expects [64, 17]" in msg


def test_unmapped_original_name_is_reported_as_extra():
    orig = _shapes(to_original("flux", _sd("flux")))
    orig["double_blocks.0.mystery.weight"] = (4, 4)
    entries = NAME_MAPS["flux"].entries(orig)
    with pytest.raises(GGUFNameError, match="extra: double_blocks.0.mystery.weight"):
        check_against_model(entries, _shapes(_sd("flux")))


def test_bad_split_is_a_clear_error():
    orig = _shapes(to_original("flux", _sd("flux")))
    orig["double_blocks.0.img_attn.qkv.weight"] = (190, 64)
    with pytest.raises(GGUFNameError, match="'double_blocks.0.img_attn.qkv.weight' has 190 rows, not a multiple of 3"):
        NAME_MAPS["flux"].entries(orig)
