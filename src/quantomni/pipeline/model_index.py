"""Read a diffusers-format model directory's ``model_index.json``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from quantomni.errors import CheckpointError


@dataclasses.dataclass(frozen=True)
class ModelIndex:
    root: Path
    pipeline_class: str
    #: component name -> (library, class name); None entries are dropped
    components: dict[str, tuple[str, str]]

    def component_class(self, name: str):
        """Import the class a component is saved as (diffusers or transformers only)."""
        import importlib

        library, class_name = self.components[name]
        if library not in ("diffusers", "transformers"):
            raise CheckpointError(f"component {name!r} uses library {library!r}; only diffusers/transformers are loaded")
        module = importlib.import_module(library)
        try:
            return getattr(module, class_name)
        except AttributeError as exc:
            raise CheckpointError(
                f"component {name!r} needs {library}.{class_name}, which the installed {library} does not have"
            ) from exc


def read_model_index(model_dir: str | Path) -> ModelIndex:
    root = Path(model_dir)
    if not root.exists():
        raise CheckpointError(f"model directory {root} does not exist")
    index_path = root / "model_index.json"
    if not index_path.is_file():
        raise CheckpointError(
            f"{root} is not a diffusers-format model directory: no model_index.json "
            f"(create one with `quantomni demo-model DIR` or a pipeline's save_pretrained)"
        )
    try:
        data = json.loads(index_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{index_path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or "_class_name" not in data:
        raise CheckpointError(f"{index_path} has no _class_name")
    components = {}
    for key, value in data.items():
        if key.startswith("_"):
            continue
        if isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value):
            components[key] = (value[0], value[1])
    return ModelIndex(root, data["_class_name"], components)
