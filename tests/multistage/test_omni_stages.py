"""Stage recognition, per-stage scoping and dtypes of a tiny Qwen3-Omni."""

import json

import pytest
import torch

from quantomni.errors import QuantizationError
from quantomni.layers.linear import QuantLinear
from quantomni.layers.moe import QuantMoEExperts


def _quantized_modules(module):
    return [n for n, m in module.named_modules() if isinstance(m, (QuantLinear, QuantMoEExperts))]


def _float_dtypes(module):
    return {p.dtype for p in list(module.parameters()) + list(module.buffers()) if p.is_floating_point()}


def test_demo_model_dir_is_a_real_transformers_checkpoint(omni_dir):
    from transformers import AutoConfig, AutoTokenizer

    cfg = AutoConfig.from_pretrained(omni_dir)
    assert cfg.model_type == "qwen3_omni_moe" and cfg.enable_audio_output
    assert cfg.thinker_config.text_config.num_experts == 8
    tok = AutoTokenizer.from_pretrained(omni_dir)
    assert tok.decode(tok("hello")["input_ids"]) == "hello"
    assert not (omni_dir / "model_index.json").exists()


def test_omni_dispatches_and_describes_stages(omni_engine):
    from quantomni.multistage.engine import OmniMultiStage

    omni = omni_engine(None)
    assert isinstance(omni, OmniMultiStage)
    from quantomni import Omni

    assert isinstance(Omni(model=omni.model_dir, device="cpu", progress=False), OmniMultiStage)  # keyword form
    d = omni.describe()
    assert list(d["components"]) == ["thinker", "talker", "code2wav"]
    assert set(d["components"]["thinker"]["parts"]) == {"text_model", "audio_tower", "vision", "lm_head"}
    assert d["components"]["thinker"]["parts"]["audio_tower"]["class"] == "Qwen3OmniMoeAudioEncoder"
    assert all(c["quantized_layers"] == 0 for c in d["components"].values())
    json.dumps(d)  # serialisable for the server's model card


@pytest.mark.parametrize("spec, qdtype", [("fp8", torch.float8_e4m3fn), ({"thinker": "int8", "talker": None}, torch.int8)])
def test_only_the_thinker_text_model_is_quantized(omni_engine, spec, qdtype):
    omni = omni_engine(spec)
    m = omni.model
    lm = m.thinker.model.language_model
    quantized = _quantized_modules(lm)
    assert any(n.endswith("self_attn.q_proj") for n in quantized)
    assert sum(isinstance(x, QuantMoEExperts) for x in lm.modules()) == 2
    assert all(isinstance(x.experts, QuantMoEExperts) for x in (layer.mlp for layer in lm.layers))
    assert lm.layers[0].self_attn.q_proj.weight.dtype == qdtype
    assert lm.layers[0].mlp.experts.gate_up.weight.dtype == qdtype
    # the router and everything outside the text model stay BF16 and unquantized
    assert lm.layers[0].mlp.gate.weight.dtype == torch.bfloat16
    for stage in (m.thinker.model.audio_tower, m.thinker.model.visual, m.thinker.lm_head, m.talker, m.code2wav):
        assert _quantized_modules(stage) == []
        assert _float_dtypes(stage) <= {torch.bfloat16, torch.float32}
    parts = omni.describe()["components"]["thinker"]["parts"]
    assert parts["audio_tower"]["quantized_modules"] == 0 and parts["vision"]["quantized_modules"] == 0
    assert parts["text_model"]["quantized_modules"] == 10  # 4 attn linears x 2 layers + 2 expert modules


def test_talker_only_leaves_the_thinker_alone(omni_engine):
    omni = omni_engine({"talker": "fp8"})
    assert _quantized_modules(omni.model.thinker) == []
    assert _quantized_modules(omni.model.code2wav) == []
    assert _quantized_modules(omni.model.talker)
    omni.verify_stage_scopes()


def test_mixed_experts_nvfp4_dense_fp8(omni_engine):
    omni = omni_engine("fp8", experts_format="nvfp4")
    lm = omni.model.thinker.model.language_model
    assert lm.layers[0].self_attn.q_proj.weight.dtype == torch.float8_e4m3fn
    assert lm.layers[1].mlp.experts.down.weight.dtype == torch.uint8
    assert lm.layers[1].mlp.experts.down.weight_scale.dtype == torch.float8_e4m3fn


@pytest.mark.parametrize("spec, match", [
    ({"transformer": "fp8"}, "not a stage"),
    ({"vae": "fp8"}, "not a stage"),
    ({"thinker": {"method": "fp8", "skip_sensitive_layers": False}}, "audio/vision"),
])
def test_quantization_for_the_wrong_stage_is_an_error(omni_dir, spec, match):
    from quantomni import Omni

    with pytest.raises((ValueError, QuantizationError), match=match):
        Omni(omni_dir, quantization=spec, device="cpu", progress=False)


def test_stage_absent_without_audio_output(tmp_path):
    from quantomni import Omni
    from quantomni.demo_omni_models import write_qwen3_omni

    d = write_qwen3_omni(tmp_path / "no-audio", audio_output=False)
    with pytest.raises(ValueError, match="'talker'.*not a stage"):
        Omni(d, quantization={"talker": "fp8"}, device="cpu", progress=False)
    omni = Omni(d, quantization="fp8", device="cpu", progress=False)
    assert list(omni.describe()["components"]) == ["thinker"]


def test_bad_engine_options(omni_dir):
    from quantomni import Omni

    with pytest.raises(ValueError, match="moe_backend"):
        Omni(omni_dir, moe_backend="cutlass", device="cpu")
    with pytest.raises(ValueError, match="experts_format"):
        Omni(omni_dir, experts_format="fp4", device="cpu")
    with pytest.raises(ValueError, match="applies to diffusion denoisers"):
        Omni(omni_dir, attention="int8", device="cpu")


def test_inspect_cli_lists_stages(omni_dir, capsys):
    from quantomni.cli.main import main

    assert main(["inspect", str(omni_dir), "-q", "fp8", "--summary-only"]) == 0
    out = capsys.readouterr().out
    for word in ("thinker", "talker", "code2wav", "audio_tower", "vision", "fp8 x8"):
        assert word in out
    assert main(["inspect", str(omni_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["stages"] == ["thinker", "talker", "code2wav"]


def test_speech_through_talker_and_code2wav_with_fp8_thinker(omni_engine):
    omni = omni_engine("fp8")
    out = omni.speak([{"role": "user", "content": "say hi"}], max_tokens=4, talker_max_tokens=6, seed=0)
    wav = out["waveform"]
    assert wav.dim() == 1 and wav.numel() > 0 and torch.isfinite(wav).all() and wav.abs().max() > 0
    greedy = omni.chat([{"role": "user", "content": "say hi"}], max_tokens=4, temperature=0)
    assert out["token_ids"] == greedy.token_ids  # the thinker part is the same greedy text
    with pytest.raises(ValueError, match="speaker"):
        omni.speak("x", speaker="nobody")
