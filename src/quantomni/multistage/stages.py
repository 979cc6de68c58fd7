"""Recognise a multi-stage omni model directory and resolve a per-stage quantization spec.

Why separate from ``pipeline.omni``: a Qwen3-Omni directory is one transformers model
(``config.json`` with ``model_type``, no ``model_index.json``) holding several stages; the spec
``{"thinker": "fp8", "talker": None}`` names stages, and a bare method name means the thinker.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from quantomni.config import build_quant_config
from quantomni.config.base import DENOISER, QuantMethodConfig
from quantomni.errors import CheckpointError

#: the stage a bare method name ("fp8") applies to
DEFAULT_STAGE = "thinker"


def read_root_config(model_dir: str | Path) -> dict[str, Any] | None:
    """config.json of a transformers model directory, or None if it is not one."""
    root = Path(model_dir)
    path = root / "config.json"
    if (root / "model_index.json").is_file() or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    return data if isinstance(data, dict) else None


def is_multistage_dir(model_dir: str | Path) -> bool:
    """True for a directory this package loads as a multi-stage omni model."""
    from quantomni.models.qwen3_omni import MODEL_TYPES

    try:
        cfg = read_root_config(model_dir)
    except CheckpointError:
        return False
    return cfg is not None and cfg.get("model_type") in MODEL_TYPES


def present_stages(root_config: dict[str, Any]) -> list[str]:
    """Stages the checkpoint holds: the thinker always; talker and code2wav with audio output."""
    stages = ["thinker"]
    if root_config.get("enable_audio_output", True):
        stages += ["talker", "code2wav"]
    return stages


def resolve_stage_quantization(spec, stages: list[str]) -> dict[str, QuantMethodConfig | None]:
    """``spec`` (any form ``build_quant_config`` takes) -> {stage: config or None}.

    A bare method / method dict (the "denoiser" alias) means the thinker. Naming a component that
    is not a stage of this model (e.g. "transformer", or "talker" without audio output) is an error.
    """
    cfg = build_quant_config(spec)
    out: dict[str, QuantMethodConfig | None] = {}
    for name, method_cfg in cfg.components.items():
        stage = DEFAULT_STAGE if name == DENOISER else name
        if stage not in stages:
            raise ValueError(
                f"quantization names {name!r}, which is not a stage of this model; its stages are {stages} "
                f"(a bare method name applies to the {DEFAULT_STAGE})"
            )
        if stage in out and out[stage] != method_cfg:
            raise ValueError(f"quantization: stage {stage!r} is given twice with different methods")
        out[stage] = method_cfg
    return out


def thinker_prequantized_config(model_dir: str | Path, root_config: dict[str, Any]):
    """The thinker's ModelOpt config, from ``thinker_config.text_config.quantization_config``,
    ``thinker_config.quantization_config``, the root ``quantization_config`` or the sidecar
    ``hf_quant_config.json``; None when the checkpoint is not pre-quantized.

    Returns (ModelOptConfig, where it was found) or None. A quantization config that is not
    ModelOpt is an error (named), never silently ignored.
    """
    from quantomni.formats.modelopt import SIDECAR_JSON, is_modelopt_config, parse_modelopt_config

    thinker = root_config.get("thinker_config") or {}
    text = thinker.get("text_config") or {}
    candidates = [
        (text.get("quantization_config"), "config.json: thinker_config.text_config.quantization_config"),
        (thinker.get("quantization_config"), "config.json: thinker_config.quantization_config"),
        (root_config.get("quantization_config"), "config.json: quantization_config"),
    ]
    for raw, where in candidates:
        if raw is None:
            continue
        if not isinstance(raw, dict) or not is_modelopt_config(raw):
            raise ValueError(f"{Path(model_dir) / 'config.json'}: {where} is not a ModelOpt config: {raw!r}")
        return parse_modelopt_config(raw), where
    side = Path(model_dir) / SIDECAR_JSON
    if side.is_file():
        try:
            raw = json.loads(side.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{side}: not valid JSON ({exc})") from exc
        if not isinstance(raw, dict):
            raise CheckpointError(f"{side}: expected a JSON object, got {type(raw).__name__}")
        return parse_modelopt_config(raw, SIDECAR_JSON), SIDECAR_JSON
    return None
