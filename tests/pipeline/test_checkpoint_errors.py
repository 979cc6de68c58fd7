"""Bad checkpoints and bad requests: a clear error, nothing half-loaded."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from quantomni import Omni
from quantomni.errors import CheckpointError
from quantomni.pipeline.omni import merge_quantization_args


@pytest.fixture
def flux_copy(demo_model_dir, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(demo_model_dir("flux"), dst)
    return dst


def _weights(model):
    return model / "transformer" / "diffusion_pytorch_model.safetensors"


def test_truncated_safetensors(flux_copy):
    path = _weights(flux_copy)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated safetensors file"):
        Omni(flux_copy, quantization="fp8", device="cpu", progress=False)


def test_garbage_header(flux_copy):
    _weights(flux_copy).write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        Omni(flux_copy, quantization="int8", device="cpu", progress=False)


def test_missing_and_extra_tensors_are_named(flux_copy):
    tensors = load_file(_weights(flux_copy))
    tensors.pop("transformer_blocks.0.attn.to_q.weight")
    tensors["bogus.weight"] = torch.zeros(1)
    save_file(tensors, _weights(flux_copy))
    with pytest.raises(CheckpointError) as info:
        Omni(flux_copy, quantization="fp8", device="cpu", progress=False)
    assert "transformer_blocks.0.attn.to_q.weight" in str(info.value) and "bogus.weight" in str(info.value)


def test_shape_mismatch_is_named(flux_copy):
    tensors = load_file(_weights(flux_copy))
    tensors["transformer_blocks.0.attn.to_k.weight"] = torch.randn(128, 64)
    tensors["x_embedder.weight"] = torch.randn(128, 63)
    save_file(tensors, _weights(flux_copy))
    with pytest.raises(ValueError, match=r"to_k|x_embedder"):
        Omni(flux_copy, quantization="fp8", device="cpu", progress=False)


def test_nan_weight_refused(flux_copy):
    tensors = load_file(_weights(flux_copy))
    tensors["transformer_blocks.0.ff.net.2.weight"][0, 0] = float("nan")
    save_file(tensors, _weights(flux_copy))
    with pytest.raises(ValueError, match="transformer_blocks.0.ff.net.2.*NaN/Inf"):
        Omni(flux_copy, quantization="int8", device="cpu", progress=False)


def test_pickle_only_checkpoint_is_refused(flux_copy):
    _weights(flux_copy).rename(flux_copy / "transformer" / "diffusion_pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickle checkpoints are never loaded"):
        Omni(flux_copy, quantization="fp8", device="cpu", progress=False)


def test_not_a_model_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no model_index.json"):
        Omni(tmp_path, device="cpu")
    with pytest.raises(CheckpointError, match="does not exist"):
        Omni(tmp_path / "nope", device="cpu")
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        Omni(tmp_path, device="cpu")


def test_bad_runtime_requests(demo_model_dir):
    model = demo_model_dir("flux")
    with pytest.raises(ValueError, match="dtype: unknown dtype 'float8'"):
        Omni(model, dtype="float8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            Omni(model, device="cuda")
        with pytest.raises(Exception, match="'scaled_mm' cannot run on cpu"):
            Omni(model, quantization="fp8", linear_backend="scaled_mm", device="cpu", progress=False)
    with pytest.raises(ValueError, match="pipeline does not have"):
        Omni(model, quantization={"unet": "fp8"}, device="cpu")


def test_quantization_and_quantization_config_merge():
    cfg = merge_quantization_args("fp8", {"method": "fp8", "weight_granularity": "tensor"})
    assert cfg.components["denoiser"].weight_granularity == "tensor"
    with pytest.raises(ValueError, match="conflicts"):
        merge_quantization_args("int8", {"method": "fp8"})


def test_sharded_checkpoint_loads(flux_copy):
    tensors = load_file(_weights(flux_copy))
    names = sorted(tensors)
    half = len(names) // 2
    shards = {"a.safetensors": names[:half], "b.safetensors": names[half:]}
    for fname, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, flux_copy / "transformer" / fname)
    _weights(flux_copy).unlink()
    index = {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (flux_copy / "transformer" / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    omni = Omni(flux_copy, quantization="fp8", device="cpu", progress=False)
    assert omni.plans["transformer"].quantized_count > 0
