"""Per-layer sensitivity on a small MLP whose fc2 is made fragile; policy suggestion, file and loader."""

import argparse
import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from quantomni.compare.cli import add_compare_arguments, run_compare_command
from quantomni.compare.errors import CompareInputError, PolicyError
from quantomni.compare.fakequant import BUILTIN_FORMATS, fp8_e4m3_qdq, int8_per_channel_qdq, nvfp4_qdq
from quantomni.compare.sensitivity import (load_policy, rank_layers, resolve_policy_format, run_sensitivity,
                                           sqnr_db, suggest_policy, write_sensitivity_json)

DEAD = [0, 16, 32, 48]  # fc1 units that are always 0 after ReLU


def fragile_mlp() -> nn.Sequential:
    """fc2 gets huge weights on input columns that are always zero: the float output is unchanged, but
    every nvfp4 block / int8 row of fc2 is scaled by an outlier, so its other weights collapse to 0."""
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(32, 64))
    model.add_module("act1", nn.ReLU())
    model.add_module("fc2", nn.Linear(64, 64))
    model.add_module("act2", nn.GELU())
    model.add_module("fc3", nn.Linear(64, 64))
    model.add_module("act3", nn.GELU())
    model.add_module("fc4", nn.Linear(64, 16))
    with torch.no_grad():
        model.fc1.weight[DEAD] = 0.0
        model.fc1.bias[DEAD] = -1.0
        model.fc2.weight[:, DEAD] = 200.0
    return model


def calib_inputs():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(8, 32, generator=g) for _ in range(3)]


def test_fragile_layer_ranks_worst_layer_mode():
    model = fragile_mlp()
    xs = calib_inputs()
    result = run_sensitivity(model, lambda: [model(x) for x in xs], formats=["nvfp4", "int8", "fp8"])
    assert result["format"] == "nvfp4" and result["mode"] == "layer"
    layers = result["layers"]
    assert [r["rank"] for r in layers] == [1, 2, 3, 4]
    assert layers[0]["name"] == "fc2"
    sq = {r["name"]: r["sqnr_db"] for r in layers}
    assert sq["fc2"] < 5.0 and min(sq["fc1"], sq["fc3"], sq["fc4"]) > 12.0
    int8 = {r["name"]: r["sqnr_db"] for r in result["other_formats"]["int8"]}
    assert min(int8, key=int8.get) == "fc2" and int8["fc2"] < 5.0 < 30.0 < min(int8["fc3"], int8["fc4"])
    assert set(result["other_formats"]) == {"int8", "fp8"}


def test_fragile_layer_ranks_worst_model_mode():
    model = fragile_mlp()
    xs = calib_inputs()
    reference = torch.cat([model(x) for x in xs]).detach().clone()
    result = run_sensitivity(model, lambda: torch.cat([model(x) for x in xs]), formats=["nvfp4"], mode="model")
    assert result["layers"][0]["name"] == "fc2"
    # weights were restored after each trial
    assert torch.equal(torch.cat([model(x) for x in xs]).detach(), reference)


def test_fake_quant_formats_are_accurate_on_gaussian():
    torch.manual_seed(3)
    w = torch.randn(64, 48)
    assert 28 < sqnr_db(w, fp8_e4m3_qdq(w)) < 36      # 3 mantissa bits: ~31 dB
    assert sqnr_db(w, int8_per_channel_qdq(w)) > 38
    assert 16 < sqnr_db(w, nvfp4_qdq(w)) < 24         # e2m1 blocks: ~20 dB
    assert nvfp4_qdq(torch.randn(5, 20)).shape == (5, 20)  # K not a multiple of 16 is padded
    assert math.isnan(sqnr_db(w, torch.full_like(w, float("nan"))))
    assert rank_layers({"a": 10.0, "b": float("nan"), "c": 3.0})[0]["name"] == "b"  # NaN counts as worst


def test_suggest_policy_and_file_round_trip(tmp_path):
    ranking = rank_layers({"blocks.0.attn": 5.0, "blocks.0.ff": 20.0, "blocks.1.attn": 12.0, "head[0]": 30.0})
    policy = suggest_policy(ranking, fp8_fraction=0.25, bf16_fraction=0.25)
    assert policy == {"bf16": ["blocks.0.attn"], "fp8": ["blocks.1.attn"], "nvfp4": ["blocks.0.ff", "head[[]0[]]"]}
    assert resolve_policy_format("head[0]", policy) == "nvfp4"  # escaped glob matches the literal name
    assert resolve_policy_format("other", policy) is None
    all_low = suggest_policy(ranking, 0, 0)
    assert all_low["fp8"] == [] and all_low["bf16"] == [] and len(all_low["nvfp4"]) == 4
    with pytest.raises(CompareInputError, match="must be <= 1"):
        suggest_policy(ranking, 0.7, 0.5)
    with pytest.raises(CompareInputError, match="bf16_fraction must be between 0 and 1"):
        suggest_policy(ranking, 0.1, -0.1)

    model = fragile_mlp()
    xs = calib_inputs()
    result = run_sensitivity(model, lambda: [model(x) for x in xs], formats=["nvfp4"], bf16_fraction=0.25)
    path = write_sensitivity_json(result, tmp_path / "sensitivity.json")
    data = json.loads(path.read_text())
    assert set(data) >= {"format", "layers", "policy"}
    assert all(set(r) == {"name", "sqnr_db", "rank"} for r in data["layers"])
    loaded = load_policy(path)
    assert loaded["bf16"] == ["fc2"] and sorted(loaded["nvfp4"]) == ["fc1", "fc3", "fc4"] and loaded["fp8"] == []
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"fp8": ["blocks.*"], "bf16": ["blocks.0.*"]}))
    bare_policy = load_policy(bare)
    assert bare_policy["nvfp4"] == []
    assert resolve_policy_format("blocks.0.x", bare_policy) == "bf16"  # most precise wins on overlap
    assert resolve_policy_format("blocks.1.x", bare_policy) == "fp8"


@pytest.mark.parametrize("content,pattern", [
    ({"policy": {"int4": ["x"]}}, "unknown format 'int4'"),
    ({"policy": {"fp8": "x"}}, "expected a list of non-empty glob strings"),
    ({"policy": {"fp8": ["a"], "bf16": ["a"]}}, "listed under both"),
    ({"policy": ["fp8"]}, "expected an object"),
])
def test_load_policy_rejects_bad_files(tmp_path, content, pattern):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(content))
    with pytest.raises(PolicyError, match=pattern):
        load_policy(p)


def test_load_policy_missing_and_malformed(tmp_path):
    with pytest.raises(PolicyError, match="does not exist"):
        load_policy(tmp_path / "none.json")
    (tmp_path / "x.json").write_text("{")
    with pytest.raises(PolicyError, match="not valid JSON"):
        load_policy(tmp_path / "x.json")


def test_sensitivity_bad_input():
    model = fragile_mlp()
    with pytest.raises(CompareInputError, match="no forward pass"):
        run_sensitivity(model, lambda: None)
    with pytest.raises(CompareInputError, match="unknown sensitivity format 'fp6'"):
        run_sensitivity(model, lambda: model(torch.randn(2, 32)), formats=["fp6"])
    with pytest.raises(CompareInputError, match="no nn.Linear"):
        run_sensitivity(nn.ReLU(), lambda: None)
    assert set(BUILTIN_FORMATS) == {"fp8", "int8", "nvfp4"}


class _DenoiserEngine:
    """Fake engine exposing .denoiser; generate() runs it on seed-dependent inputs."""

    def __init__(self):
        self.denoiser = fragile_mlp()
        self.closed = False

    def generate(self, prompt, seed=None, num_images=1, **kwargs):
        g = torch.Generator().manual_seed(seed or 0)
        self.denoiser(torch.randn(4, 32, generator=g))
        return SimpleNamespace(images=[], timings={}, peak_memory_bytes=None)

    def close(self):
        self.closed = True


def test_cli_per_layer_writes_policy_file(tmp_path, capsys):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    engines = []

    def factory(spec, kwargs):
        engines.append(_DenoiserEngine())
        return engines[-1]

    parser = add_compare_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--model", str(model_dir), "--per-layer", "--out", str(tmp_path / "o"),
                              "--seeds", "0,1", "--bf16-fraction", "0.25", "--fp8-fraction", "0"])
    assert run_compare_command(args, engine_factory=factory) == 0
    assert engines[0].closed
    assert load_policy(tmp_path / "o" / "sensitivity.json")["bf16"] == ["fc2"]
    assert "worst: fc2" in capsys.readouterr().out
    md = (tmp_path / "o" / "sensitivity.md").read_text()
    assert "| 1 | fc2 |" in md and "Policy: bf16 1 layers, fp8 0 layers, nvfp4 3 layers" in md
