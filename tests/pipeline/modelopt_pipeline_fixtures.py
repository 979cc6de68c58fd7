"""Whole pipelines around the real ModelOpt exports of ``tests/formats/modelopt_fixtures.py``.

Why: ``Omni`` loads diffusers pipeline directories. The fixture's tiny Flux transformer fits the
built-in tiny Flux pipeline (same text widths 32/32, 64 latent channels, RoPE axes summing to
the head dim), so a pipeline here is the demo pipeline with its ``transformer`` directory
replaced: by the ModelOpt export (``export_pipeline``) or by the fixture's original bf16 weights
(``bf16_pipeline``, the input of our own ``quantize``). Other components are symlinked.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "formats"))
from modelopt_fixtures import (  # noqa: E402,F401  (re-exported for the test modules)
    FLUX_TINY_CONFIG,
    cached_modelopt_export,
    make_inputs,
    modelopt_exports,
    run_flux,
)

INPUT_KEYS = ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep", "img_ids", "txt_ids",
              "guidance")


def link_pipeline(demo_dir: Path, out: Path) -> Path:
    """A pipeline dir sharing demo_dir's components except ``transformer`` (left for the caller)."""
    out.mkdir(parents=True)
    for child in Path(demo_dir).iterdir():
        if child.name == "transformer":
            continue
        if child.is_dir():
            (out / child.name).symlink_to(child.resolve(), target_is_directory=True)
        else:
            shutil.copy2(child, out / child.name)
    return out


def export_pipeline(demo_dir: Path, info: dict, out: Path) -> Path:
    """Demo pipeline whose transformer is the ModelOpt export ``info`` (a real copy, editable)."""
    link_pipeline(demo_dir, out)
    shutil.copytree(info["component_dir"], out / "transformer")
    return out


def bf16_pipeline(demo_dir: Path, info: dict, out: Path) -> Path:
    """Demo pipeline whose transformer holds the fixture's original bf16 weights (no quantization)."""
    link_pipeline(demo_dir, out)
    tdir = out / "transformer"
    tdir.mkdir()
    cfg = json.loads((Path(info["component_dir"]) / "config.json").read_text())
    cfg.pop("quantization_config", None)
    (tdir / "config.json").write_text(json.dumps(cfg, indent=2))
    save_file(load_file(str(info["original_weights_path"])), str(tdir / "diffusion_pytorch_model.safetensors"),
              metadata={"format": "pt"})
    return out


def reference_io(info: dict) -> dict[str, torch.Tensor]:
    return load_file(str(info["reference_io_path"]))


def transformer_output(omni, io: dict) -> torch.Tensor:
    """The loaded denoiser's output on the fixture's fixed inputs (float32)."""
    return run_flux(omni.pipe.transformer, {k: io[k] for k in INPUT_KEYS})


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    assert torch.isfinite(a).all(), "output has NaN/Inf"
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture(scope="session")
def modelopt_pipelines(modelopt_exports, demo_model_dir, tmp_path_factory):
    """Getter ``kind -> pipeline dir`` (demo Flux pipeline + ModelOpt export transformer), cached."""
    cache: dict[str, Path] = {}
    base = tmp_path_factory.mktemp("modelopt_pipelines")

    def get(kind: str) -> Path:
        if kind not in cache:
            cache[kind] = export_pipeline(demo_model_dir("flux"), modelopt_exports(kind), base / kind)
        return cache[kind]

    return get
