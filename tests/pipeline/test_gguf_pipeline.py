"""GGUF end to end: a GGUF file of the demo FLUX transformer (BFL and diffusers naming) loaded with
``Omni(model=BASE_DIR, gguf_model=PATH)``, against the BF16 base pipeline and against diffusers' own
GGUF loader (the oracle), plus the user-facing errors and the CLI.

Thresholds (demo FLUX, hidden 128, 64x64, 4 steps, seed 1234; measured values in brackets):
* PSNR vs the BF16 pipeline: Q8_0 >= 40 dB [48.5], mixed Q8_0/Q5_0/F16 >= 40 dB [48.8], Q4_0 >= 30 dB
  [37.4]. Q8_0's weight error (0.5%) is near BF16's own rounding; Q4_0 (8%) is visibly lossier; a
  broken path (wrong row split, swapped modulation halves) gives ~10 dB (a random image).
* Resident denoiser bytes: between 0.75x and 1.05x the file size [0.97-0.985: packed weights are
  copied as is, F32 vectors become BF16] and below 0.6x (Q8_0) [0.53] / 0.4x (Q4_0) [0.29] of BF16.
* Oracle (float32 on CPU): relative output error against diffusers' ``from_single_file`` with
  ``GGUFQuantizationConfig(compute_dtype=float32)`` < 2e-3 for Q8_0/Q5_0 files [measured 2.7e-4 BFL
  Q8_0, 6.5e-5 mixed] and < 5e-3 for K-quants [measured 2.0e-3]. The weights are the same bytes;
  diffusers does the scale arithmetic in float16 (2**-11 relative rounding per product; K-quants
  have two such products, d*scale and dmin*min, per sub-block), we in float32.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as QT
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "formats"))
from gguf_fixtures import (  # noqa: E402
    diffusers_flux_converter,
    flux_diffusers_to_bfl,
    flux_inputs,
    policy,
    tiny_flux,
    write_gguf,
)

from quantomni import Omni  # noqa: E402
from quantomni.cli.main import main  # noqa: E402
from quantomni.config import build_quant_config  # noqa: E402
from quantomni.errors import CheckpointError  # noqa: E402
from quantomni.formats.gguf_file import GGUFFormatError  # noqa: E402
from quantomni.methods.gguf import GgufLinearMethod  # noqa: E402
from quantomni.models.registry import adapter_for_class  # noqa: E402
from quantomni.pipeline.backends import BackendRequest  # noqa: E402
from quantomni.pipeline.loader import load_component_streaming  # noqa: E402

KW = dict(height=64, width=64, num_inference_steps=4, seed=1234)
ORACLE_TOL = 2e-3
ORACLE_TOL_K = 5e-3


def _psnr(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mse = ((a - b) ** 2).mean()
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _rel(a, b):
    assert torch.isfinite(a).all(), "output has NaN/Inf"
    return ((a - b).norm() / b.norm()).item()


def _mixed(name, t):
    """Community-style mix: embedder/output projections kept in F16, MLPs Q5_0, the rest Q8_0."""
    if t.ndim < 2:
        return QT.F32
    if name in ("x_embedder.weight", "proj_out.weight"):
        return QT.F16
    return QT.Q5_0 if ".ff" in name else QT.Q8_0


@pytest.fixture(scope="module")
def flux(demo_model_dir):
    base = demo_model_dir("flux")
    sd = load_file(str(base / "transformer" / "diffusion_pytorch_model.safetensors"))
    return base, sd


@pytest.fixture(scope="module")
def files(flux, tmp_path_factory):
    base, sd = flux
    d = tmp_path_factory.mktemp("gguf-files")
    out = {"q8_bfl": d / "flux_q8_bfl.gguf", "mixed": d / "flux_mixed.gguf", "q4": d / "flux_q4_0.gguf"}
    write_gguf(out["q8_bfl"], flux_diffusers_to_bfl(sd, 2, 2), arch="flux", qtype_policy=policy(QT.Q8_0))
    write_gguf(out["mixed"], sd, arch=None, qtype_policy=_mixed)  # no general.architecture: names decide
    write_gguf(out["q4"], sd, arch="flux", qtype_policy=policy(QT.Q4_0))
    return out


@pytest.fixture(scope="module")
def bf16(flux):
    base, _ = flux
    omni = Omni(base, device="cpu", progress=False)
    image = omni.generate("a red teapot", **KW).images[0]
    assert np.asarray(image).std() > 5, "baseline image is flat; the check would be meaningless"
    return image, omni.denoiser_weight_bytes


@pytest.mark.parametrize("name, min_psnr, max_vs_bf16", [("q8_bfl", 40, 0.6), ("mixed", 40, 0.6), ("q4", 30, 0.4)])
def test_gguf_pipeline_close_to_bf16_and_packed(flux, files, bf16, name, min_psnr, max_vs_bf16):
    base, _ = flux
    ref, bf16_bytes = bf16
    omni = Omni(base, gguf_model=files[name], device="cpu", progress=False)
    plan = omni.plans["transformer"]
    described = json.loads(json.dumps(omni.describe()))  # serialisable as served by the API
    assert described["quantization"]["components"]["denoiser"]["path"] == str(files[name])
    info = described["components"]["transformer"]
    assert info["scheme"].startswith("gguf flux (")
    assert info["method"] == "gguf" and plan.quantized_count > 0
    # every packed weight was copied into memory the model owns: the file map is released after loading
    assert omni.quant_config.components["denoiser"].file_state().ckpt._base is None
    if name == "mixed":
        assert info["layer_schemes"] == {"gguf Q8_0": 40, "gguf Q5_0": 8}
        kept = {r.name: r.reason for r in plan.records if not r.quantized}
        assert kept == {n: "checkpoint: stored as F16 in the GGUF file" for n in ("x_embedder", "proj_out")}
        assert isinstance(omni.pipe.transformer.x_embedder, torch.nn.Linear)
        assert omni.pipe.transformer.x_embedder.weight.dtype == torch.bfloat16
    else:
        assert info["layer_schemes"] == {"gguf " + ("Q8_0" if name == "q8_bfl" else "Q4_0"): 50}
    value = _psnr(ref, omni.generate("a red teapot", **KW).images[0])
    file_bytes = files[name].stat().st_size
    resident = omni.denoiser_weight_bytes
    print(f"{name}: PSNR {value:.2f} dB, resident {resident} B, file {file_bytes} B, bf16 {bf16_bytes} B")
    assert min_psnr <= value < float("inf")
    assert 0.75 * file_bytes <= resident <= 1.05 * file_bytes
    assert resident < max_vs_bf16 * bf16_bytes


def _ours(component_dir, path, model_cls, pipeline_class="FluxPipeline"):
    cfg = build_quant_config({"method": "gguf", "path": str(path)}).components["denoiser"]
    model, plan, _ = load_component_streaming(
        "transformer", component_dir, model_cls, cfg, adapter_for_class(pipeline_class), torch.device("cpu"),
        torch.float32, BackendRequest.parse("auto"), progress=False)
    return model, plan


def _theirs(path, config_root, model_cls):
    from diffusers import GGUFQuantizationConfig

    return model_cls.from_single_file(
        str(path), config=str(config_root), subfolder="transformer", local_files_only=True,
        quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32), torch_dtype=torch.float32,
    ).eval()


@pytest.mark.parametrize("name", ["q8_bfl", "mixed"])
def test_oracle_diffusers_from_single_file(flux, files, name, monkeypatch):
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.single_file_model import SINGLE_FILE_LOADABLE_CLASSES

    base, _ = flux
    if name == "q8_bfl":  # diffusers' BFL converter hard-codes FLUX-dev's width; rebind it to the demo's 128
        monkeypatch.setitem(SINGLE_FILE_LOADABLE_CLASSES["FluxTransformer2DModel"], "checkpoint_mapping_fn",
                            diffusers_flux_converter(128))
    ours, _ = _ours(base / "transformer", files[name], FluxTransformer2DModel)
    theirs = _theirs(files[name], base, FluxTransformer2DModel)
    inputs = flux_inputs(ours, seed=int.from_bytes(np.random.bytes(2), "little"))  # fresh inputs each run
    with torch.no_grad():
        a, b = ours(**inputs)[0], theirs(**inputs)[0]
    err = _rel(a, b)
    print(f"{name}: rel err vs diffusers GGUF loader {err:.2e}")
    assert err < ORACLE_TOL


def test_k_quants_through_the_loader_match_diffusers(tmp_path):
    """Hidden-256 FLUX so K-quant blocks fit: Q4_K attention/modulation, Q6_K MLPs, odd-width embedders F32."""
    from diffusers import FluxTransformer2DModel

    model = tiny_flux()
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    (tmp_path / "transformer").mkdir()
    model.save_config(tmp_path / "transformer")

    def k_policy(name, t):
        if t.ndim < 2 or t.shape[-1] % 256:
            return QT.F32
        return QT.Q6_K if ".ff" in name or "proj_mlp" in name else QT.Q4_K

    path = tmp_path / "flux_k.gguf"
    write_gguf(path, sd, arch="flux", qtype_policy=k_policy)
    ours, plan = _ours(tmp_path / "transformer", path, FluxTransformer2DModel)
    schemes = {r.scheme for r in plan.records if r.quantized}
    assert schemes == {"gguf Q4_K", "gguf Q6_K"}
    assert any(r.reason == "checkpoint: stored as F32 in the GGUF file" for r in plan.records)
    theirs = _theirs(path, tmp_path, FluxTransformer2DModel)
    inputs = flux_inputs(model)
    with torch.no_grad():
        a, b, ref = ours(**inputs)[0], theirs(**inputs)[0], model(**inputs)[0]
    print(f"K-quants: rel err vs diffusers {_rel(a, b):.2e}, vs float {_rel(a, ref):.3f}")
    assert _rel(a, b) < ORACLE_TOL_K
    assert 0 < _rel(a, ref) < 0.3  # ~7% Q4_K weight error compounded over 3 blocks (measured ~0.15)


# ----------------------------------------------------------------------------------- errors
@pytest.fixture
def load_spy(monkeypatch):
    """Counts layers processed and pipelines assembled, to prove an error came before any weight loaded."""
    import quantomni.pipeline.omni as omni_mod

    seen = {"layers": 0, "pipeline": 0}
    real_process = GgufLinearMethod.process_weights_after_loading
    real_import = omni_mod._import_diffusers

    def process(self, layer, device):
        seen["layers"] += 1
        return real_process(self, layer, device)

    def import_pipeline(name):
        seen["pipeline"] += 1
        return real_import(name)

    monkeypatch.setattr(GgufLinearMethod, "process_weights_after_loading", process)
    monkeypatch.setattr(omni_mod, "_import_diffusers", import_pipeline)
    return seen


def test_bad_files_fail_before_anything_loads(flux, files, tmp_path, load_spy):
    base, _ = flux
    bad_magic = tmp_path / "bad_magic.gguf"
    bad_magic.write_bytes(b"GGML" + bytes(200))
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(files["q8_bfl"].read_bytes()[: files["q8_bfl"].stat().st_size // 2])
    for path, fragment in ((bad_magic, r"not a GGUF file \(magic b'GGML'"), (truncated, "runs past the end of the file")):
        with pytest.raises(GGUFFormatError, match=fragment) as exc:
            Omni(base, gguf_model=path, device="cpu", progress=False)
        assert str(path) in str(exc.value)
    assert load_spy == {"layers": 0, "pipeline": 0}


def test_architecture_mismatch_names_both(flux, tmp_path, load_spy):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "formats"))
    from gguf_name_fixtures import tiny_model

    base, _ = flux
    path = tmp_path / "qwen.gguf"
    write_gguf(path, tiny_model("qwen_image").state_dict(), arch="qwen_image", qtype_policy=policy(QT.Q8_0))
    with pytest.raises(CheckpointError, match=r"qwen_image denoiser \(QwenImageTransformer2DModel\).*is FluxTransformer2DModel"):
        Omni(base, gguf_model=path, device="cpu", progress=False)
    assert load_spy == {"layers": 0, "pipeline": 0}


def test_missing_extra_and_misshaped_tensors_are_named(flux, tmp_path, load_spy):
    base, sd = flux
    sd = dict(sd)
    del sd["transformer_blocks.1.attn.to_k.weight"]
    sd["transformer_blocks.0.attn.extra.weight"] = torch.randn(128, 128)
    sd["proj_out.weight"] = torch.randn(32, 128)
    path = tmp_path / "broken.gguf"
    write_gguf(path, sd, arch="flux", qtype_policy=policy(QT.Q8_0))
    with pytest.raises(CheckpointError) as exc:
        Omni(base, gguf_model=path, device="cpu", progress=False)
    msg = str(exc.value)
    assert str(path) in msg and "1 missing: transformer_blocks.1.attn.to_k.weight" in msg
    assert "1 extra: transformer_blocks.0.attn.extra.weight" in msg
    assert "proj_out.weight: file gives [32, 128], model expects [64, 128]" in msg
    assert load_spy == {"layers": 0, "pipeline": 0}


def test_gguf_with_another_method_is_an_error(flux, files):
    base, _ = flux
    with pytest.raises(ValueError, match=r"the GGUF file already selects its quantization method.*fp8"):
        Omni(base, quantization="fp8", gguf_model=files["q4"], device="cpu", progress=False)


# ----------------------------------------------------------------------------------- CLI
def test_cli_inspect_reads_no_tensor_data(flux, files, capsys, monkeypatch):
    import quantomni.kernels.gguf_dequant as dq

    def forbidden(*a, **k):
        raise AssertionError("inspect must not dequantize anything")

    monkeypatch.setattr(dq, "dequantize_gguf", forbidden)
    base, _ = flux
    assert main(["inspect", str(base), "--gguf-model", str(files["mixed"])]) == 0
    text = capsys.readouterr().out
    assert "architecture flux (FluxTransformer2DModel), diffusers naming" in text
    assert "2-D weights: F16: 2, Q5_0: 8, Q8_0: 40" in text
    assert "gguf Q5_0" in text and "checkpoint: stored as F16 in the GGUF file" in text
    assert main(["inspect", str(base), "--gguf-model", str(files["q8_bfl"]), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    ck = info["components"]["transformer"]["checkpoint"]
    assert ck["naming"] == "original" and ck["weight_qtypes"] == {"Q8_0": 50}
    assert main(["inspect", str(base), "-q", "fp8", "--gguf-model", str(files["q4"])]) == 2
    assert "already selects its quantization method" in capsys.readouterr().err


def test_cli_generate_with_gguf_model(flux, files, tmp_path, capsys):
    base, _ = flux
    out = tmp_path / "img.png"
    rc = main(["generate", "--model", str(base), "--gguf-model", str(files["q4"]), "--prompt", "a cat", "--height", "32",
               "--width", "32", "--num-inference-steps", "1", "--seed", "1", "--output", str(out), "--device", "cpu",
               "--no-progress"])
    assert rc == 0 and out.is_file()
    report = json.loads(capsys.readouterr().out)
    assert report["quantization"]["transformer"]["method"] == "gguf"
    assert report["quantization"]["transformer"]["quantized_layers"] == 50


# ----------------------------------------------------------------------------------- every architecture
ARCH_CLASSES = {"qwen_image": ("QwenImagePipeline", "original"), "sd3": ("StableDiffusion3Pipeline", "original"),
                "flux2": ("Flux2Pipeline", "original"), "z_image": ("ZImagePipeline", "original"),
                "wan": ("WanPipeline", "original")}


@pytest.mark.parametrize("arch", sorted(ARCH_CLASSES))
def test_every_architecture_loads_through_the_streaming_loader(arch, tmp_path):
    """Original-repo naming (Qwen-Image's is diffusers'), Q8_0 where rows fit 32-blocks, else F32: every
    quantized layer dequantizes to its float weight within Q8_0's error (< 1%, measured ~0.5%); other
    tensors (norms, convs, modulation tables, Wan's 5-D patch embedding) load exactly when stored F32,
    and dense within the same error when the file quantized them (SD3's position table, Z-Image's pad tokens)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "formats"))
    import diffusers
    from gguf_name_fixtures import tiny_model, to_original

    from quantomni.kernels.gguf_dequant import dequantize_gguf
    from quantomni.layers.linear import QuantLinear

    pipeline_class, naming = ARCH_CLASSES[arch]
    model = tiny_model(arch)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tensors = sd if arch == "qwen_image" else to_original(arch, sd)
    meta = {}
    for k, v in list(tensors.items()):
        if v.ndim > 4:  # GGUF holds at most 4 dims: converters flatten and record the true shape
            meta[f"comfy.gguf.orig_shape.{k}"] = list(v.shape)
            tensors[k] = v.reshape(v.shape[0], v.shape[1], -1)
    (tmp_path / "transformer").mkdir()
    model.save_config(tmp_path / "transformer")
    path = tmp_path / f"{arch}.gguf"
    stored = write_gguf(path, tensors, arch=arch, qtype_policy=policy(QT.Q8_0), metadata=meta)
    cfg = build_quant_config({"method": "gguf", "path": str(path)}).components["denoiser"]
    assert cfg.summary()["architecture"] == arch
    ours, plan = _ours(tmp_path / "transformer", path, getattr(diffusers, type(model).__name__), pipeline_class)
    assert plan.quantized_count > 0
    checked = 0
    for name, module in ours.named_modules():
        if isinstance(module, QuantLinear):
            w = dequantize_gguf(module.weight, module.method.qtype, (module.out_features, module.in_features))
            ref = sd[f"{name}.weight"]
            assert 0 < ((w - ref).norm() / ref.norm()).item() < 1e-2, name
            checked += 1
    by_target = cfg.file_state().by_target
    for name, t in ours.state_dict().items():
        owner = name.rpartition(".")[0]
        if isinstance(ours.get_submodule(owner) if owner else ours, QuantLinear):
            continue
        if stored[by_target[name].source] == QT.F32:
            assert torch.equal(t, sd[name]), name
        else:  # a quantized tensor that is not a Linear weight (e.g. a pad token, a position table): loaded dense
            assert 0 < ((t - sd[name]).norm() / sd[name].norm()).item() < 1e-2, name
    assert checked == plan.quantized_count


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gguf_pipeline_on_cuda(flux, files, bf16):
    """Packed weights live on the GPU and are dequantized there; same image as on CPU within noise."""
    from quantomni.layers.linear import QuantLinear

    base, _ = flux
    ref, _ = bf16
    omni = Omni(base, gguf_model=files["q8_bfl"], device="cuda", progress=False)
    qls = [m for m in omni.pipe.transformer.modules() if isinstance(m, QuantLinear)]
    assert qls and all(m.weight.is_cuda and m.weight.dtype == torch.uint8 for m in qls)
    value = _psnr(ref, omni.generate("a red teapot", **KW).images[0])
    print(f"cuda q8_bfl: PSNR vs CPU BF16 {value:.2f} dB")
    assert value >= 35
