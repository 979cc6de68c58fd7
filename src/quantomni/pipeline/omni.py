"""``Omni``: load a diffusers-format pipeline with its quantization, then generate."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import warnings
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from quantomni.config import PipelineQuantConfig, build_quant_config
from quantomni.config.base import DENOISER_COMPONENTS
from quantomni.errors import GenerationCancelled, QuantizationError
from quantomni.models.registry import adapter_for_class
from quantomni.pipeline.backends import BackendRequest
from quantomni.pipeline.loader import LoadStats, load_component_streaming, module_bytes, quantize_module_in_place
from quantomni.pipeline.model_index import read_model_index
from quantomni.pipeline.plan import ComponentPlan
from quantomni.pipeline.runtime import resolve_device, resolve_dtype

logger = logging.getLogger("quantomni")


@dataclasses.dataclass
class GenerationResult:
    images: list  # PIL images, len(prompts) * num_images, grouped by prompt
    timings: dict[str, float]
    peak_memory_bytes: int | None  # device memory high-water mark (CUDA), None on CPU


def merge_quantization_args(quantization, quantization_config):
    """``quantization`` and ``quantization_config`` both accept any spec; giving two different ones is an error."""
    if quantization is not None and quantization_config is not None:
        q = build_quant_config(quantization)
        c = build_quant_config(quantization_config)
        if q != c:
            method_names = {v.method for v in c.components.values() if v is not None}
            if isinstance(quantization, str) and method_names == {quantization.lower()}:
                return c  # quantization="fp8" + a detailed fp8 config: the config's options win
            raise ValueError(
                f"quantization={quantization!r} conflicts with quantization_config={quantization_config!r}; pass one"
            )
        return c
    return build_quant_config(quantization if quantization is not None else quantization_config)


def resolve_quant_config(quantization, quantization_config, gguf_model=None) -> PipelineQuantConfig:
    """``merge_quantization_args`` plus ``gguf_model``: a GGUF file supplies an already-quantized
    denoiser and so selects its own method; combining it with another quantization is an error."""
    cfg = merge_quantization_args(quantization, quantization_config)
    if gguf_model is None:
        return cfg
    if cfg.is_quantized:
        raise ValueError(
            f"gguf_model={str(gguf_model)!r}: the GGUF file already selects its quantization method (gguf, with "
            f"the per-layer types stored in the file); do not also pass quantization/quantization_config "
            f"(got {cfg.describe()})"
        )
    return build_quant_config({"method": "gguf", "path": str(gguf_model)})


class Omni:
    """A loaded (optionally quantized) diffusion pipeline.

    model: diffusers-format directory (``model_index.json``).
    quantization / quantization_config: any spec accepted by ``build_quant_config``.
    linear_backend: "auto", a backend name ("torch", "scaled_mm", "int_mm"), or per format
        ("fp8=scaled_mm,int8=torch" or a dict). A backend that cannot run here is an error.
    dtype: compute dtype of unquantized parts; device: "cuda", "cpu" or None (= cuda if present).
    cuda_graphs: capture the denoiser step in CUDA graphs (one per shape); CUDA only.
    Pre-quantized ModelOpt components are detected from their config and need no quantization flag;
    force_cutlass_fp8: run their FP8 layers on the ``scaled_mm`` backend (error below CUDA cc 8.9).
    attention: "sdpa" (the model's own attention) or "int8" (INT8 QK^T + FP8 PV on every attention
        of the denoiser; FLUX and Wan; docs/attention.md). Where it cannot run it is an error.
    """

    def __new__(cls, model=None, *args, **kwargs):
        # A transformers multi-stage omni directory (e.g. Qwen3-Omni) gets its own engine.
        from quantomni.multistage.stages import is_multistage_dir

        if cls is Omni and model is not None and is_multistage_dir(model):
            from quantomni.multistage.engine import OmniMultiStage

            return OmniMultiStage(model, *args, **kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        model: str | Path,
        quantization=None,
        quantization_config=None,
        linear_backend="auto",
        dtype="bfloat16",
        device=None,
        progress: bool = True,
        model_id: str | None = None,
        gguf_model: str | Path | None = None,
        cuda_graphs: bool = False,
        force_cutlass_fp8: bool = False,
        attention: str = "sdpa",
    ):
        t0 = time.perf_counter()
        self.model_dir = Path(model)
        self.quant_config: PipelineQuantConfig = resolve_quant_config(quantization, quantization_config, gguf_model)
        self.dtype = resolve_dtype(dtype)
        self.device = resolve_device(device)
        self.backends = BackendRequest.parse(linear_backend)
        from quantomni.layers import attention as attention_layer

        attention = attention_layer.validate_mode(attention)
        if force_cutlass_fp8:
            from quantomni.pipeline.prequantized import force_scaled_mm_fp8

            self.backends = force_scaled_mm_fp8(self.backends, self.device)
        self.progress = progress
        self.model_id = model_id or self.model_dir.name
        self._lock = threading.Lock()

        index = read_model_index(self.model_dir)
        self.pipeline_class_name = index.pipeline_class
        from quantomni.pipeline.prequantized import route_prequantized

        self.quant_config, self.detected_prequantized = route_prequantized(self.model_dir, index.components, self.quant_config)
        resolved = self.quant_config.resolve(list(index.components))
        denoiser = next((c for c in DENOISER_COMPONENTS if c in index.components), None)
        self.denoiser_component = denoiser
        self.adapter = adapter_for_class(index.pipeline_class)

        self.plans: dict[str, ComponentPlan] = {}
        self.load_stats: dict[str, LoadStats] = {}
        loaded: dict[str, Any] = {}
        for comp, cfg in resolved.items():
            if cfg is None:
                continue
            if comp in DENOISER_COMPONENTS and index.components[comp][0] == "diffusers":
                cls = index.component_class(comp)
                module, plan, stats = load_component_streaming(
                    comp, self.model_dir / comp, cls, cfg, self.adapter, self.device, self.dtype, self.backends, progress
                )
                loaded[comp] = module
                self.plans[comp] = plan
                self.load_stats[comp] = stats
        pipe_cls = _import_diffusers(index.pipeline_class)
        try:
            with _quiet_library_loading(progress):
                self.pipe = pipe_cls.from_pretrained(
                    str(self.model_dir), **loaded, torch_dtype=self.dtype, local_files_only=True
                )
        except Exception as exc:
            raise type(exc)(f"loading pipeline {index.pipeline_class} from {self.model_dir} failed: {exc}") from exc
        # Explicitly requested non-denoiser components (e.g. a text encoder): quantize in place.
        from quantomni.models.base import GENERIC

        for comp, cfg in resolved.items():
            if cfg is None or comp in loaded:
                continue
            module = getattr(self.pipe, comp)
            self.plans[comp] = quantize_module_in_place(module, comp, cfg, GENERIC, self.device, self.dtype, self.backends)
        self.pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=not progress, leave=False)
        self.attention_plan = attention_layer.install(self.denoiser, attention, self.adapter, self.device, self.dtype)
        self.cuda_graphs = None
        if cuda_graphs:
            if self.device.type != "cuda":
                raise ValueError("cuda_graphs=True needs a CUDA device; use enforce-eager on CPU")
            from quantomni.pipeline.cuda_graph import enable_cuda_graphs

            self.cuda_graphs = enable_cuda_graphs(self.denoiser)
        if self.quant_config.is_quantized and sum(p.quantized_count for p in self.plans.values()) == 0:
            raise QuantizationError("a quantization was requested but zero layers were quantized")
        self.load_time_s = time.perf_counter() - t0
        for plan in self.plans.values():
            logger.info("quantization: %s", plan.summary())
        logger.info(
            "loaded %s (%s) on %s in %.2fs; denoiser weights %.1f MiB",
            self.model_dir, index.pipeline_class, self.device, self.load_time_s, self.denoiser_weight_bytes / 2**20,
        )

    # ------------------------------------------------------------------ info
    @property
    def denoiser(self):
        """The denoiser module (transformer / unet), or None for pipelines without one."""
        return getattr(self.pipe, self.denoiser_component) if self.denoiser_component else None

    @property
    def denoiser_weight_bytes(self) -> int:
        if self.denoiser_component is None:
            return 0
        return module_bytes(getattr(self.pipe, self.denoiser_component))

    def set_progress(self, enabled: bool) -> None:
        """Show or hide the per-call denoising progress bar (servers hide it)."""
        self.progress = bool(enabled)
        self.pipe.set_progress_bar_config(disable=not enabled, leave=False)

    def describe(self) -> dict[str, Any]:
        comps = {}
        for name in self.pipe.components:
            module = getattr(self.pipe, name, None)
            if not isinstance(module, torch.nn.Module):
                continue
            plan = self.plans.get(name)
            comps[name] = {
                "class": type(module).__name__,
                "method": plan.method if plan else None,
                "scheme": plan.scheme if plan else None,
                "quantized_layers": plan.quantized_count if plan else 0,
                "kernels": dict(plan.backends()) if plan else {},
                "layer_schemes": dict(Counter(r.scheme for r in plan.records if r.quantized)) if plan else {},
                "weight_bytes": module_bytes(module),
            }
            if name in self.detected_prequantized:
                from quantomni.pipeline.prequantized import describe_detected

                comps[name]["prequantized"] = describe_detected(self.detected_prequantized[name], plan, counts_only=True)
        return {
            "model": self.model_id,
            "path": str(self.model_dir),
            "pipeline": self.pipeline_class_name,
            "architecture": self.adapter.name,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "load_time_s": round(self.load_time_s, 4),
            "cuda_graphs": self.cuda_graphs is not None,
            "attention": self.attention_plan.to_dict(),
            "quantization": self.quant_config.to_dict(),
            "components": comps,
        }

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        prompt,
        negative_prompt=None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        seed=None,
        num_images: int = 1,
        cancel_event: threading.Event | None = None,
    ) -> GenerationResult:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompt: expected a string or a non-empty list of strings")
        negs = _per_prompt(negative_prompt, len(prompts), "negative_prompt")
        seeds = _per_prompt(seed, len(prompts), "seed")
        if not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"num_images: expected a positive integer, got {num_images!r}")
        for name, value in (("height", height), ("width", width)):
            if value is not None and (not isinstance(value, int) or value <= 0 or value % 16):
                raise ValueError(f"{name}: expected a positive multiple of 16, got {value!r}")
        if num_inference_steps is not None and (not isinstance(num_inference_steps, int) or num_inference_steps < 1):
            raise ValueError(f"num_inference_steps: expected a positive integer, got {num_inference_steps!r}")

        generators = []
        for s in seeds:
            for j in range(num_images):
                g = torch.Generator("cpu")
                if s is None:
                    g.seed()
                else:
                    g.manual_seed(int(s) + j)
                generators.append(g)
        neg = None if all(n is None for n in negs) else [n or "" for n in negs]
        kwargs = self.adapter.pipeline_kwargs(guidance_scale, neg)
        if num_inference_steps is not None:
            kwargs["num_inference_steps"] = num_inference_steps
        if height is not None:
            kwargs["height"] = height
        if width is not None:
            kwargs["width"] = width

        step_times: list[float] = []

        def on_step_end(pipe, step, timestep, callback_kwargs):
            step_times.append(time.perf_counter())
            if cancel_event is not None and cancel_event.is_set():
                raise GenerationCancelled("generation cancelled")
            return callback_kwargs

        with self._lock:
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = self.pipe(
                    prompt=prompts,
                    num_images_per_prompt=num_images,
                    generator=generators,
                    callback_on_step_end=on_step_end,
                    output_type="pil",
                    **kwargs,
                )
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            total = time.perf_counter() - t0
            peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None
        images = out.images if hasattr(out, "images") else out.frames
        images = [img[0] if isinstance(img, list) else img for img in images]
        denoise = (step_times[-1] - t0) if step_times else total
        return GenerationResult(
            images=list(images),
            timings={"total_s": total, "denoise_s": denoise, "steps": float(len(step_times))},
            peak_memory_bytes=peak,
        )

    def close(self) -> None:
        self.pipe = None
        self.plans = {}
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


@contextlib.contextmanager
def _quiet_library_loading(progress: bool):
    """diffusers/transformers print their own per-component bars and a torch_dtype rename
    warning; ours already reports progress, so theirs are silenced while loading."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch_dtype.*")
            yield
    finally:
        dlog.enable_progress_bar()
        tlog.enable_progress_bar()


def _per_prompt(value, n: int, field: str) -> list:
    if value is None or isinstance(value, (str, int)):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"{field}: got {len(values)} values for {n} prompts")
    return values


def _import_diffusers(class_name: str):
    import diffusers

    cls = getattr(diffusers, class_name, None)
    if cls is None:
        raise ValueError(f"pipeline class {class_name!r} is not in the installed diffusers ({diffusers.__version__})")
    return cls
