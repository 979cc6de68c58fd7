"""A Qwen3-Omni thinker quantized and exported by the real nvidia-modelopt (on CPU), loaded by quantomni.

Tolerances (tiny random model, 74-token prompt):
  * dequantized weights vs ModelOpt's own fake-quantized weights: rel < 0.01 (bf16 rounding of theirs);
  * thinker logits vs ModelOpt's fake-quantized thinker: rel < 0.1 (NVFP4 W4A4), < 0.06 (mixed FP8/NVFP4,
    FP8); measured 0.055 / 0.03 / 0.03 — W4A4 amplifies bf16-vs-fp32 rounding differences across layers;
  * the two MoE backends agree: rel < 0.05 (grouped multiplies in bf16, the reference in fp32; measured 0.024).
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from quantomni.errors import QuantizationError
from quantomni.layers.linear import QuantLinear
from quantomni.layers.moe import QuantMoEExperts

pytest.importorskip("modelopt")


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    from omni_modelopt_fixtures import make_omni_modelopt_export

    base = tmp_path_factory.mktemp("omni-modelopt")
    return {
        "nvfp4": make_omni_modelopt_export("nvfp4", base / "nvfp4", placement="text_config"),
        "mixed": make_omni_modelopt_export("mixed", base / "mixed", placement="export"),
        "fp8": make_omni_modelopt_export("fp8", base / "fp8", placement="text_config"),
    }


def _load(path, **kw):
    from quantomni import Omni

    return Omni(path, device="cpu", progress=False, **kw)


def _ref(path):
    from omni_modelopt_fixtures import reference_path

    return load_file(str(reference_path(path)))


def test_nvfp4_thinker_detected_from_text_config(exports):
    from quantomni.multistage.modelopt_thinker import ModelOptLinear

    path = exports["nvfp4"]
    cfg = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in cfg and not (path / "hf_quant_config.json").exists()
    omni = _load(path)
    pre = omni.describe()["prequantized"]
    assert pre["quant_algo"] == "NVFP4" and pre["source"].endswith("thinker_config.text_config.quantization_config")
    lm = omni.model.thinker.model.language_model
    q = lm.layers[0].self_attn.q_proj
    assert isinstance(q, ModelOptLinear) and q.weight.dtype == torch.uint8 and q.input_scale is not None
    ex = lm.layers[0].mlp.experts
    assert isinstance(ex, QuantMoEExperts) and ex.gate_up.fmt == "nvfp4" and ex.gate_up.act == "nvfp4_static"
    assert lm.layers[0].mlp.gate.weight.dtype == torch.bfloat16  # router untouched
    # every other stage / encoder: BF16 and nothing quantized
    for stage in (omni.model.thinker.model.audio_tower, omni.model.thinker.model.visual, omni.model.thinker.lm_head,
                  omni.model.talker, omni.model.code2wav):
        assert not any(isinstance(m, (QuantLinear, QuantMoEExperts, ModelOptLinear)) for m in stage.modules())
        assert {p.dtype for p in stage.parameters()} <= {torch.bfloat16, torch.float32}


def test_nvfp4_weights_match_modelopt_fake_quant(exports):
    from quantomni.kernels.moe_torch import dequant_experts
    from quantomni.kernels.nvfp4_ref import nvfp4_dequantize

    path = exports["nvfp4"]
    ref = _ref(path)
    lm = _load(path).model.thinker.model.language_model
    q = lm.layers[0].self_attn.q_proj
    ours = nvfp4_dequantize(q.weight, q.weight_scale, q.weight_scale_2)
    ex = lm.layers[0].mlp.experts
    gate_up3 = dequant_experts(ex.gate_up, torch.tensor([3]), torch.float32)[0]
    down5 = dequant_experts(ex.down, torch.tensor([5]), torch.float32)[0]
    for mine, theirs in ((ours, ref["fq_q_proj"]), (gate_up3, ref["fq_gate_up_3"]), (down5, ref["fq_down_5"])):
        assert float((mine - theirs).norm() / theirs.norm()) < 0.01


@pytest.mark.parametrize("kind, max_rel", [("nvfp4", 0.1), ("mixed", 0.06), ("fp8", 0.06)])
def test_thinker_logits_match_modelopt(exports, kind, max_rel):
    from omni_test_helpers import logits_agreement

    path = exports[kind]
    ref = _ref(path)
    outs = {}
    for backend in ("torch", "grouped"):
        outs[backend] = _load(path, moe_backend=backend).text.logits(ref["input_ids"])[0]
        rel, top1 = logits_agreement(outs[backend], ref["logits_fake_quant"])
        print(kind, backend, rel, top1)
        assert rel < max_rel and top1 > 0.75
        rel_bf16, _ = logits_agreement(outs[backend], ref["logits_bf16"])
        assert rel_bf16 > 1e-3  # really quantized
    assert logits_agreement(outs["grouped"], outs["torch"])[0] < 0.05  # grouped runs bf16 matmuls, torch fp32


def test_mixed_checkpoint_experts_nvfp4_dense_fp8(exports):
    from quantomni.multistage.modelopt_thinker import ModelOptLinear

    path = exports["mixed"]
    qc = json.loads((path / "config.json").read_text())["quantization_config"]
    assert qc["quant_algo"] == "MIXED_PRECISION"
    assert qc["quantized_layers"]["thinker.model.language_model.layers.0.mlp.experts"]["quant_algo"] == "NVFP4"
    omni = _load(path)
    lm = omni.model.thinker.model.language_model
    assert isinstance(lm.layers[1].self_attn.o_proj, ModelOptLinear) and lm.layers[1].self_attn.o_proj.fmt == "fp8"
    assert lm.layers[1].mlp.experts.down.fmt == "nvfp4"
    plan = omni.plans["thinker"]
    assert plan.quantized_count == 12 and "MIXED_PRECISION" in plan.scheme
    r = omni.chat("hi", max_tokens=4, temperature=0)
    assert r.completion_tokens >= 1


def test_fp8_thinker_static_scales(exports):
    from quantomni.multistage.modelopt_thinker import ModelOptLinear

    lm = _load(exports["fp8"]).model.thinker.model.language_model
    q = lm.layers[0].self_attn.q_proj
    assert isinstance(q, ModelOptLinear) and q.weight.dtype == torch.float8_e4m3fn and q.input_scale.dim() == 0
    ex = lm.layers[0].mlp.experts
    assert ex.gate_up.fmt == "fp8" and ex.gate_up.act == "fp8_static" and ex.gate_up.input_scale.shape == (8,)
    assert ex.gate_up.weight_scale.shape == (8, 64)  # per-tensor scales of gate and up, one per output row


def test_sidecar_only_detection(exports, tmp_path):
    import shutil

    src = exports["mixed"]
    dst = tmp_path / "sidecar-only"
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    del cfg["quantization_config"]
    (dst / "config.json").write_text(json.dumps(cfg))
    omni = _load(dst)
    pre = omni.describe()["prequantized"]
    assert pre["source"] == "hf_quant_config.json" and pre["quant_algo"] == "MIXED_PRECISION"
    assert omni.plans["thinker"].quantized_count == 12


def _legacy(name: str) -> str:
    """transformers 4.x / hub names of the thinker (what published checkpoints use)."""
    for new, old in (("thinker.model.language_model.", "thinker.model."), ("thinker.model.audio_tower", "thinker.audio_tower"),
                     ("thinker.model.visual", "thinker.visual")):
        if name.startswith(new):
            return old + name[len(new):]
    return name


def test_legacy_hub_names_load_identically(exports, tmp_path):
    import shutil

    from safetensors.torch import load_file as load_st
    from safetensors.torch import save_file

    src = exports["nvfp4"]
    dst = tmp_path / "legacy"
    shutil.copytree(src, dst)
    (dst / "model.safetensors").unlink()
    tensors = load_st(str(src / "model.safetensors"))
    assert any(k.startswith("thinker.model.language_model.") for k in tensors)
    save_file({_legacy(k): v for k, v in tensors.items()}, str(dst / "model.safetensors"))
    cfg = json.loads((dst / "config.json").read_text())
    qc = cfg["thinker_config"]["text_config"]["quantization_config"]
    qc["ignore"] = [_legacy(p) for p in qc["ignore"]]
    assert "thinker.audio_tower*" in qc["ignore"]
    (dst / "config.json").write_text(json.dumps(cfg))
    ids = _ref(src)["input_ids"]
    a = _load(src).text.logits(ids)
    b = _load(dst).text.logits(ids)
    assert torch.equal(a, b)


def test_prequantized_thinker_rejects_extra_quantization(exports):
    with pytest.raises(ValueError, match="pre-quantized"):
        _load(exports["mixed"], quantization="fp8")


def test_quantized_tensor_outside_the_thinker_is_an_error():
    from quantomni.multistage.modelopt_thinker import check_quantized_scope

    check_quantized_scope(["thinker.model.language_model.layers.0.self_attn.q_proj.weight_scale", "talker.x.weight"])
    for bad in ("talker.model.layers.0.self_attn.q_proj.weight_scale", "thinker.model.audio_tower.layers.0.fc1.input_scale"):
        with pytest.raises(QuantizationError, match="only the thinker language model"):
            check_quantized_scope([bad])


def test_inspect_shows_prequantized_thinker(exports, capsys):
    from quantomni.cli.main import main

    assert main(["inspect", str(exports["nvfp4"]), "--summary-only"]) == 0
    out = capsys.readouterr().out
    assert "pre-quantized ModelOpt NVFP4" in out and "text_config" in out


def test_config_that_contradicts_the_tensors_is_named(exports, tmp_path):
    import shutil

    from quantomni.errors import CheckpointError

    dst = tmp_path / "contradiction"
    shutil.copytree(exports["nvfp4"], dst)
    cfg = json.loads((dst / "config.json").read_text())
    qc = cfg["thinker_config"]["text_config"]["quantization_config"]
    qc["ignore"].append("thinker.model.language_model.layers.1.self_attn.o_proj")
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="layers.1.self_attn.o_proj.*disagree"):
        _load(dst)


def test_missing_expert_tensor_is_named(exports, tmp_path):
    import shutil

    from safetensors.torch import load_file as load_st
    from safetensors.torch import save_file

    from quantomni.errors import CheckpointError

    dst = tmp_path / "missing"
    shutil.copytree(exports["mixed"], dst)
    tensors = load_st(str(dst / "model.safetensors"))
    del tensors["thinker.model.language_model.layers.1.mlp.experts.5.down_proj.weight_scale"]
    save_file(tensors, str(dst / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"layers\.1\.mlp\.experts"):
        _load(dst)
