"""The contract between the HTTP server and whatever generates images.

The server codes only against :class:`ImageEngine`; ``quantomni.Omni`` satisfies it, and
the tests use a fake. Keeping the contract this small is what lets the server be tested
without torch, weights or a GPU.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover - typing only
    from PIL import Image


from quantomni.errors import GenerationCancelled  # noqa: E402  (re-exported for engines and tests)


@runtime_checkable
class GenerationResult(Protocol):
    """What ``generate`` returns.

    images: ``len(prompt) * num_images`` PIL images, grouped by prompt in prompt order
        (all images of prompt 0 first, then prompt 1, ...).
    timings: seconds per phase, e.g. ``{"total_s": 1.2, "denoise_s": 1.0}``.
    peak_memory_bytes: peak device memory during the call, or None where unknown.
    """

    images: list["Image.Image"]
    timings: dict[str, float]
    peak_memory_bytes: int | None


@runtime_checkable
class ImageEngine(Protocol):
    """A loaded text-to-image model.

    ``generate`` is blocking and NOT thread-safe: the server calls it from exactly one
    worker thread (see ``quantomni.serve.batcher``).
    """

    model_id: str
    """The model name clients pass as ``model``."""

    def describe(self) -> dict[str, Any]:
        """Summary of the loaded model::

            {"model": str, "device": str, "dtype": str, "load_time_s": float,
             "components": {name: {"class": str, "method": str | None,
                                   "quantized_layers": int, "weight_bytes": int}}}
        """
        ...

    def generate(
        self,
        prompt: list[str],
        negative_prompt: list[str | None] | None,
        height: int,
        width: int,
        num_inference_steps: int,
        guidance_scale: float | None,
        seed: list[int | None],
        num_images: int,
        cancel_event: threading.Event | None = None,
    ) -> GenerationResult:
        """Generate ``num_images`` images per prompt; one seed per prompt (None = random).

        Raises GenerationCancelled when ``cancel_event`` is set between denoising steps.
        """
        ...
