"""Safetensors helpers: find a component's weight files and stream tensors with clear errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch

from quantomni.errors import CheckpointError

_INDEX_SUFFIX = ".safetensors.index.json"


def find_weight_files(component_dir: Path) -> list[Path]:
    """Safetensors files of a diffusers/transformers component directory (sharded or single)."""
    component_dir = Path(component_dir)
    if not component_dir.is_dir():
        raise CheckpointError(f"component directory {component_dir} does not exist")
    indexes = sorted(component_dir.glob(f"*{_INDEX_SUFFIX}"))
    if indexes:
        try:
            index = json.loads(indexes[0].read_text())
            shards = sorted(set(index["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as exc:
            raise CheckpointError(f"corrupt safetensors index {indexes[0]}: {exc}") from exc
        files = [component_dir / s for s in shards]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"safetensors index {indexes[0]} lists missing shard(s): {missing}")
        return files
    files = sorted(component_dir.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in component_dir.glob("*.bin")) + sorted(p.name for p in component_dir.glob("*.pt"))
        hint = f" (found {pickles}: pickle checkpoints are never loaded; convert them to safetensors)" if pickles else ""
        raise CheckpointError(f"no .safetensors weights in {component_dir}{hint}")
    return files


def _open(path: Path):
    from safetensors import safe_open

    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except Exception as exc:  # SafetensorError, OSError: header unreadable or sizes inconsistent
        raise CheckpointError(f"corrupt or truncated safetensors file {path}: {exc}") from exc


def list_tensor_names(files: list[Path]) -> dict[str, Path]:
    """name -> file, for every tensor of every shard; duplicate names are an error."""
    out: dict[str, Path] = {}
    for path in files:
        with _open(path) as f:
            for name in f.keys():
                if name in out:
                    raise CheckpointError(f"tensor {name!r} appears in both {out[name]} and {path}")
                out[name] = path
    return out


def iter_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) one at a time; each tensor is a fresh CPU copy of its bytes."""
    for path in files:
        with _open(path) as f:
            for name in f.keys():
                try:
                    tensor = f.get_tensor(name)
                except Exception as exc:
                    raise CheckpointError(f"cannot read tensor {name!r} from {path}: {exc}") from exc
                yield name, tensor
