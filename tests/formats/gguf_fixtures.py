"""Test helpers that write real GGUF files with gguf-py (and libgguf for K-/IQ-quants).

Used by tests/formats and tests/kernels (import via sys.path insertion of this folder).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch

import gguf
from gguf import GGMLQuantizationType as QT

# Types gguf-py can quantize itself; the rest come from libgguf (ggml's own C quantizers).
GGUF_PY_QUANTIZABLE = {QT.F32, QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1}

QTypePolicy = Callable[[str, torch.Tensor], QT]


def quantize_array(x: np.ndarray, qtype: QT) -> np.ndarray:
    """float32 [rows, cols] -> the GGUF bytes of ``qtype`` as uint8 [rows, bytes_per_row]."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if qtype in GGUF_PY_QUANTIZABLE:
        q = gguf.quants.quantize(x, qtype)
    else:
        import libgguf

        q = libgguf.quantize_rows(x, getattr(libgguf.GGMLQuantizationType, qtype.name))
    q = np.ascontiguousarray(q)
    return q.view(np.uint8).reshape(x.shape[0], -1)


def policy(matrix_qtype: QT, *, vector_qtype: QT = QT.F32, fallback: QT = QT.F32) -> QTypePolicy:
    """1-D tensors -> ``vector_qtype``; >=2-D tensors -> ``matrix_qtype`` when the row length fits its
    block size, else ``fallback`` (as community converters do for odd-sized layers)."""
    block = gguf.GGML_QUANT_SIZES[matrix_qtype][0]

    def choose(name: str, t: torch.Tensor) -> QT:
        if t.ndim < 2:
            return vector_qtype
        return matrix_qtype if t.shape[-1] % block == 0 else fallback

    return choose


def write_gguf(
    path: str | Path,
    state_dict: Mapping[str, torch.Tensor],
    *,
    arch: str | None = "flux",
    qtype_policy: QTypePolicy | None = None,
    metadata: Mapping[str, object] | None = None,
) -> dict[str, QT]:
    """Write ``state_dict`` to a GGUF file; returns the qtype used per tensor.

    ``arch=None`` writes no general.architecture (to exercise name-based detection)."""
    qtype_policy = qtype_policy or policy(QT.F32)
    w = gguf.GGUFWriter(str(path), arch or "")
    if arch is None:  # GGUFWriter always adds general.architecture: drop it again
        w.kv_data[0].pop("general.architecture", None)
    for key, value in (metadata or {}).items():
        if isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, (list, tuple)):
            w.add_array(key, list(value))
        else:
            w.add_uint32(key, int(value))
    used: dict[str, QT] = {}
    for name, t in state_dict.items():
        qtype = qtype_policy(name, t)
        arr = t.detach().to(torch.float32).cpu().numpy()
        if qtype == QT.F32:
            w.add_tensor(name, np.ascontiguousarray(arr))
        elif qtype == QT.F16:
            w.add_tensor(name, arr.astype(np.float16))
        else:
            rows = arr.reshape(-1, arr.shape[-1])
            packed = quantize_array(rows, qtype).reshape(*arr.shape[:-1], -1)
            w.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=qtype)
        used[name] = qtype
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return used


def tensor_info_offsets(data: bytes, name: str, n_dims: int) -> dict[str, int]:
    """Byte positions of one tensor-info record's fields, for patching bad-input cases."""
    key = struct.pack("<Q", len(name.encode())) + name.encode()
    start = data.index(key) + len(key)
    return {
        "n_dims": start,
        "ne": start + 4,
        "type": start + 4 + 8 * n_dims,
        "offset": start + 8 + 8 * n_dims,
    }


def patched(data: bytes, pos: int, fmt: str, value) -> bytes:
    """``data`` with the struct ``fmt`` field at ``pos`` replaced by ``value``."""
    out = bytearray(data)
    struct.pack_into(fmt, out, pos, value)
    return bytes(out)


# ----- FLUX.1: diffusers -> BFL names (inverse of quantomni's map; checked against diffusers' converter) -----

_FLUX_TOP = {
    "x_embedder": "img_in", "context_embedder": "txt_in",
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "proj_out": "final_layer.linear",
}
_FLUX_DOUBLE = {
    "norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin",
    "attn.to_out.0": "img_attn.proj", "attn.to_add_out": "txt_attn.proj",
    "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2",
    "ff_context.net.0.proj": "txt_mlp.0", "ff_context.net.2": "txt_mlp.2",
}
_FLUX_DOUBLE_NORMS = {
    "attn.norm_q.weight": "img_attn.norm.query_norm.scale", "attn.norm_k.weight": "img_attn.norm.key_norm.scale",
    "attn.norm_added_q.weight": "txt_attn.norm.query_norm.scale",
    "attn.norm_added_k.weight": "txt_attn.norm.key_norm.scale",
}


def flux_diffusers_to_bfl(sd: Mapping[str, torch.Tensor], n_double: int, n_single: int) -> dict[str, torch.Tensor]:
    """A diffusers FluxTransformer2DModel state dict in the original BFL naming (fused qkv / linear1)."""
    out: dict[str, torch.Tensor] = {}
    for d, b in _FLUX_TOP.items():
        for p in ("weight", "bias"):
            if f"{d}.{p}" in sd:
                out[f"{b}.{p}"] = sd[f"{d}.{p}"]
    for p in ("weight", "bias"):
        shift_scale = sd[f"norm_out.linear.{p}"].chunk(2, dim=0)
        out[f"final_layer.adaLN_modulation.1.{p}"] = torch.cat([shift_scale[1], shift_scale[0]])
    for i in range(n_double):
        s, t = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for p in ("weight", "bias"):
            for d, b in _FLUX_DOUBLE.items():
                out[f"{t}{b}.{p}"] = sd[f"{s}{d}.{p}"]
            out[f"{t}img_attn.qkv.{p}"] = torch.cat([sd[f"{s}attn.to_{x}.{p}"] for x in "qkv"])
            out[f"{t}txt_attn.qkv.{p}"] = torch.cat([sd[f"{s}attn.add_{x}_proj.{p}"] for x in "qkv"])
        for d, b in _FLUX_DOUBLE_NORMS.items():
            out[t + b] = sd[s + d]
    for i in range(n_single):
        s, t = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for p in ("weight", "bias"):
            out[f"{t}linear1.{p}"] = torch.cat([sd[f"{s}attn.to_{x}.{p}"] for x in "qkv"] + [sd[f"{s}proj_mlp.{p}"]])
            out[f"{t}linear2.{p}"] = sd[f"{s}proj_out.{p}"]
            out[f"{t}modulation.lin.{p}"] = sd[f"{s}norm.linear.{p}"]
        out[f"{t}norm.query_norm.scale"] = sd[f"{s}attn.norm_q.weight"]
        out[f"{t}norm.key_norm.scale"] = sd[f"{s}attn.norm_k.weight"]
    return out


def tiny_flux(seed: int = 0):
    """FluxTransformer2DModel with hidden 256 (so most in_features fit K-quant 256-blocks)."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    model = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=2, attention_head_dim=128,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(16, 56, 56),
    ).eval()
    with torch.no_grad():  # zero-initialised layers would hide mapping mistakes: randomise everything
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    return model


def flux_inputs(model, seed: int = 1, n_img: int = 16, n_txt: int = 8):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    return dict(
        hidden_states=torch.randn(1, n_img, cfg.in_channels, generator=g),
        encoder_hidden_states=torch.randn(1, n_txt, cfg.joint_attention_dim, generator=g),
        pooled_projections=torch.randn(1, cfg.pooled_projection_dim, generator=g),
        timestep=torch.tensor([0.7]),
        guidance=torch.tensor([3.5]),
        img_ids=torch.randint(0, 8, (n_img, 3), generator=g).float(),
        txt_ids=torch.zeros(n_txt, 3),
        return_dict=False,
    )


def diffusers_flux_converter(inner_dim: int):
    """diffusers' BFL->diffusers FLUX converter with its hard-coded FLUX-dev width (3072) rebound to
    ``inner_dim``, so it can serve as an oracle for tiny models. Skips the caller if its code changed."""
    import types

    import pytest
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers as fn

    consts = fn.__code__.co_consts
    if consts.count(3072) != 1:
        pytest.skip("diffusers' FLUX converter no longer hard-codes inner_dim=3072 once")
    new_code = fn.__code__.replace(co_consts=tuple(inner_dim if c == 3072 and type(c) is int else c for c in consts))
    return types.FunctionType(new_code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
