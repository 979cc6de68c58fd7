"""Server settings: one frozen dataclass, validated on construction.

The API key falls back to the ``QUANTOMNI_API_KEY`` environment variable when the
settings object is built (never at import time), so tests and the CLI control it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

API_KEY_ENV = "QUANTOMNI_API_KEY"


class ServeSettingsError(ValueError):
    """A server setting is out of range."""


def _api_key_from_env() -> str | None:
    value = os.environ.get(API_KEY_ENV, "")
    return value or None


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8091
    api_key: str | None = field(default_factory=_api_key_from_env)
    """Bearer token required on every /v1 route; None = open. Empty string counts as None."""
    max_batch_size: int = 4
    """Most requests (prompts) the worker hands to one ``generate`` call."""
    max_batch_images: int | None = None
    """Optional cap on images per ``generate`` call (requests x n); None = max_batch_size x n."""
    batch_window_s: float = 0.005
    """How long the worker waits for compatible requests after taking the first one."""
    max_queue: int = 64
    """Requests waiting (not running) before new ones get 429."""
    request_timeout_s: float = 300.0
    """Queue + generation time after which a request is answered 504 and cancelled."""
    max_pixels: int = 2048 * 2048
    max_side: int = 4096
    min_side: int = 16
    size_multiple: int = 16
    max_n: int = 4
    max_steps: int = 200
    max_prompt_chars: int = 4000
    max_guidance_scale: float = 100.0
    max_body_bytes: int = 1 << 20
    default_size: str = "1024x1024"
    default_num_inference_steps: int = 28
    default_guidance_scale: float | None = None
    """None lets the engine use the model's own default."""
    isolate_failed_batches: bool = True
    """When a batched call raises, retry each request alone so one bad request cannot fail the others."""
    log_level: str = "info"

    def __post_init__(self) -> None:
        if self.api_key == "":
            object.__setattr__(self, "api_key", None)
        positive_ints = (
            "max_batch_size", "max_queue", "max_pixels", "max_side", "min_side",
            "size_multiple", "max_n", "max_steps", "max_prompt_chars", "max_body_bytes",
            "default_num_inference_steps",
        )
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ServeSettingsError(f"ServeSettings.{name}={value!r}: must be an integer >= 1")
        if self.max_batch_images is not None and (
                not isinstance(self.max_batch_images, int) or self.max_batch_images < 1):
            raise ServeSettingsError(
                f"ServeSettings.max_batch_images={self.max_batch_images!r}: must be None or an integer >= 1")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ServeSettingsError(f"ServeSettings.port={self.port!r}: must be an integer in 0..65535")
        if not self.request_timeout_s > 0:
            raise ServeSettingsError(
                f"ServeSettings.request_timeout_s={self.request_timeout_s!r}: must be > 0 seconds")
        if not 0 <= self.batch_window_s <= 1:
            raise ServeSettingsError(
                f"ServeSettings.batch_window_s={self.batch_window_s!r}: must be in 0..1 seconds")
        if self.default_num_inference_steps > self.max_steps:
            raise ServeSettingsError(
                f"ServeSettings.default_num_inference_steps={self.default_num_inference_steps} "
                f"exceeds max_steps={self.max_steps}")
        if self.min_side > self.max_side:
            raise ServeSettingsError(
                f"ServeSettings.min_side={self.min_side} exceeds max_side={self.max_side}")
