"""Load a Qwen3-Omni checkpoint whose thinker language model is pre-quantized by NVIDIA ModelOpt.

What ModelOpt 0.47 writes for this model (checked against a real export in the tests):
  * dense Linear ``thinker.model.language_model.layers.N.self_attn.q_proj``: ``weight`` (uint8
    [N, K/2] NVFP4 or float8_e4m3fn [N, K] FP8), ``weight_scale``, ``weight_scale_2`` (NVFP4),
    ``input_scale`` (static activation scale; absent for weight-only W4A16);
  * fused experts are split per expert: ``….mlp.experts.{e}.{gate,up,down}_proj.{same suffixes}``;
  * the router ``….mlp.gate.weight`` and everything excluded stay BF16 under their own names.
The config is the root ``quantization_config`` / ``hf_quant_config.json`` or, as published
Qwen3-Omni checkpoints do, ``thinker_config.text_config.quantization_config``.

Only the thinker's language model may hold quantized tensors: a quantized tensor in the audio or
vision encoder, the talker or code2wav is an error. Math: ``kernels.nvfp4_ref`` (NVFP4, W4A4
emulated with the static input scale) and ``kernels.fp8_torch`` (FP8, static activation scale).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from quantomni.errors import CheckpointError, QuantizationError
from quantomni.formats.modelopt import ModelOptConfig, clamp_nan_block_scales
from quantomni.formats.safetensors_io import find_weight_files, list_tensor_names
from quantomni.kernels.fp8_torch import fp8_linear_reference
from quantomni.kernels.nvfp4_ref import nvfp4_linear_reference
from quantomni.layers.moe import ExpertWeights, QuantMoEExperts
from quantomni.pipeline.plan import ComponentPlan, LayerRecord

TEXT_PREFIX = "thinker.model.language_model."
QUANT_SUFFIXES = ("weight_scale", "weight_scale_2", "input_scale", "pre_quant_scale")
_FMT = {"NVFP4": "nvfp4", "W4A16_NVFP4": "nvfp4", "FP8": "fp8", "FP8_PER_CHANNEL_PER_TOKEN": "fp8"}


class ModelOptLinear(nn.Module):
    """A pre-quantized Linear (NVFP4 or FP8 from ModelOpt), reference math on any device."""

    is_quantized_module = True

    def __init__(self, fmt: str, tensors: dict[str, torch.Tensor], bias: torch.Tensor | None, name: str):
        super().__init__()
        self.fmt = fmt
        self.prefix = name
        for key in ("weight", "weight_scale", "weight_scale_2", "input_scale"):
            self.register_buffer(key, tensors.get(key))
        self.register_buffer("bias", bias)
        self.out_features = self.weight.shape[0]
        self.in_features = self.weight.shape[1] * (2 if fmt == "nvfp4" else 1)

    def forward(self, x):
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if self.fmt == "nvfp4":
            out = nvfp4_linear_reference(x2, self.weight, self.weight_scale, self.weight_scale_2, self.input_scale, self.bias)
        else:
            mode = "static" if self.input_scale is not None else "token"
            out = fp8_linear_reference(x2, self.weight, self.weight_scale, mode, self.input_scale, self.bias)
        return out.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, fmt={self.fmt}, w4a4={self.input_scale is not None}"


class LazyTensors:
    """The checkpoint as a mapping name -> tensor, read from the shards on demand.

    Why: the real thinker is tens of GB; reading a tensor only when its layer is built keeps host
    memory at about one MoE layer. ``__setitem__`` holds synthesised/fixed tensors (re-fused split
    experts, clamped scales); ``owner(prefix)`` gives one module's tensors by suffix via an index.
    """

    def __init__(self, names: dict[str, Path], stored: dict[str, str] | None = None):
        """names: model key -> shard; stored: model key -> key in the file (when they differ)."""
        from safetensors import safe_open

        self._where = dict(names)
        self._stored = stored or {}
        self._over: dict[str, torch.Tensor] = {}
        self._handles = {p: safe_open(str(p), framework="pt", device="cpu") for p in set(names.values())}
        self._by_owner: dict[str, dict[str, str]] = {}
        for k in names:
            owner, _, leaf = k.rpartition(".")
            self._by_owner.setdefault(owner, {})[leaf] = k

    def __contains__(self, key) -> bool:
        return key in self._over or key in self._where

    def __getitem__(self, key) -> torch.Tensor:
        if key in self._over:
            return self._over[key]
        try:
            return self._handles[self._where[key]].get_tensor(self._stored.get(key, key))
        except KeyError:
            raise
        except Exception as exc:
            raise CheckpointError(f"cannot read tensor {key!r} from {self._where[key]}: {exc}") from exc

    def get(self, key, default=None):
        return self[key] if key in self else default

    def __setitem__(self, key, value) -> None:
        self._over[key] = value

    def __delitem__(self, key) -> None:
        self._over.pop(key, None)
        self._where.pop(key, None)

    def keys(self) -> list[str]:
        return list(dict.fromkeys([*self._where, *self._over]))

    def owner(self, prefix: str) -> dict[str, torch.Tensor]:
        return {leaf: self[k] for leaf, k in self._by_owner.get(prefix, {}).items() if k in self}


# Hub checkpoints (and ModelOpt exports made with transformers 4.x) use the pre-5.0 layout:
# thinker.model.layers.* (text), thinker.audio_tower.*, thinker.visual.*. transformers 5 nests them
# under thinker.model.{language_model,audio_tower,visual}; its from_pretrained renames on load, and so
# does this loader (tensor names and the ModelOpt config's layer names).
_TO_MODEL = ((re.compile(r"^thinker\.audio_tower\."), "thinker.model.audio_tower."),
             (re.compile(r"^thinker\.visual\."), "thinker.model.visual."),
             (re.compile(r"^thinker\.model\.(?!language_model\.|visual\.|audio_tower\.)"), "thinker.model.language_model."))
_TO_LEGACY = ((re.compile(r"^thinker\.model\.language_model\."), "thinker.model."),
              (re.compile(r"^thinker\.model\.audio_tower\."), "thinker.audio_tower."),
              (re.compile(r"^thinker\.model\.visual\."), "thinker.visual."))


def _rename(key: str, rules) -> str:
    for rx, repl in rules:
        if rx.match(key):
            return rx.sub(repl, key, count=1)
    return key


def is_legacy_layout(keys) -> bool:
    """True when the checkpoint uses the transformers 4.x thinker names."""
    return any(k.startswith(("thinker.model.layers.", "thinker.audio_tower.", "thinker.visual.")) for k in keys)


def model_names(names: dict[str, Path]) -> tuple[dict[str, Path], dict[str, str], bool]:
    """(model key -> shard, model key -> stored key, legacy?) for a checkpoint's tensor names."""
    if not is_legacy_layout(names):
        return dict(names), {}, False
    out, stored = {}, {}
    for k, path in names.items():
        mk = _rename(k, _TO_MODEL)
        if mk in out:
            raise CheckpointError(f"checkpoint names {stored.get(mk, mk)!r} and {k!r} both map to {mk!r}")
        out[mk], stored[mk] = path, k
    return out, stored, True


def _stage_of(name: str) -> str:
    return name.split(".", 1)[0]


def check_quantized_scope(names) -> None:
    """Quantized tensors may only live in the thinker's language model."""
    for n in names:
        leaf = n.rsplit(".", 1)[-1]
        if leaf in QUANT_SUFFIXES and not n.startswith(TEXT_PREFIX):
            raise QuantizationError(
                f"checkpoint tensor {n!r} is quantized, but only the thinker language model may be "
                f"({TEXT_PREFIX}*); the {_stage_of(n)} stage and the audio/vision encoders must stay BF16"
            )


def load_prequantized(model_dir: Path, mo: ModelOptConfig, dtype, device, moe_backend: str, backends=None):
    """Build the model on meta, swap the thinker's quantized layers, load every tensor.
    Returns (model, ComponentPlan of the thinker)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, Qwen3OmniMoeForConditionalGeneration

    from quantomni.multistage.moe_quant import fused_experts

    model_dir = Path(model_dir)
    files = find_weight_files(model_dir)
    names, stored, legacy = model_names(list_tensor_names(files))
    check_quantized_scope(names)

    def scheme_for(model_name: str):
        return mo.scheme_for(_rename(model_name, _TO_LEGACY) if legacy else model_name)
    config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    for cfg in (config, config.thinker_config, config.thinker_config.text_config):
        if hasattr(cfg, "quantization_config"):
            delattr(cfg, "quantization_config")  # ours to interpret, not transformers'
    with init_empty_weights(include_buffers=False):
        model = Qwen3OmniMoeForConditionalGeneration(config)
    state = LazyTensors(names, stored)
    scales = {k: state[k] for k in state.keys() if k.endswith(".weight_scale")}
    fixed = clamp_nan_block_scales(scales)  # NaN E4M3 bytes -> 448
    for k in fixed:
        state[k] = scales[k]
    used: set[str] = set()
    records: list[LayerRecord] = []
    text = model.thinker.model.language_model

    for name, experts in list(fused_experts(text)):
        full = TEXT_PREFIX + name
        if f"{full}.0.gate_proj.weight_scale" not in names:  # experts stored BF16 (fused or split)
            records.append(LayerRecord("thinker", name, experts.gate_up_proj.shape[-1], experts.gate_up_proj.shape[-2],
                                       False, None, None, None, "checkpoint: BF16 experts"))
            continue
        q = _load_experts(state, used, full, experts, scheme_for, moe_backend).to(device)
        parent, _, child = name.rpartition(".")
        setattr(text.get_submodule(parent), child, q)
        for proj, ew in (("gate_up_proj", q.gate_up), ("down_proj", q.down)):
            records.append(LayerRecord("thinker", f"{name}.{proj}", ew.in_features, ew.out_features, True,
                                       "modelopt", f"{mo.quant_algo} {ew.fmt} experts x{ew.num_experts} A:{ew.act}",
                                       f"moe-{q.backend_info(device, dtype)[0]}", "quantized: checkpoint"))

    for name, lin in list(text.named_modules()):
        if not isinstance(lin, nn.Linear):
            continue
        full = TEXT_PREFIX + name
        scheme = scheme_for(full)
        stored_quantized = f"{full}.weight_scale" in names
        if scheme is None and stored_quantized:
            raise CheckpointError(f"{full}: stored quantized (it has a weight_scale) but the ModelOpt config keeps it "
                                  f"unquantized (ignore / quantized_layers); the checkpoint and its config disagree")
        if scheme is None or not stored_quantized:
            records.append(LayerRecord("thinker", name, lin.in_features, lin.out_features, False, None, None, None,
                                       "checkpoint: stored as BF16"))
            continue
        fmt = _FMT.get(scheme.algo)
        if fmt is None:
            raise CheckpointError(f"{full}: ModelOpt {scheme.algo} is not supported for the omni thinker (NVFP4/FP8 only)")
        want = torch.uint8 if fmt == "nvfp4" else torch.float8_e4m3fn
        if state[f"{full}.weight"].dtype != want:
            raise CheckpointError(f"{full}: the config says {scheme.algo} (weight {want}) but the stored weight is "
                                  f"{state[f'{full}.weight'].dtype}")
        tensors = {s: state[f"{full}.{s}"] for s in ("weight", "weight_scale", "weight_scale_2", "input_scale")
                   if f"{full}.{s}" in state}
        _validate(full, scheme, {**tensors, **({"bias": state[f"{full}.bias"]} if f"{full}.bias" in state else {})},
                  lin.out_features, lin.in_features)
        used.update(f"{full}.{s}" for s in tensors)
        bias = state.get(f"{full}.bias")
        if bias is not None:
            used.add(f"{full}.bias")
            bias = bias.to(dtype)
        ql = ModelOptLinear(fmt, tensors, bias, full).to(device)
        parent, _, child = name.rpartition(".")
        setattr(text.get_submodule(parent), child, ql)
        records.append(LayerRecord("thinker", name, ql.in_features, ql.out_features, True, "modelopt",
                                   f"{scheme.algo}" + (" W4A4" if fmt == "nvfp4" and "input_scale" in tensors else ""),
                                   "torch-reference", "quantized: checkpoint"))

    _fuse_split_bf16_experts(model, state)
    _assign_plain(model, state, used, dtype, device)
    model.tie_weights()
    still_meta = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p is not None and p.is_meta]
    if still_meta:
        raise CheckpointError(f"{model_dir}: checkpoint lacks {len(still_meta)} tensor(s), e.g. {still_meta[:5]}")
    plan = ComponentPlan("thinker", type(model.thinker).__name__, "qwen3-omni", "modelopt",
                         f"modelopt {mo.quant_algo}" + (f" ({sum(fixed.values())} NaN scale bytes clamped)" if fixed else ""),
                         records)
    if plan.quantized_count == 0:
        raise QuantizationError(f"{model_dir}: ModelOpt config found but no thinker layer is stored quantized")
    return model, plan


def _validate(name, scheme, tensors, out_features, in_features) -> None:
    """Names, dtypes, shapes and scale values of one layer against its ModelOpt layout."""
    from quantomni.formats.modelopt import ModelOptTensorError, validate_layer_tensors

    try:
        validate_layer_tensors(name, scheme, tensors, out_features, in_features)
    except ModelOptTensorError as exc:
        raise CheckpointError(str(exc)) from None


def _fuse_split_bf16_experts(model, state) -> None:
    """ModelOpt writes every fused-experts module split per expert, even unquantized ones (the
    talker's): put ``{e}.gate_proj/up_proj/down_proj.weight`` back into the 3-D parameters."""
    from quantomni.multistage.moe_quant import fused_experts

    for name, experts in fused_experts(model):
        if f"{name}.gate_up_proj" in state or f"{name}.0.gate_proj.weight" not in state:
            continue
        n = experts.gate_up_proj.shape[0]
        keys = [f"{name}.{e}.{p}_proj.weight" for e in range(n) for p in ("gate", "up", "down")]
        missing = [k for k in keys if k not in state]
        if missing:
            raise CheckpointError(f"{name}: split experts incomplete in the checkpoint, missing {missing[:4]}")
        state[f"{name}.gate_up_proj"] = torch.stack(
            [torch.cat([state[f"{name}.{e}.gate_proj.weight"], state[f"{name}.{e}.up_proj.weight"]]) for e in range(n)])
        state[f"{name}.down_proj"] = torch.stack([state[f"{name}.{e}.down_proj.weight"] for e in range(n)])
        for k in keys:
            del state[k]


def _assign_plain(model, state, used, dtype, device) -> None:
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    unexpected = []
    for key in state.keys():
        if key in used:
            continue
        target = params.get(key, buffers.get(key))
        if target is None:
            unexpected.append(key)
            continue
        tensor = state[key]
        if tuple(target.shape) != tuple(tensor.shape):
            raise CheckpointError(f"tensor {key!r}: checkpoint shape {tuple(tensor.shape)}, model expects {tuple(target.shape)}")
        owner, _, leaf = key.rpartition(".")
        mod = model.get_submodule(owner)
        t = tensor.to(dtype) if tensor.is_floating_point() and target.is_floating_point() else tensor
        t = t.to(device)
        if key in params:
            mod._parameters[leaf] = nn.Parameter(t, requires_grad=False)
        else:
            mod._buffers[leaf] = t
    if unexpected:
        raise CheckpointError(f"checkpoint has {len(unexpected)} tensor(s) the model does not: {unexpected[:8]}")


def _load_experts(state, used, full, experts, scheme_for, moe_backend) -> QuantMoEExperts:
    n_exp = experts.gate_up_proj.shape[0]

    hidden, inter = experts.down_proj.shape[1], experts.down_proj.shape[2]

    def take(e, proj):
        prefix = f"{full}.{e}.{proj}"
        # MIXED_PRECISION names the whole experts module in quantized_layers, others per projection
        scheme = scheme_for(prefix) or scheme_for(full)
        if scheme is None or f"{prefix}.weight" not in state:
            raise CheckpointError(f"{prefix}: expected a quantized expert projection in the checkpoint")
        t = state.owner(prefix)
        out_f, in_f = (hidden, inter) if proj == "down_proj" else (inter, hidden)
        _validate(prefix, scheme, t, out_f, in_f)
        used.update(f"{prefix}.{s}" for s in t)
        return _FMT.get(scheme.algo), scheme.algo, t

    gate_up, down = [], []
    fmts = set()
    for e in range(n_exp):
        fg, ag, g = take(e, "gate_proj")
        fu, _, u = take(e, "up_proj")
        fd, ad, d = take(e, "down_proj")
        fmts |= {fg, fu, fd}
        gate_up.append((g, u))
        down.append(d)
    if len(fmts) != 1 or None in fmts:
        raise CheckpointError(f"{full}: experts mix storage formats {sorted(map(str, fmts))}; one format per module is supported")
    fmt = fmts.pop()
    act_static = "nvfp4_static" if fmt == "nvfp4" else "fp8_static"
    gu = _stack(fmt, [_cat_rows(fmt, g, u) for g, u in gate_up], act_static, f"{full}.gate_up")
    dn = _stack(fmt, [_rows(fmt, d) for d in down], act_static, f"{full}.down")
    return QuantMoEExperts(gu, dn, experts.act_fn, moe_backend, full)


def _rows(fmt, t):
    """Per-row (output channel) global scales so gate/up halves may differ."""
    n = t["weight"].shape[0]
    if fmt == "nvfp4":
        return t["weight"], t["weight_scale"], t["weight_scale_2"].float().reshape(()).expand(n), t.get("input_scale")
    ws = t["weight_scale"].float()
    return t["weight"], (ws.expand(n) if ws.dim() == 0 else ws.reshape(n)), None, t.get("input_scale")


def _cat_rows(fmt, g, u):
    rg, ru = _rows(fmt, g), _rows(fmt, u)
    w = torch.cat([rg[0], ru[0]])
    s = torch.cat([rg[1], ru[1]])
    s2 = None if rg[2] is None else torch.cat([rg[2], ru[2]])
    inp = rg[3] if rg[3] is not None else ru[3]  # gate and up read the same input: one scale
    return w, s, s2, inp


def _stack(fmt, per_expert, act_static, name) -> ExpertWeights:
    w = torch.stack([p[0] for p in per_expert])
    s = torch.stack([p[1] for p in per_expert])
    s2 = None if per_expert[0][2] is None else torch.stack([p[2] for p in per_expert])
    has_inp = [p[3] is not None for p in per_expert]
    if any(has_inp) and not all(has_inp):
        raise CheckpointError(f"{name}: some experts have an input_scale and some do not")
    inp = torch.stack([p[3].float().reshape(()) for p in per_expert]) if all(has_inp) else None
    # no static input scale: NVFP4 is weight-only (W4A16); FP8 per-channel-per-token is dynamic per token
    act = act_static if inp is not None else ("fp8_token" if fmt == "fp8" else "none")
    return ExpertWeights(fmt, act, w, s, s2, inp)
