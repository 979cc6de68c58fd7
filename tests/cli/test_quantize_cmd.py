"""``quantomni quantize`` against real ModelOpt exports of the same bf16 weights.

Measured: every weight / weight_scale / weight_scale_2 byte of the layers both quantize is
identical to ModelOpt 0.47's export (FP8, FP8_PER_CHANNEL_PER_TOKEN, NVFP4, W4A16_NVFP4 and the
mixed policy); only input_scale differs (our calibration runs the real pipeline, the fixture's
runs random tensors), and the flux adapter's sensitive layers stay BF16 in ``ignore`` where
ModelOpt quantizes them. Our export then loads through ``Omni`` like ModelOpt's.
"""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipeline"))
from modelopt_pipeline_fixtures import (  # noqa: E402,F401
    bf16_pipeline,
    modelopt_exports,
    modelopt_pipelines,
    reference_io,
    rel,
    transformer_output,
)

from quantomni.cli.main import main  # noqa: E402
from quantomni.formats.modelopt import read_modelopt_config  # noqa: E402
from quantomni.pipeline.omni import Omni  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

MIXED_POLICY = {"nvfp4": ["*"], "fp8": ["single_transformer_blocks.*", "*ff.net*"], "bf16": ["*ff_context*"]}
WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="session")
def bf16_pipe(modelopt_exports, demo_model_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("quantize_src")
    (base / "prompts.txt").write_text("a red ceramic teapot\n\n")
    return bf16_pipeline(demo_model_dir("flux"), modelopt_exports("fp8"), base / "pipe"), base / "prompts.txt"


def _quantize(src, prompts, out, algo, *extra):
    return main(["--log-level", "WARNING", "quantize", "--model", str(src), "--algo", algo, "--output", str(out),
                 "--calib-prompts", str(prompts), "--calib-steps", "1", "--height", "64", "--width", "64",
                 "--no-progress", "--device", "cpu", *extra])


def _bytes(t):
    return t.view(torch.uint8) if t.element_size() == 1 else t


def _compare_with_modelopt(ours_dir: Path, theirs_dir: Path):
    ours, theirs = load_file(str(ours_dir / WEIGHTS)), load_file(str(theirs_dir / WEIGHTS))
    q_ours = {k.rpartition(".")[0] for k in ours if k.endswith(".weight_scale")}
    q_theirs = {k.rpartition(".")[0] for k in theirs if k.endswith(".weight_scale")}
    common = q_ours & q_theirs
    assert len(common) >= 24
    for layer in common:
        assert {k for k in ours if k.startswith(layer + ".")} == {k for k in theirs if k.startswith(layer + ".")}
        for suffix in ("weight", "weight_scale", "weight_scale_2", "bias"):
            key = f"{layer}.{suffix}"
            if key in theirs:
                a, b = ours[key], theirs[key]
                assert a.dtype == b.dtype and a.shape == b.shape, key
                assert torch.equal(_bytes(a), _bytes(b)), key
        if f"{layer}.input_scale" in theirs:
            s = ours[f"{layer}.input_scale"]
            assert s.dtype == torch.float32 and s.shape == () and torch.isfinite(s) and s > 0
    cfg = read_modelopt_config(ours_dir / "transformer")
    for layer in q_theirs - q_ours:  # kept BF16 by us: listed in ignore, stored as in the source
        assert cfg.scheme_for(layer) is None
        assert ours[f"{layer}.weight"].dtype == torch.bfloat16
    return cfg


@pytest.mark.parametrize("algo", ["fp8", "nvfp4", "fp8_pcpt", "w4a16_nvfp4"])
def test_quantize_matches_modelopt_export_and_loads(bf16_pipe, modelopt_exports, modelopt_pipelines, tmp_path, algo):
    src, prompts = bf16_pipe
    out = tmp_path / f"ours_{algo}"
    assert _quantize(src, prompts, out, algo) == 0
    theirs = modelopt_pipelines(algo)
    cfg = _compare_with_modelopt(out, theirs)
    qc_ours = json.loads((out / "transformer" / "config.json").read_text())["quantization_config"]
    qc_theirs = json.loads((theirs / "transformer" / "config.json").read_text())["quantization_config"]
    assert set(qc_ours) == set(qc_theirs)
    assert qc_ours.get("config_groups") == qc_theirs.get("config_groups")
    assert qc_ours["quant_method"] == "modelopt" and cfg.quant_algo == qc_theirs["quant_algo"]
    # other components copied as they are
    assert (out / "model_index.json").read_text() == (src / "model_index.json").read_text()
    assert (out / "vae" / "config.json").is_file()

    omni = Omni(out, device="cpu", progress=False)
    assert omni.plans["transformer"].method == cfg.runtime_method
    io = reference_io(modelopt_exports(algo))
    out_t = transformer_output(omni, io)
    err_bf16, fq_bf16 = rel(out_t, io["output_bf16"]), rel(io["output_fake_quant"], io["output_bf16"])
    # same weights as ModelOpt's, sensitive layers kept BF16, own input scales: no worse than ModelOpt
    assert err_bf16 < fq_bf16 * 1.2 + 0.01, (err_bf16, fq_bf16)
    assert rel(out_t, io["output_fake_quant"]) < 0.15
    ckpt = (out / WEIGHTS).stat().st_size
    assert 0.9 < omni.denoiser_weight_bytes / ckpt < 1.02
    if algo == "nvfp4":
        img = omni.generate("a cat", num_inference_steps=1, height=64, width=64, seed=0).images[0]
        assert img.size == (64, 64)


def test_quantize_writes_shards_with_an_index_that_load_the_same(bf16_pipe, tmp_path):
    """--max-shard-size small enough for several files: diffusers' numbered shards + index, the same
    tensors as the single-file export, and the pipeline loads from them."""
    from quantomni.cli.quantize import parse_size
    from quantomni.formats.safetensors_io import find_weight_files

    src, prompts = bf16_pipe
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert _quantize(src, prompts, single, "nvfp4") == 0
    assert _quantize(src, prompts, sharded, "nvfp4", "--max-shard-size", "64KB") == 0
    files = find_weight_files(sharded / "transformer")
    index = json.loads((sharded / "transformer" / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert len(files) > 2 and not (sharded / WEIGHTS).exists()
    assert all(f.stat().st_size <= 64 * 1024 + 4096 or len(load_file(str(f))) == 1 for f in files)
    ref = load_file(str(single / WEIGHTS))
    got = {}
    for f in files:
        got.update(load_file(str(f)))
    assert set(got) == set(ref) == set(index["weight_map"])
    assert all(torch.equal(_bytes(got[k]), _bytes(ref[k])) for k in ref)
    assert index["metadata"]["total_size"] == sum(f.stat().st_size for f in files)
    assert not list((sharded / "transformer").glob("*.tmp"))
    omni = Omni(sharded, device="cpu", progress=False)
    assert omni.plans["transformer"].method == "modelopt_fp4"
    assert parse_size("5GB") == 5 << 30 and parse_size("1.5MB") == int(1.5 * (1 << 20)) and parse_size("100") == 100
    for bad in ("-1GB", "lots", "0"):
        with pytest.raises(ValueError, match="--max-shard-size"):
            parse_size(bad)


def test_quantize_mixed_policy_matches_modelopt_mixed(bf16_pipe, modelopt_pipelines, tmp_path):
    src, prompts = bf16_pipe
    policy = tmp_path / "ranking.json"  # the sensitivity-ranking form: its "policy" key is used
    policy.write_text(json.dumps({"format": "nvfp4", "layers": [{"name": "x", "score": 1.0}], "policy": MIXED_POLICY}))
    out = tmp_path / "ours_mixed"
    assert _quantize(src, prompts, out, "mixed", "--policy", str(policy)) == 0
    theirs = modelopt_pipelines("mixed")
    cfg = _compare_with_modelopt(out, theirs)
    ref = read_modelopt_config(theirs / "transformer")
    assert cfg.quant_algo == "MIXED_PRECISION"
    common = set(cfg.quantized_layers) & set(ref.quantized_layers)
    assert len(common) >= 24
    assert all(cfg.quantized_layers[n] == ref.quantized_layers[n] for n in common)
    assert cfg.scheme_for("transformer_blocks.0.ff_context.net.2") is None
    omni = Omni(out, device="cpu", progress=False)
    kinds = {r.scheme.split()[0] for r in omni.plans["transformer"].records if r.quantized}
    assert kinds == {"fp8-e4m3", "nvfp4"}


@pytest.mark.parametrize("args,match", [
    (["--algo", "mixed"], "needs --policy"),
    (["--algo", "fp8", "--policy", "POLICY"], "only used with --algo mixed"),
    (["--algo", "mixed", "--policy", "POLICY"], r"glob 'transformer_blocks\.\*\.attn\.nope' matches no Linear layer"),
])
def test_quantize_policy_errors(bf16_pipe, tmp_path, capsys, args, match):
    src, prompts = bf16_pipe
    policy = tmp_path / "p.json"
    policy.write_text(json.dumps({"nvfp4": ["*"], "bf16": ["transformer_blocks.*.attn.nope"]}))
    args = [str(policy) if a == "POLICY" else a for a in args]
    out = tmp_path / "out"
    rc = main(["quantize", "--model", str(src), "--output", str(out), "--device", "cpu", "--no-progress", *args])
    assert rc == 2
    import re

    assert re.search(match, capsys.readouterr().err)
    assert not (out / "transformer").exists()  # nothing written


def test_quantize_refuses_bad_inputs(bf16_pipe, modelopt_pipelines, tmp_path, capsys):
    src, prompts = bf16_pipe
    assert _quantize(modelopt_pipelines("fp8"), prompts, tmp_path / "a", "fp8") == 2
    assert "already carries a quantization config" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert _quantize(src, prompts, tmp_path / "full", "fp8") == 2
    assert "not empty" in capsys.readouterr().err
    bad = tmp_path / "p.json"
    bad.write_text(json.dumps({"int4": ["*"]}))
    assert _quantize(src, prompts, tmp_path / "b", "mixed", "--policy", str(bad)) == 2
    assert "unknown key(s) ['int4']" in capsys.readouterr().err
