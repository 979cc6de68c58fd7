"""``quantomni quantize``: write a pipeline whose denoiser is a ModelOpt-layout export.

Why: so users without NVIDIA ModelOpt (or without a GPU) can produce checkpoints that this
engine, and other ModelOpt loaders, read as pre-quantized. The denoiser directory follows what
``modelopt.torch.export.export_hf_checkpoint`` writes for diffusers models (0.47): config.json
with a ``quantization_config`` (quant_method, quant_algo, producer, config_groups, ignore,
quantized_layers for MIXED_PRECISION) and one safetensors file with the same tensor names,
dtypes and shapes (see ``formats/modelopt_tensors``). Other components are copied as they are.

Math, as ModelOpt's export does it:
* FP8: weight_scale = amax(|W|) / 448, weight = e4m3(W / weight_scale); per channel for
  FP8_PER_CHANNEL_PER_TOKEN; input_scale = calibrated input amax / 448.
* NVFP4: ``nvfp4_ref.nvfp4_quantize`` with weight_scale_2 = amax(|W|) / (6 * 448);
  input_scale = calibrated input amax / (6 * 448) (none for W4A16_NVFP4).
* q/k/v (and add_q/k/v) projections of one attention share their input amax, and for NVFP4
  their weight amax (one weight_scale_2), as ModelOpt 0.47's diffusers export does so that
  runtimes which fuse the projections can; its FP8 export keeps per-projection weight scales.
Input amax comes from calibration through the real pipeline: forward pre-hooks on the
denoiser's Linear layers record max |x| over every call while the prompts are generated.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path

import torch

from quantomni.config.base import DENOISER_COMPONENTS
from quantomni.errors import CheckpointError
from quantomni.formats.modelopt import read_quantization_config
from quantomni.formats.safetensors_io import find_weight_files, iter_tensors
from quantomni.kernels.nvfp4_ref import E2M1_MAX, E4M3_MAX, nvfp4_quantize
from quantomni.kernels.quant_ops import FP8_DTYPE, FP8_MAX
from quantomni.pipeline.quant_policy import ALGOS, load_policy, resolve_layer_algos

logger = logging.getLogger("quantomni")

DEFAULT_CALIB_PROMPTS = (
    "a red ceramic teapot on a wooden table",
    "a photo of a mountain lake at sunrise, mist over the water",
    "portrait of an old fisherman, detailed skin, soft light",
    "a city street at night with neon signs in the rain",
)
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
INDEX_FILE = WEIGHTS_FILE + ".index.json"
#: the quantized denoiser is written in shards of at most this many bytes (diffusers' sharded layout),
#: so the export holds one shard in memory, not the whole output
MAX_SHARD_BYTES = 5 << 30
_QKV_SETS = (("to_q", "to_k", "to_v"), ("add_q_proj", "add_k_proj", "add_v_proj"))
_NEEDS_INPUT_SCALE = ("FP8", "NVFP4")


@dataclasses.dataclass
class ExportReport:
    output: Path
    component: str
    quant_algo: str
    layer_algos: dict[str, str | None]
    calib_prompts: int
    calib_steps: int
    checkpoint_bytes: int
    time_s: float

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for a in self.layer_algos.values():
            out[a or "BF16"] = out.get(a or "BF16", 0) + 1
        return out


def read_prompts(path) -> list[str]:
    """One prompt per non-empty line."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--calib-prompts: {p} does not exist")
    prompts = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"--calib-prompts: {p} holds no prompt (one per line)")
    return prompts


def qkv_groups(names) -> list[list[str]]:
    """Sibling q/k/v projections (``<attn>.to_q/to_k/to_v``, ``<attn>.add_q/k/v_proj``) present in names."""
    present = set(names)
    groups = []
    for parent in sorted({n.rpartition(".")[0] for n in present}):
        for leafs in _QKV_SETS:
            members = [f"{parent}.{leaf}" if parent else leaf for leaf in leafs]
            if all(m in present for m in members):
                groups.append(members)
    return groups


def calibrate_input_amax(omni, layers, prompts, steps, height=None, width=None, progress=True) -> dict[str, torch.Tensor]:
    """max |input| of each named Linear of the denoiser over full pipeline runs of ``prompts``."""
    module = getattr(omni.pipe, omni.denoiser_component)
    amax: dict[str, torch.Tensor] = {}
    handles = []

    def hook_for(name):
        def hook(mod, args):
            x = args[0].detach()
            m = x.abs().amax().float().cpu()
            amax[name] = m if name not in amax else torch.maximum(amax[name], m)

        return hook

    for name in layers:
        handles.append(module.get_submodule(name).register_forward_pre_hook(hook_for(name)))
    from tqdm.auto import tqdm

    try:
        for i, prompt in enumerate(tqdm(prompts, desc="Calibrating", unit="prompt", disable=not progress, leave=False)):
            omni.generate(prompt, num_inference_steps=steps, seed=i, height=height, width=width)
    finally:
        for h in handles:
            h.remove()
    unseen = [n for n in layers if n not in amax]
    if unseen:
        raise ValueError(f"calibration never reached layer(s) {unseen[:8]}; keep them BF16 with a policy")
    bad = [n for n, v in amax.items() if not torch.isfinite(v) or v <= 0]
    if bad:
        raise ValueError(f"calibration saw non-finite or all-zero inputs for layer(s) {bad[:8]}")
    return amax


def _quantize_layer(algo, w, weight_amax, input_amax) -> dict[str, torch.Tensor]:
    """ModelOpt tensors of one layer (without bias). w: [N, K] float; amax: f32 scalars or None."""
    wf = w.float()
    if not torch.isfinite(wf).all():
        raise ValueError("weight has NaN/Inf")
    out: dict[str, torch.Tensor] = {}
    if algo == "FP8":
        scale = (weight_amax / FP8_MAX).clamp_min(1e-12).reshape(()).float()
        # Divide in the stored dtype (a 0-dim float32 scale does not promote a bf16 weight), as
        # ModelOpt does: the bytes then match its export exactly.
        out["weight"] = (w / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
        out["weight_scale"] = scale.float()
    elif algo == "FP8_PER_CHANNEL_PER_TOKEN":
        scale = (wf.abs().amax(dim=1) / FP8_MAX).clamp_min(1e-12)
        out["weight"] = (wf / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
        out["weight_scale"] = scale.float()
    elif algo in ("NVFP4", "W4A16_NVFP4"):
        packed, block_scale, gs = nvfp4_quantize(wf, weight_amax / (E2M1_MAX * E4M3_MAX))
        out.update(weight=packed, weight_scale=block_scale, weight_scale_2=gs.float().reshape(()))
    else:
        raise ValueError(f"cannot export quant_algo {algo!r}")
    if algo in _NEEDS_INPUT_SCALE:
        div = FP8_MAX if algo == "FP8" else E2M1_MAX * E4M3_MAX
        out["input_scale"] = (input_amax / div).float().reshape(())
    return out


def modelopt_quantization_config(quant_algo: str, layer_algos: dict[str, str | None]) -> dict:
    """``quantization_config`` as ModelOpt's diffusers export writes it."""
    from quantomni import __version__

    def group(algo, targets):
        fp4 = algo in ("NVFP4", "W4A16_NVFP4")
        spec = {"dynamic": False, "num_bits": 4 if fp4 else 8, "type": "float", **({"group_size": 16} if fp4 else {})}
        g = {"weights": dict(spec), "targets": targets}
        if algo in _NEEDS_INPUT_SCALE:
            g = {"input_activations": dict(spec), **g}
        return g

    ignore = sorted(n for n, a in layer_algos.items() if a is None)
    cfg: dict = {}
    if quant_algo == "MIXED_PRECISION":
        algos = sorted({a for a in layer_algos.values() if a}, key=lambda a: a != "NVFP4")
        cfg["config_groups"] = {
            f"group_{i}": group(a, sorted(n for n, x in layer_algos.items() if x == a)) for i, a in enumerate(algos)
        }
        cfg["quantized_layers"] = {
            n: ({"quant_algo": a, "group_size": 16} if a == "NVFP4" else {"quant_algo": a})
            for n, a in layer_algos.items() if a
        }
    elif quant_algo != "FP8_PER_CHANNEL_PER_TOKEN":
        cfg["config_groups"] = {"group_0": group(quant_algo, ["Linear"])}
    cfg.update(ignore=ignore, quant_algo=quant_algo, producer={"name": "quantomni", "version": __version__},
               quant_method="modelopt")
    return cfg


def quantize_pipeline(
    model, algo: str, output, policy=None, calib_prompts=None, calib_steps: int = 4,
    height: int | None = None, width: int | None = None, device=None, dtype="bfloat16", progress: bool = True,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> ExportReport:
    """Calibrate and quantize ``model``'s denoiser into a ModelOpt-layout pipeline at ``output``.

    The denoiser's weights are streamed: each quantized tensor goes into the current shard, and a
    shard is written once it reaches ``max_shard_bytes`` (one file if everything fits)."""
    from tqdm.auto import tqdm

    from quantomni.pipeline.omni import Omni
    from quantomni.pipeline.model_index import read_model_index

    t0 = time.perf_counter()
    src, out = Path(model), Path(output)
    if not isinstance(calib_steps, int) or calib_steps < 1:
        raise ValueError(f"--calib-steps: expected a positive integer, got {calib_steps!r}")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--output {out} exists and is not empty; choose a new directory")
    if out.resolve() == src.resolve():
        raise ValueError("--output must differ from --model")
    if algo not in ALGOS:
        raise ValueError(f"--algo {algo!r}: allowed: {', '.join(ALGOS)}")
    if (algo == "mixed") != (policy is not None):
        resolve_layer_algos([], algo, None, policy)  # raises the matching --policy error
    if policy is not None:
        policy = load_policy(policy)
    index = read_model_index(src)
    comp = next((c for c in DENOISER_COMPONENTS if c in index.components), None)
    if comp is None:
        raise ValueError(f"{src}: no denoiser component ({list(DENOISER_COMPONENTS)}) to quantize")
    if read_quantization_config(src / comp) is not None:
        raise ValueError(f"{src / comp} already carries a quantization config; quantize a BF16/FP16/FP32 checkpoint")
    weight_files = find_weight_files(src / comp)  # fail early on a checkpoint without weights

    omni = Omni(src, device=device, dtype=dtype, progress=progress)
    module = getattr(omni.pipe, comp)
    linears = {n: m for n, m in module.named_modules() if isinstance(m, torch.nn.Linear)}
    layer_algos = resolve_layer_algos(list(linears), algo, omni.adapter, policy)
    quant_names = [n for n, a in layer_algos.items() if a]
    if not quant_names:
        raise ValueError("no layer would be quantized")
    for n in quant_names:
        if layer_algos[n] in ("NVFP4", "W4A16_NVFP4") and linears[n].in_features % 32:
            raise ValueError(f"layer {n!r}: in_features={linears[n].in_features} is not a multiple of 32, "
                             f"which NVFP4 needs; keep it BF16 or FP8 with --algo mixed --policy")
    calibrated = [n for n in quant_names if layer_algos[n] in _NEEDS_INPUT_SCALE]
    prompts = list(calib_prompts) if calib_prompts else list(DEFAULT_CALIB_PROMPTS)
    input_amax = calibrate_input_amax(omni, calibrated, prompts, calib_steps, height, width, progress) if calibrated else {}
    omni.close()
    del omni, module

    weight_amax: dict[str, torch.Tensor] = {}
    shared: dict[str, list[str]] = {}
    for g in qkv_groups(quant_names):
        if len({layer_algos[n] for n in g}) == 1:
            for n in g:
                shared[n] = g

    # First pass over the weights: per-layer amax (q/k/v groups take the max of their members).
    for name, t in iter_tensors(weight_files):
        layer, _, suffix = name.rpartition(".")
        if suffix == "weight" and layer in layer_algos and layer_algos[layer]:
            weight_amax[layer] = t.float().abs().amax()
    for n, g in shared.items():
        if layer_algos[n] in ("NVFP4", "W4A16_NVFP4"):
            weight_amax[n] = torch.stack([weight_amax[m] for m in g]).amax()
        if n in input_amax:
            input_amax[n] = torch.stack([input_amax[m] for m in g]).amax()

    # Second pass: write every tensor, quantizing the chosen layers' weights, shard by shard.
    writer = _ShardWriter(src, out, comp, algo, layer_algos, max_shard_bytes)
    bar = tqdm(total=len(quant_names), desc=f"Quantizing {comp} ({algo})", unit="layer", disable=not progress, leave=False)
    for name, t in iter_tensors(weight_files):
        layer, _, suffix = name.rpartition(".")
        a = layer_algos.get(layer)
        if a and suffix == "weight":
            try:
                q = _quantize_layer(a, t, weight_amax[layer], input_amax.get(layer))
            except ValueError as exc:
                raise CheckpointError(f"layer {layer!r} ({a}): {exc}") from exc
            for k, v in q.items():
                writer.add(f"{layer}.{k}", v.contiguous())
            bar.update(1)
        else:
            writer.add(name, t.contiguous())
        del t
    bar.close()
    checkpoint_bytes = writer.finish()
    report = ExportReport(
        output=out, component=comp, quant_algo=ALGOS[algo], layer_algos=layer_algos,
        calib_prompts=len(prompts) if calibrated else 0, calib_steps=calib_steps if calibrated else 0,
        checkpoint_bytes=checkpoint_bytes, time_s=time.perf_counter() - t0,
    )
    logger.info("wrote %s: %s %s in %.1fs", out, comp, report.counts(), report.time_s)
    return report


class _ShardWriter:
    """Copies the pipeline around the denoiser, then writes the denoiser's tensors in shards."""

    def __init__(self, src: Path, out: Path, comp: str, algo: str, layer_algos, max_shard_bytes: int):
        if not isinstance(max_shard_bytes, int) or max_shard_bytes < 1:
            raise ValueError(f"max_shard_bytes: expected a positive integer, got {max_shard_bytes!r}")
        self.cdir = _write_pipeline_files(src, out, comp, algo, layer_algos)
        self.max = max_shard_bytes
        self.current: dict[str, torch.Tensor] = {}
        self.current_bytes = 0
        self.shards: list[tuple[str, list[str]]] = []  # (temporary file name, tensor names)
        self.total = 0

    def add(self, name: str, t: torch.Tensor) -> None:
        n = t.numel() * t.element_size()
        if self.current and self.current_bytes + n > self.max:
            self._flush()
        self.current[name] = t
        self.current_bytes += n

    def _flush(self) -> None:
        from safetensors.torch import save_file

        tmp = f"shard-{len(self.shards):05d}.tmp"
        save_file(self.current, str(self.cdir / tmp), metadata={"format": "pt"})
        self.shards.append((tmp, list(self.current)))
        self.total += (self.cdir / tmp).stat().st_size
        self.current, self.current_bytes = {}, 0

    def finish(self) -> int:
        """Write the last shard; name the files (one: ``WEIGHTS_FILE``; more: diffusers' numbered
        shards + ``INDEX_FILE``). Returns the bytes written."""
        if self.current or not self.shards:
            self._flush()
        if len(self.shards) == 1:
            (self.cdir / self.shards[0][0]).rename(self.cdir / WEIGHTS_FILE)
            return self.total
        stem, ext = WEIGHTS_FILE.rsplit(".", 1)
        weight_map = {}
        for i, (tmp, names) in enumerate(self.shards):
            final = f"{stem}-{i + 1:05d}-of-{len(self.shards):05d}.{ext}"
            (self.cdir / tmp).rename(self.cdir / final)
            weight_map.update({n: final for n in names})
        index = {"metadata": {"total_size": self.total}, "weight_map": weight_map}
        (self.cdir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        return self.total


def _write_pipeline_files(src: Path, out: Path, comp: str, algo: str, layer_algos) -> Path:
    """Everything but the denoiser's weights: other components copied, the denoiser's config with
    its ``quantization_config``. Returns the denoiser's output directory."""
    out.mkdir(parents=True, exist_ok=True)
    for child in src.iterdir():
        if child.name == comp:
            continue
        if child.is_dir():
            shutil.copytree(child, out / child.name)
        else:
            shutil.copy2(child, out / child.name)
    cdir = out / comp
    cdir.mkdir()
    for child in (src / comp).iterdir():  # configs and anything else except the weights
        if child.is_file() and not child.name.endswith((".safetensors", ".safetensors.index.json", ".bin", ".pt")):
            shutil.copy2(child, cdir / child.name)
    config = json.loads((src / comp / "config.json").read_text())
    config["quantization_config"] = modelopt_quantization_config(ALGOS[algo], layer_algos)
    (cdir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return cdir
