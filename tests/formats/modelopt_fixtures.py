"""Real NVIDIA ModelOpt exports of a tiny diffusers Flux transformer, built on CPU.

Why: the ModelOpt format layer and the runtime must be checked against what the real
``nvidia-modelopt`` package writes, not against our reading of its docs. Every fixture here
runs ``mtq.quantize`` + ``export_hf_checkpoint`` on a 427 k-parameter ``FluxTransformer2DModel``.

Layout written by ``make_modelopt_export(kind, out_dir)``::

    out_dir/transformer/config.json                          diffusers config + quantization_config
    out_dir/transformer/diffusion_pytorch_model.safetensors  the ModelOpt export
    out_dir/original_weights.safetensors                     bf16 weights before quantization
    out_dir/reference_io.safetensors                         fixed inputs, bf16 output and the
                                                             fake-quantized ModelOpt output

``reference_io.safetensors`` keys: the Flux forward kwargs (``hidden_states``,
``encoder_hidden_states``, ``pooled_projections``, ``timestep``, ``img_ids``, ``txt_ids``,
``guidance``; float32), ``output_bf16`` (the unquantized model) and ``output_fake_quant`` (the
ModelOpt fake-quantized model on the same inputs), both float32.

The NVFP4 fake-quant op of modelopt 0.47 asserts CUDA; ``_install_cpu_nvfp4_op`` swaps in a pure
torch equivalent built from ModelOpt's own ``NVFP4QTensor`` (the export path is pure torch anyway).
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

KINDS = ("fp8", "fp8_pcpt", "nvfp4", "w4a16_nvfp4", "int8_sq", "mixed")

FLUX_TINY_CONFIG = dict(
    patch_size=1,
    in_channels=64,
    num_layers=2,
    num_single_layers=1,
    attention_head_dim=16,
    num_attention_heads=4,
    joint_attention_dim=32,
    pooled_projection_dim=32,
    guidance_embeds=True,
    axes_dims_rope=(4, 6, 6),
)

IMG_TOKENS = 16
TXT_TOKENS = 8

_CPU_OP_INSTALLED = False


def _import_modelopt():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import modelopt.torch.quantization as mtq
            from modelopt.torch.export import export_hf_checkpoint
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "ModelOpt fixtures need nvidia-modelopt: pip install nvidia-modelopt"
        ) from exc
    return mtq, export_hf_checkpoint


def _install_cpu_nvfp4_op() -> None:
    """Replace modelopt's CUDA-only dynamic NVFP4 fake-quant op by a CPU torch version."""
    global _CPU_OP_INSTALLED
    if _CPU_OP_INSTALLED:
        return
    import modelopt.torch.quantization.tensor_quant as tq
    from modelopt.torch.quantization.qtensor import NVFP4QTensor

    original = tq.dynamic_block_quantize_op

    def cpu_dynamic_block_quantize(
        x, block_size, amax, num_bits, exponent_bits, scale_num_bits, scale_exponent_bits
    ):
        is_nvfp4 = (num_bits, exponent_bits, scale_num_bits, scale_exponent_bits) == (4, 2, 8, 4)
        if x.is_cuda or not is_nvfp4:
            return original(
                x, block_size, amax, num_bits, exponent_bits, scale_num_bits, scale_exponent_bits
            )
        global_scale = (amax.float().amax() / (6.0 * 448.0)).clamp_min(1e-12)
        q, scale, global_scale = NVFP4QTensor.quantize(
            x.float().clone(), block_size, weights_scaling_factor_2=global_scale
        )
        out = q.dequantize(
            dtype=torch.float32, scale=scale, double_scale=global_scale, block_sizes={-1: block_size}
        )
        return out.to(x.dtype)

    tq.dynamic_block_quantize_op = cpu_dynamic_block_quantize
    _CPU_OP_INSTALLED = True


def build_tiny_flux(seed: int = 0) -> torch.nn.Module:
    """Tiny bf16 Flux whose Linear layers each get their own weight std, so scales differ."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    model = FluxTransformer2DModel(**FLUX_TINY_CONFIG).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        for i, lin in enumerate(linears):
            sigma = 0.02 * (1.0 + (i * 0.61) % 3.0)
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen) * sigma)
            if lin.bias is not None:
                lin.bias.copy_(torch.randn(lin.bias.shape, generator=gen) * 0.01)
    return model.to(torch.bfloat16)


def make_inputs(seed: int = 1234, batch: int = 1) -> dict[str, torch.Tensor]:
    """Fixed float32 forward inputs for the tiny Flux (16 image + 8 text tokens)."""
    gen = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(batch, IMG_TOKENS, 64, generator=gen),
        "encoder_hidden_states": torch.randn(batch, TXT_TOKENS, 32, generator=gen),
        "pooled_projections": torch.randn(batch, 32, generator=gen),
        "timestep": torch.rand(batch, generator=gen),
        "img_ids": torch.randint(0, 4, (IMG_TOKENS, 3), generator=gen).float(),
        "txt_ids": torch.zeros(TXT_TOKENS, 3),
        "guidance": torch.full((batch,), 3.5),
    }


def run_flux(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """One forward pass in the model's dtype; returns float32 output."""
    dtype = next(model.parameters()).dtype
    kwargs = {
        k: (v.to(dtype) if k not in ("img_ids", "txt_ids") else v) for k, v in inputs.items()
    }
    with torch.no_grad():
        return model(**kwargs, return_dict=False)[0].float()


def _quant_cfg(mtq, kind: str) -> dict:
    if kind == "fp8":
        return copy.deepcopy(mtq.FP8_DEFAULT_CFG)
    if kind == "fp8_pcpt":
        return copy.deepcopy(mtq.FP8_PER_CHANNEL_PER_TOKEN_CFG)
    if kind == "nvfp4":
        return copy.deepcopy(mtq.NVFP4_DEFAULT_CFG)
    if kind == "w4a16_nvfp4":
        return copy.deepcopy(mtq.W4A16_NVFP4_CFG)
    if kind == "int8_sq":
        return copy.deepcopy(mtq.INT8_SMOOTHQUANT_CFG)
    if kind == "mixed":
        # modelopt 0.47: quant_cfg is a list, later entries win. Single blocks and the
        # image feed-forward go FP8, the context feed-forward stays BF16, the rest NVFP4.
        cfg = copy.deepcopy(mtq.NVFP4_DEFAULT_CFG)
        fp8 = {"num_bits": (4, 3), "axis": None}
        for pattern in ("*single_transformer_blocks*", "*ff.net*"):
            for q in ("weight_quantizer", "input_quantizer"):
                cfg["quant_cfg"].append({"quantizer_name": f"{pattern}{q}", "cfg": dict(fp8)})
        cfg["quant_cfg"].append({"quantizer_name": "*ff_context*", "enable": False})
        return cfg
    raise ValueError(f"unknown ModelOpt fixture kind {kind!r}; allowed: {', '.join(KINDS)}")


def _unify_qkv_like_export(model) -> bool:
    """Apply the export's q/k/v amax unification before the reference forward.

    Why: ``export_hf_checkpoint`` unifies the amax of q/k/v (and add_q/k/v) before writing, and
    the model cannot run after export (weights become packed). Running the same (private)
    ModelOpt step first makes ``output_fake_quant`` correspond to the exported tensors.
    Returns False when this modelopt version lacks the helper (output then predates it).
    """
    try:
        from modelopt.torch.export.unified_export_hf import _fuse_qkv_linears_diffusion
    except ImportError:
        return False
    _fuse_qkv_linears_diffusion(model)
    return True


def _disable_unexported_quantizers(model) -> int:
    """Disable enabled quantizers that do not sit on an nn.Linear; returns how many.

    Why: the default configs also fake-quantize LayerNorm inputs (``QuantLayerNorm``), but the
    export carries nothing for them, so a runtime that loads the export never quantizes there.
    Without this the fake-quant output differs from any correct runtime by ~9% (NVFP4).
    """
    from modelopt.torch.quantization.nn import TensorQuantizer

    n = 0
    for name, mod in model.named_modules():
        if isinstance(mod, TensorQuantizer) and mod.is_enabled:
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            if not isinstance(parent, torch.nn.Linear):
                mod.disable()
                n += 1
    return n


def make_modelopt_export(kind: str, out_dir: str | Path, seed: int = 0) -> dict:
    """Quantize a tiny Flux with real ModelOpt on CPU and export it; returns paths and facts.

    Returned dict: ``kind``, ``component_dir`` (Path of the exported transformer),
    ``weights_path``, ``original_weights_path``, ``reference_io_path``,
    ``quantization_config`` (dict read back from config.json), ``rel_err_fake_quant``
    (relative L2 error of the fake-quantized output vs the bf16 output).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown ModelOpt fixture kind {kind!r}; allowed: {', '.join(KINDS)}")
    mtq, export_hf_checkpoint = _import_modelopt()
    _install_cpu_nvfp4_op()
    out_dir = Path(out_dir)
    component_dir = out_dir / "transformer"
    out_dir.mkdir(parents=True, exist_ok=True)

    model = build_tiny_flux(seed)
    original = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    inputs = make_inputs()
    out_ref = run_flux(model, inputs)

    calib = [make_inputs(seed=100 + i, batch=2) for i in range(2)]

    def forward_loop(m):
        for batch in calib:
            run_flux(m, batch)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mtq.quantize(model, _quant_cfg(mtq, kind), forward_loop)
        qkv_unified = _unify_qkv_like_export(model)
        n_disabled = _disable_unexported_quantizers(model)
        out_fq = run_flux(model, inputs)
        export_hf_checkpoint(model, export_dir=str(component_dir))

    save_file(original, str(out_dir / "original_weights.safetensors"))
    io = {k: v.contiguous() for k, v in inputs.items()}
    io["output_bf16"] = out_ref.contiguous()
    io["output_fake_quant"] = out_fq.contiguous()
    save_file(io, str(out_dir / "reference_io.safetensors"))

    qcfg = json.loads((component_dir / "config.json").read_text())["quantization_config"]
    rel = float((out_fq - out_ref).norm() / out_ref.norm())
    return {
        "kind": kind,
        "component_dir": component_dir,
        "weights_path": component_dir / "diffusion_pytorch_model.safetensors",
        "original_weights_path": out_dir / "original_weights.safetensors",
        "reference_io_path": out_dir / "reference_io.safetensors",
        "quantization_config": qcfg,
        "rel_err_fake_quant": rel,
        "qkv_unified_before_output": qkv_unified,
        "non_linear_quantizers_disabled": n_disabled,
    }


def load_export(info: dict) -> tuple[dict, dict, dict]:
    """(exported tensors, original bf16 weights, reference io) for a fixture ``info`` dict."""
    return (
        load_file(str(info["weights_path"])),
        load_file(str(info["original_weights_path"])),
        load_file(str(info["reference_io_path"])),
    )


# ---------------------------------------------------------------- pytest glue (session cache)

_EXPORT_CACHE: dict[str, dict] = {}


def cached_modelopt_export(kind: str, base_dir: str | Path) -> dict:
    """``make_modelopt_export`` once per kind per process (modelopt import costs ~6 s)."""
    if kind not in _EXPORT_CACHE:
        _EXPORT_CACHE[kind] = make_modelopt_export(kind, Path(base_dir) / kind)
    return _EXPORT_CACHE[kind]


try:
    import pytest
except ImportError:  # pragma: no cover - only used as a plain library then
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="session")
    def modelopt_exports(tmp_path_factory):
        """Getter ``kind -> info dict`` of real ModelOpt exports, built lazily and cached."""
        pytest.importorskip("modelopt", reason="needs nvidia-modelopt (pip install nvidia-modelopt)")
        base = tmp_path_factory.mktemp("modelopt_exports")
        return lambda kind: cached_modelopt_export(kind, base)
