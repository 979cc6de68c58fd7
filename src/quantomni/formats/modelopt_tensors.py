"""ModelOpt tensor layouts per Linear layer, validation, and fused-shard scale unification.

Why: a ModelOpt checkpoint is loaded as stored (no BF16 materialisation), so each layer's
tensors must be checked up front — a wrong dtype, a missing scale or a NaN scale otherwise
surfaces as garbage images far from the cause.

Layouts, exactly as nvidia-modelopt 0.47 ``export_hf_checkpoint`` writes them (suffixes after
``<layer>.``; scalars are 0-dim tensors, shape ``()``):

=====================  =================  =============================  ==========================
algo                   weight             weight_scale                   others
=====================  =================  =============================  ==========================
FP8                    e4m3fn [out, in]   f32 ()                         input_scale f32 ()
FP8_PER_CHANNEL_...    e4m3fn [out, in]   f32 [out]                      (dynamic per-token acts)
NVFP4                  uint8 [out, in/2]  e4m3fn [out, in/16]            weight_scale_2 f32 (),
                                                                         input_scale f32 ()
W4A16_NVFP4            uint8 [out, in/2]  e4m3fn [out, in/16]            weight_scale_2 f32 ()
W8A8_SQ_PER_CHANNEL    int8 [out, in]     f32 [out]                      input_scale f32 (),
                                                                         [pre_quant_scale [in]]
=====================  =================  =============================  ==========================

Optional in every layout: ``bias`` [out] (bf16/fp16/fp32). Value checks: float scales must be
finite and > 0; E4M3 block scales must not hold NaN bytes (0x7F/0xFF; run
``clamp_nan_e4m3_scales`` first) and must be > 0. Weights themselves are not scanned.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch

if TYPE_CHECKING:  # avoid an import cycle; modelopt.py re-exports this module
    from .modelopt import LayerScheme

_F32 = (torch.float32,)
_HALF_OR_F32 = (torch.bfloat16, torch.float16, torch.float32)
_E4M3_MIN_SCALE = 2.0**-9
_E4M3_MAX = 448.0


class ModelOptTensorError(ValueError):
    """A layer's tensors do not match its ModelOpt layout (names layer, tensor, expected, got)."""


class TensorSpec(NamedTuple):
    """Allowed dtypes and allowed shapes (each a tuple of ints; ``()`` = scalar)."""

    dtypes: tuple[torch.dtype, ...]
    shapes: tuple[tuple[int, ...], ...]


def expected_tensors(scheme: LayerScheme, out_features: int, in_features: int) -> dict[str, TensorSpec]:
    """Required tensors of one layer: suffix -> TensorSpec(allowed dtypes, allowed shapes)."""
    o, i = out_features, in_features
    if scheme.is_fp8:
        specs = {
            "weight": TensorSpec((torch.float8_e4m3fn,), ((o, i),)),
            "weight_scale": TensorSpec(_F32, ((o,),) if scheme.per_channel_weight_scale else ((),)),
        }
    elif scheme.is_nvfp4:
        if i % scheme.group_size != 0:
            raise ModelOptTensorError(
                f"{scheme.algo}: in_features={i} is not a multiple of group_size={scheme.group_size}"
            )
        specs = {
            "weight": TensorSpec((torch.uint8,), ((o, i // 2),)),
            "weight_scale": TensorSpec((torch.float8_e4m3fn,), ((o, i // scheme.group_size),)),
            "weight_scale_2": TensorSpec(_F32, ((),)),
        }
    else:  # W8A8_SQ_PER_CHANNEL
        specs = {
            "weight": TensorSpec((torch.int8,), ((o, i),)),
            "weight_scale": TensorSpec(_F32, ((o,),)),
        }
    if scheme.has_input_scale:
        specs["input_scale"] = TensorSpec(_F32, ((),))
    return specs


def optional_tensors(scheme: LayerScheme, out_features: int, in_features: int) -> dict[str, TensorSpec]:
    """Tensors a layer may carry besides the required ones: bias, SmoothQuant pre_quant_scale."""
    specs = {"bias": TensorSpec(_HALF_OR_F32, ((out_features,),))}
    if scheme.may_have_pre_quant_scale:
        specs["pre_quant_scale"] = TensorSpec(_HALF_OR_F32, ((in_features,),))
    return specs


def _fmt_spec(spec: TensorSpec) -> str:
    dt = "/".join(str(d).replace("torch.", "") for d in spec.dtypes)
    sh = " or ".join(str(tuple(s)) for s in spec.shapes)
    return f"dtype {dt}, shape {sh}"


def _check_values(layer: str, suffix: str, t: torch.Tensor) -> None:
    where = f"layer {layer!r}: tensor {suffix!r}"
    if t.dtype == torch.float8_e4m3fn:
        raw = t.view(torch.uint8)
        n_nan = int(((raw & 0x7F) == 0x7F).sum())
        if n_nan:
            raise ModelOptTensorError(
                f"{where}: {n_nan} NaN E4M3 byte(s) (0x7F/0xFF) in block scales; clamp them with "
                f"clamp_nan_e4m3_scales (the loader does unless QUANTOMNI_SKIP_NVFP4_NAN_CLAMP=1)"
            )
        vals = t.float()
    else:
        vals = t.float()
        if not torch.isfinite(vals).all():
            n_bad = int((~torch.isfinite(vals)).sum())
            raise ModelOptTensorError(f"{where}: expected finite values, got {n_bad} NaN/Inf")
    if suffix != "bias" and not (vals > 0).all():
        bad = vals[vals <= 0]
        raise ModelOptTensorError(
            f"{where}: expected scales > 0, got {bad.numel()} non-positive value(s) "
            f"(e.g. {float(bad.flatten()[0])})"
        )


def validate_layer_tensors(
    layer_name: str,
    scheme: LayerScheme,
    tensors: dict[str, torch.Tensor],
    out_features: int,
    in_features: int,
) -> None:
    """Raise ModelOptTensorError unless ``tensors`` (suffix -> tensor) match ``scheme``'s layout."""
    required = expected_tensors(scheme, out_features, in_features)
    optional = optional_tensors(scheme, out_features, in_features)
    for suffix in tensors:
        if suffix not in required and suffix not in optional:
            allowed = ", ".join(list(required) + list(optional))
            raise ModelOptTensorError(
                f"layer {layer_name!r} ({scheme.algo}): unexpected tensor {suffix!r}; "
                f"this layout has: {allowed}"
            )
    for suffix, spec in {**required, **optional}.items():
        t = tensors.get(suffix)
        if t is None:
            if suffix in required:
                raise ModelOptTensorError(
                    f"layer {layer_name!r} ({scheme.algo}): missing tensor {suffix!r} "
                    f"(expected {_fmt_spec(spec)})"
                )
            continue
        if t.dtype not in spec.dtypes or tuple(t.shape) not in spec.shapes:
            raise ModelOptTensorError(
                f"layer {layer_name!r} ({scheme.algo}): tensor {suffix!r}: expected "
                f"{_fmt_spec(spec)}; got dtype {str(t.dtype).replace('torch.', '')}, "
                f"shape {tuple(t.shape)}"
            )
        if suffix != "weight":
            _check_values(layer_name, suffix, t)


def _shard_schemes(layer_names, scheme) -> list:
    if scheme is None or not isinstance(scheme, Sequence):
        return [scheme] * len(layer_names)
    if len(scheme) != len(layer_names):
        raise ValueError(f"{len(layer_names)} layer names but {len(scheme)} schemes")
    return list(scheme)


def unify_fused_shards(
    layer_names: Sequence[str],
    shard_tensors: Sequence[dict[str, torch.Tensor]],
    scheme: LayerScheme | None | Sequence[LayerScheme | None],
    fp8_mode: str = "requantize",
) -> list[dict[str, torch.Tensor]]:
    """Give shards that a model fuses (q/k/v) shared scalar scales, preserving their values.

    layer_names: one name per shard (for messages).  shard_tensors: suffix -> tensor per shard.
    scheme: the shared scheme, or one scheme per shard (all must agree, else an error naming
    the layers). Returns new dicts; concatenating ``weight`` / per-row scales along dim 0 then
    gives the fused layer (see ``fuse_shards``).

    Math (s_i: shard scales, s = max_i s_i, so every factor s_i / s <= 1 and nothing overflows):
    * FP8 per-tensor, ``fp8_mode="requantize"`` (for kernels that take one weight scale):
      w_i' = e4m3(float(w_i) * s_i / s), weight_scale = s. The requantization adds at most half
      an E4M3 step: |dW| <= 2^-4 |W| + 2^-10 s per element (measured rel L2 change ~0.03 on
      the real tiny-Flux export, as large as the FP8 error itself).
      ``fp8_mode="expand_rows"`` (exact, for kernels with per-row weight scales): weights
      untouched, weight_scale_i becomes s_i repeated to [out_i] float32.
    * NVFP4: weight_scale_2 = s; block scales b_i' = e4m3(float(b_i) * s_i / s) (clamped to
      [2^-9, 448]); E2M1 codes unchanged. Each block's effective scale moves by at most half an
      E4M3 step (2^-4 relative) unless it underflows below 2^-9.
    * input_scale (FP8, NVFP4, INT8): the max, i.e. the widest calibrated range of the shards.
    * FP8 per-channel and INT8 weight scales are per row already: nothing to change.
      INT8 SmoothQuant ``pre_quant_scale`` must be identical across shards (it scales the shared
      input), else an error.
    """
    if len(layer_names) != len(shard_tensors) or not layer_names:
        raise ValueError(
            f"unify_fused_shards: {len(layer_names)} layer names for {len(shard_tensors)} shards"
        )
    schemes = _shard_schemes(layer_names, scheme)
    if len(set(schemes)) > 1:
        desc = ", ".join(
            f"{n}={'BF16' if s is None else s.algo}" for n, s in zip(layer_names, schemes)
        )
        raise ModelOptTensorError(f"fused layers must share one quantization algorithm; got {desc}")
    if fp8_mode not in ("requantize", "expand_rows"):
        raise ValueError(f"fp8_mode={fp8_mode!r}; allowed: 'requantize', 'expand_rows'")
    sch = schemes[0]
    shards = [dict(t) for t in shard_tensors]
    if sch is None:
        return shards
    for name, t in zip(layer_names, shards):
        w = t.get("weight")
        if w is None or w.dtype != sch.weight_dtype:
            got = "missing" if w is None else str(w.dtype)
            raise ModelOptTensorError(
                f"fused shard {name!r}: {sch.algo} weight must be {sch.weight_dtype}, got {got}"
            )
    if sch.has_input_scale:
        missing = [n for n, t in zip(layer_names, shards) if "input_scale" not in t]
        if missing:
            raise ModelOptTensorError(f"fused shards {missing}: missing tensor 'input_scale'")
        shared_in = torch.stack([t["input_scale"].float().reshape(()) for t in shards]).amax()
        for t in shards:
            t["input_scale"] = shared_in.clone()
    if sch.algo == "FP8" and fp8_mode == "expand_rows":
        for t in shards:
            rows = t["weight"].shape[0]
            t["weight_scale"] = t["weight_scale"].float().reshape(()).expand(rows).contiguous()
    elif sch.algo == "FP8":
        scales = [t["weight_scale"].float().reshape(()) for t in shards]
        s = torch.stack(scales).amax()
        for t, s_i in zip(shards, scales):
            if not torch.equal(s_i, s):
                t["weight"] = (t["weight"].float() * (s_i / s)).to(torch.float8_e4m3fn)
            t["weight_scale"] = s.clone()
    elif sch.is_nvfp4:
        globals_ = [t["weight_scale_2"].float().reshape(()) for t in shards]
        s = torch.stack(globals_).amax()
        for t, s_i in zip(shards, globals_):
            if not torch.equal(s_i, s):
                b = t["weight_scale"].float() * (s_i / s)
                t["weight_scale"] = b.clamp(_E4M3_MIN_SCALE, _E4M3_MAX).to(torch.float8_e4m3fn)
            t["weight_scale_2"] = s.clone()
    elif sch.is_int8:
        pqs = [t.get("pre_quant_scale") for t in shards]
        if any(p is not None for p in pqs):
            ref = pqs[0]
            if any(p is None or ref is None or not torch.equal(p, ref) for p in pqs):
                raise ModelOptTensorError(
                    f"fused shards {list(layer_names)}: SmoothQuant pre_quant_scale differs "
                    f"between shards; they cannot share one input"
                )
    return shards


def fuse_shards(
    layer_names: Sequence[str],
    shard_tensors: Sequence[dict[str, torch.Tensor]],
    scheme: LayerScheme | None | Sequence[LayerScheme | None],
    fp8_mode: str = "requantize",
) -> dict[str, torch.Tensor]:
    """Unify then concatenate shards into one fused layer (rows in ``layer_names`` order)."""
    shards = unify_fused_shards(layer_names, shard_tensors, scheme, fp8_mode)
    fused: dict[str, torch.Tensor] = {}
    for key in dict.fromkeys(k for t in shards for k in t):
        parts = [t.get(key) for t in shards]
        if key == "bias" and any(p is None for p in parts):
            ref = next(p for p in parts if p is not None)
            parts = [
                p if p is not None else torch.zeros(t["weight"].shape[0], dtype=ref.dtype)
                for p, t in zip(parts, shards)
            ]
        if any(p is None for p in parts):
            raise ModelOptTensorError(f"fused shards {list(layer_names)}: {key!r} missing in some")
        if parts[0].dim() == 0 or key == "pre_quant_scale":
            fused[key] = parts[0]
        else:
            fused[key] = torch.cat(parts, dim=0)
    return fused


MODELOPT_TENSOR_SUFFIXES = (
    "weight", "weight_scale", "weight_scale_2", "input_scale", "pre_quant_scale", "bias",
)


def group_layer_tensors(keys) -> dict[str, dict[str, str]]:
    """Group checkpoint keys by layer: ``{layer: {suffix: full key}}``.

    keys: iterable of state-dict keys. Only the suffixes in MODELOPT_TENSOR_SUFFIXES are
    grouped (other keys, e.g. ``attn.k_scale``, are left out); non-Linear modules with a
    ``weight`` (norms, embeddings) appear too — the caller keeps the Linear ones.
    """
    groups: dict[str, dict[str, str]] = {}
    for key in keys:
        layer, _, suffix = key.rpartition(".")
        if layer and suffix in MODELOPT_TENSOR_SUFFIXES:
            groups.setdefault(layer, {})[suffix] = key
    return groups


def clamp_nan_block_scales(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """Replace NaN bytes in every E4M3 ``*.weight_scale`` of ``state`` (in the dict, not in place).

    Why: some ModelOpt versions wrote E4M3 NaN (0x7F/0xFF) into NVFP4 block scales; they become
    0x7E (448, the E4M3 max), as ``kernels.nvfp4_ref.clamp_nan_e4m3_scales`` does. Returns ``{key: bytes replaced}`` for the keys that had any, so
    the loader can log one warning with the count and the layers.
    """
    fixed: dict[str, int] = {}
    for key, t in list(state.items()):
        if key.endswith(".weight_scale") and t.dtype == torch.float8_e4m3fn:
            raw = t.view(torch.uint8)
            bad = (raw & 0x7F) == 0x7F  # 0x7F and 0xFF: the E4M3FN NaNs
            n = int(bad.sum())
            if n:
                state[key] = torch.where(bad, torch.full_like(raw, 0x7E), raw).view(t.dtype)
                fixed[key] = n
    return fixed
