import json

import pytest

from quantomni import build_quant_config
from quantomni.config import PipelineQuantConfig
from quantomni.methods.fp8 import Fp8Config
from quantomni.methods.int8 import Int8Config
from quantomni.methods.registry import register_method, registered_methods


@pytest.mark.parametrize("spec", [None, "none", "NONE", {"method": "none"}, {}])
def test_none_forms_quantize_nothing(spec):
    cfg = build_quant_config(spec)
    assert isinstance(cfg, PipelineQuantConfig)
    assert not cfg.is_quantized


def test_method_name_targets_the_denoiser():
    cfg = build_quant_config("fp8")
    assert set(cfg.components) == {"denoiser"}
    assert isinstance(cfg.components["denoiser"], Fp8Config)
    assert cfg.components["denoiser"].weight_granularity == "channel"
    assert isinstance(build_quant_config("int8").components["denoiser"], Int8Config)


def test_method_dict_with_options():
    cfg = build_quant_config({"method": "fp8", "weight_granularity": "tensor", "activation_scheme": "dynamic",
                              "ignored_layers": ["*.proj_out"]})
    fp8 = cfg.components["denoiser"]
    assert fp8.weight_granularity == "tensor"
    assert fp8.ignored_layers == ("*.proj_out",)


def test_per_component_dict_and_json_round_trip():
    cfg = build_quant_config({"transformer": "fp8", "text_encoder": None, "tokenizer": None,
                              "transformer_2": {"method": "int8", "ignored_layers": ["re:blocks\\.0\\..*"]}})
    assert cfg.components["text_encoder"] is None
    assert "tokenizer" not in cfg.components
    text = cfg.to_json()
    again = PipelineQuantConfig.from_json(text)
    assert again == cfg
    assert build_quant_config(json.loads(text)) == cfg


def test_config_objects_pass_through():
    obj = Fp8Config(weight_granularity="tensor")
    assert build_quant_config(obj).components["denoiser"] is obj
    cfg = build_quant_config("int8")
    assert build_quant_config(cfg) is cfg


def test_config_is_immutable():
    cfg = build_quant_config("fp8")
    with pytest.raises(TypeError):
        cfg.components["transformer"] = None
    with pytest.raises(Exception):
        cfg.components["denoiser"].weight_granularity = "tensor"


@pytest.mark.parametrize(
    "spec, fragments",
    [
        ("fp4x", ["unknown quantization method 'fp4x'", "fp8", "int8"]),
        ({"method": "fp8", "granularity": "x"}, ["unknown option", "granularity", "weight_granularity"]),
        ({"method": "fp8", "weight_granularity": "block"}, ["fp8.weight_granularity", "'block'", "channel"]),
        ({"method": "fp8", "activation_scheme": "static"}, ["static", "activation_scales"]),
        ({"method": "fp8", "activation_scheme": "static", "activation_scales": {"*": -1.0}}, ["finite positive", "-1.0"]),
        ({"method": "fp8", "activation_scheme": "static", "activation_scales": {"*": float("nan")}}, ["finite positive"]),
        ({"method": "fp8", "activation_scales": {"*": 0.1}}, ["only valid with activation_scheme='static'"]),
        ({"method": "fp8", "activation_granularity": "block"}, ["activation_granularity", "token"]),
        ({"method": "int8", "activation_scheme": "static"}, ["int8.activation_scheme", "dynamic"]),
        ({"method": "fp8", "ignored_layers": ["re:(unclosed"]}, ["invalid regular expression", "ignored_layers"]),
        ({"method": "fp8", "ignored_layers": [3]}, ["non-empty string"]),
        ({"method": "fp8", "skip_sensitive_layers": "yes"}, ["skip_sensitive_layers", "'yes'"]),
        ({"method": 8}, ["method name string"]),
        ({"transformr": "fp8"}, ["unknown component 'transformr'", "transformer"]),
        ({"tokenizer": "fp8"}, ["no weights to quantize"]),
        ({"transformer": 3}, ["quantization.transformer", "3"]),
        ({"version": 99, "components": {}}, ["unsupported version 99"]),
        ({"version": 1, "components": {}, "extra": 1}, ["unknown top-level field", "extra"]),
        (3.5, ["unsupported spec of type float"]),
        ({"method": "none", "weight_granularity": "tensor"}, ["given with method 'none'"]),
    ],
)
def test_invalid_specs_name_field_value_and_allowed(spec, fragments):
    with pytest.raises(ValueError) as info:
        build_quant_config(spec)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_resolve_expands_denoiser_alias_and_checks_components():
    cfg = build_quant_config("fp8")
    resolved = cfg.resolve(["transformer", "transformer_2", "vae", "text_encoder"])
    assert set(resolved) == {"transformer", "transformer_2"}
    override = build_quant_config({"denoiser": "fp8", "transformer_2": None}).resolve(["transformer", "transformer_2"])
    assert override["transformer_2"] is None and override["transformer"].method == "fp8"
    with pytest.raises(ValueError, match="pipeline does not have"):
        build_quant_config({"unet": "int8"}).resolve(["transformer", "vae"])
    with pytest.raises(ValueError, match="has none of"):
        build_quant_config("fp8").resolve(["vae", "text_encoder"])


def test_registry_is_lazy_and_extensible():
    assert {"fp8", "int8"} <= set(registered_methods())
    register_method("fp8_copy_for_test", "quantomni.methods.fp8:Fp8Config")
    with pytest.raises(RuntimeError, match="whose method is 'fp8'"):
        build_quant_config("fp8_copy_for_test")
    with pytest.raises(ValueError, match="already registered"):
        register_method("fp8", "somewhere:Else")


def test_static_scales_resolve_per_layer():
    cfg = build_quant_config({"method": "fp8", "activation_scheme": "static",
                              "activation_scales": {"*.to_q": 0.5, "re:.*ff.*": 0.25}}).components["denoiser"]
    assert cfg.get_linear_method("blocks.0.attn.to_q", 16, 16).static_input_scale == 0.5
    assert cfg.get_linear_method("blocks.0.ff.net.2", 16, 16).static_input_scale == 0.25
    with pytest.raises(ValueError, match="no scale matches layer 'blocks.0.attn.to_k'"):
        cfg.get_linear_method("blocks.0.attn.to_k", 16, 16)
