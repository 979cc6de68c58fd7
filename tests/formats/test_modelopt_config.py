"""ModelOpt checkpoint detection and config parsing: real exports and crafted configs."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from modelopt_fixtures import modelopt_exports  # noqa: E402,F401

from quantomni.formats.modelopt import (  # noqa: E402
    LayerScheme,
    ModelOptConfigError,
    SUPPORTED_QUANT_ALGOS,
    read_modelopt_config,
    read_quantization_config,
)

REAL = {
    # kind: (runtime_method, quant_algo)
    "fp8": ("modelopt", "FP8"),
    "fp8_pcpt": ("modelopt", "FP8_PER_CHANNEL_PER_TOKEN"),
    "nvfp4": ("modelopt_fp4", "NVFP4"),
    "w4a16_nvfp4": ("modelopt_fp4", "W4A16_NVFP4"),
    "int8_sq": ("modelopt", "W8A8_SQ_PER_CHANNEL"),
    "mixed": ("modelopt_mixed", "MIXED_PRECISION"),
}


@pytest.mark.parametrize("kind", list(REAL))
def test_detects_real_export(modelopt_exports, kind):
    info = modelopt_exports(kind)
    cfg = read_modelopt_config(info["component_dir"])
    method, algo = REAL[kind]
    assert cfg is not None
    assert (cfg.runtime_method, cfg.quant_algo, cfg.source) == (method, algo, "config.json")
    assert cfg.producer["name"] == "modelopt"
    if kind == "mixed":
        assert cfg.ignore == ()
        assert len(cfg.quantized_layers) > 10
    else:
        assert cfg.ignore == ("proj_out", "single_transformer_blocks.0.proj_out")
    assert cfg.group_size == (16 if kind in ("nvfp4", "w4a16_nvfp4", "mixed") else None)
    json.dumps(cfg.to_dict())  # serialisable for inspect


def test_scheme_for_real_nvfp4(modelopt_exports):
    cfg = read_modelopt_config(modelopt_exports("nvfp4")["component_dir"])
    assert cfg.scheme_for("proj_out") is None
    assert cfg.scheme_for("single_transformer_blocks.0.proj_out") is None
    s = cfg.scheme_for("transformer_blocks.0.attn.to_q")
    assert s == LayerScheme("NVFP4", 16)
    assert s.weight_dtype == torch.uint8 and s.has_input_scale and s.has_weight_scale_2


def test_scheme_for_real_mixed(modelopt_exports):
    cfg = read_modelopt_config(modelopt_exports("mixed")["component_dir"])
    assert cfg.scheme_for("transformer_blocks.0.attn.to_q").algo == "NVFP4"
    assert cfg.scheme_for("transformer_blocks.0.ff.net.0.proj").algo == "FP8"
    assert cfg.scheme_for("single_transformer_blocks.0.proj_out").algo == "FP8"
    # disabled in the policy -> not listed -> stays BF16
    assert cfg.scheme_for("transformer_blocks.0.ff_context.net.0.proj") is None
    assert cfg.scheme_for("proj_out") is None


def _write(tmp_path, name, obj):
    (tmp_path / name).write_text(json.dumps(obj))
    return tmp_path


def test_sidecar_form(tmp_path):
    _write(tmp_path, "config.json", {"_class_name": "X"})  # no quantization_config
    _write(tmp_path, "hf_quant_config.json", {
        "producer": {"name": "modelopt", "version": "0.44.0"},
        "quantization": {
            "quant_algo": "NVFP4", "kv_cache_quant_algo": "FP8", "group_size": 16,
            "exclude_modules": ["lm_head", "*visual*", "model.audio_tower"],
        },
    })
    cfg = read_modelopt_config(tmp_path)
    assert (cfg.source, cfg.runtime_method, cfg.kv_cache_quant_algo) == (
        "hf_quant_config.json", "modelopt_fp4", "FP8")
    assert cfg.ignore == ("lm_head", "*visual*", "model.audio_tower")
    assert cfg.scheme_for("lm_head") is None
    assert cfg.scheme_for("model.visual.blocks.0.qkv") is None
    assert cfg.scheme_for("model.audio_tower.layers.0.fc1") is None  # parent-module pattern
    assert cfg.scheme_for("model.layers.0.mlp.up_proj").algo == "NVFP4"


def test_sidecar_mixed_quantized_layers(tmp_path):
    _write(tmp_path, "hf_quant_config.json", {
        "producer": {"name": "modelopt"},
        "quantization": {
            "quant_algo": "MIXED_PRECISION",
            "quantized_layers": {"a.q": {"quant_algo": "FP8"},
                                 "a.k": {"quant_algo": "NVFP4", "group_size": 16},
                                 "a.v": {"quant_algo": "W4A16_NVFP4"}},
        },
    })
    cfg = read_modelopt_config(tmp_path)
    assert cfg.runtime_method == "modelopt_mixed"
    assert cfg.scheme_for("a.q") == LayerScheme("FP8")
    assert cfg.scheme_for("a.v") == LayerScheme("W4A16_NVFP4", 16)
    assert cfg.scheme_for("a.o") is None


@pytest.mark.parametrize("qc, method", [
    ({"producer": {"name": "modelopt"}, "quant_algo": "FP8"}, "modelopt"),  # producer only
    ({"quant_method": "modelopt_fp4", "quant_algo": "NVFP4"}, "modelopt_fp4"),  # method only
    ({"quant_method": "modelopt", "quant_algo": "fp8_per_channel_per_token"}, "modelopt"),
    ({"quant_method": "modelopt", "quant_algo": "W8A8_SQ_PER_CHANNEL"}, "modelopt"),
])
def test_crafted_config_json_forms(tmp_path, qc, method):
    _write(tmp_path, "config.json", {"quantization_config": qc})
    assert read_modelopt_config(tmp_path).runtime_method == method


def test_no_config_and_foreign_configs(tmp_path):
    assert read_modelopt_config(tmp_path) is None
    assert read_quantization_config(tmp_path) is None
    _write(tmp_path, "config.json", {"hidden": 3})
    assert read_modelopt_config(tmp_path) is None
    gguf = {"quant_method": "gguf", "compute_dtype": "bfloat16"}
    _write(tmp_path, "config.json", {"quantization_config": gguf})
    assert read_modelopt_config(tmp_path) is None
    assert read_quantization_config(tmp_path) == (gguf, "config.json")


def test_unsupported_algo_lists_supported(tmp_path):
    _write(tmp_path, "config.json", {"quantization_config": {
        "quant_method": "modelopt", "quant_algo": "NVFP4_SVD", "producer": {"name": "modelopt"}}})
    with pytest.raises(ModelOptConfigError) as ei:
        read_modelopt_config(tmp_path)
    msg = str(ei.value)
    assert "NVFP4_SVD" in msg and "config.json" in msg
    for algo in SUPPORTED_QUANT_ALGOS:
        assert algo in msg


@pytest.mark.parametrize("qc, needle", [
    ({"quant_algo": 5}, "quant_algo=5"),
    ({"quant_algo": "FP8", "ignore": "proj_out"}, "ignore='proj_out'"),
    ({"quant_algo": "NVFP4", "group_size": 32}, "group_size=32"),
    ({"quant_algo": "NVFP4", "config_groups": {"g": {"weights": {"group_size": "16"}}}},
     "config_groups.g.weights.group_size='16'"),
    ({"quant_algo": "MIXED_PRECISION"}, "quantized_layers=None"),
    ({"quant_algo": "MIXED_PRECISION", "quantized_layers": {"x": {"quant_algo": "INT4_AWQ"}}},
     "quantized_layers['x'].quant_algo='INT4_AWQ'"),
    ({"quant_algo": "MIXED_PRECISION", "quantized_layers": {"x": "FP8"}}, "quantized_layers['x']"),
    ({"quant_algo": "FP8", "producer": "modelopt"}, "producer='modelopt'"),
])
def test_malformed_fields_named(tmp_path, qc, needle):
    _write(tmp_path, "config.json", {"quantization_config": {"quant_method": "modelopt", **qc}})
    with pytest.raises(ModelOptConfigError) as ei:
        read_modelopt_config(tmp_path)
    assert needle in str(ei.value)


def test_malformed_sidecar_and_json(tmp_path):
    _write(tmp_path, "hf_quant_config.json", {"producer": {"name": "modelopt"}, "quantization": 3})
    with pytest.raises(ModelOptConfigError, match="'quantization'"):
        read_modelopt_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelOptConfigError, match="config.json"):
        read_modelopt_config(tmp_path)
    (tmp_path / "config.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ModelOptConfigError, match="not valid JSON"):
        read_modelopt_config(tmp_path)


@pytest.mark.parametrize("pattern, name, ignored", [
    ("proj_out", "proj_out", True),
    ("proj_out", "single_transformer_blocks.0.proj_out", False),  # exact name, not a suffix
    ("*proj_out", "single_transformer_blocks.0.proj_out", True),
    ("*proj_out.*", "single_transformer_blocks.0.proj_out", True),  # quantizer-style pattern
    ("transformer_blocks.1", "transformer_blocks.1.attn.to_q", True),  # parent module
    ("transformer_blocks.1", "transformer_blocks.10.attn.to_q", False),
    ("*ff_context*", "transformer_blocks.0.ff_context.net.2", True),
    ("*ff_context*", "transformer_blocks.0.ff.net.2", False),
    ("*Proj_Out", "proj_out", False),  # case-sensitive
])
def test_ignore_pattern_rules(tmp_path, pattern, name, ignored):
    _write(tmp_path, "config.json", {"quantization_config": {
        "quant_method": "modelopt", "quant_algo": "FP8", "ignore": [pattern]}})
    cfg = read_modelopt_config(tmp_path)
    assert (cfg.scheme_for(name) is None) == ignored


def test_mixed_ignore_wins_over_quantized_layers(tmp_path):
    _write(tmp_path, "config.json", {"quantization_config": {
        "quant_method": "modelopt", "quant_algo": "MIXED_PRECISION", "ignore": ["a.*"],
        "quantized_layers": {"a.q": {"quant_algo": "FP8"}, "b.q": {"quant_algo": "FP8"}}}})
    cfg = read_modelopt_config(tmp_path)
    assert cfg.scheme_for("a.q") is None and cfg.scheme_for("b.q").algo == "FP8"


def test_layer_scheme_properties():
    table = {
        # algo: (weight dtype, has_input_scale, weight_scale_2, per-channel ws, runtime)
        "FP8": (torch.float8_e4m3fn, True, False, False, "modelopt"),
        "FP8_PER_CHANNEL_PER_TOKEN": (torch.float8_e4m3fn, False, False, True, "modelopt"),
        "NVFP4": (torch.uint8, True, True, False, "modelopt_fp4"),
        "W4A16_NVFP4": (torch.uint8, False, True, False, "modelopt_fp4"),
        "W8A8_SQ_PER_CHANNEL": (torch.int8, True, False, True, "modelopt"),
    }
    for algo, (dt, has_in, has_ws2, per_ch, method) in table.items():
        s = LayerScheme(algo, 16 if "NVFP4" in algo else None)
        assert (s.weight_dtype, s.has_input_scale, s.has_weight_scale_2,
                s.per_channel_weight_scale, s.runtime_method) == (dt, has_in, has_ws2, per_ch, method)
    with pytest.raises(ModelOptConfigError, match="MXFP8"):
        LayerScheme("MXFP8")
    with pytest.raises(ModelOptConfigError, match="group_size=32"):
        LayerScheme("NVFP4", 32)
