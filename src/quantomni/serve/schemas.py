"""Request/response models and the OpenAI-style error object.

Every 4xx/5xx the server sends has the shape OpenAI clients expect::

    {"error": {"message": str, "type": str, "param": str | None, "code": str | None}}

Pydantic checks *types* (strict: ``"2"`` is not an int, ``true`` is not an int); value
bounds that depend on :class:`ServeSettings` are checked in ``validate_generation``.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from dataclasses import dataclass
from typing import Any, Literal

try:
    from pydantic import BaseModel, ConfigDict, Field, ValidationError
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("quantomni serve needs pydantic: pip install 'quantomni[serve]'") from exc

from .settings import ServeSettings

SIZE_PATTERN = re.compile(r"^([0-9]{1,6})x([0-9]{1,6})$")
MAX_SEED = 2**63 - 1


class APIError(Exception):
    """An error answered to the client as an OpenAI error object."""

    def __init__(self, status: int, message: str, *, type: str | None = None,
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or default_error_type(status)
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def default_error_type(status: int) -> str:
    return {
        401: "authentication_error",
        403: "permission_error",
        404: "invalid_request_error",
        413: "invalid_request_error",
        429: "rate_limit_error",
        503: "server_error",
        504: "timeout_error",
    }.get(status, "invalid_request_error" if status < 500 else "server_error")


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class ImageGenerationRequest(BaseModel):
    """Body of POST /v1/images/generations (OpenAI fields plus diffusion extras)."""

    model_config = ConfigDict(strict=True, extra="ignore")

    prompt: str
    model: str | None = None
    n: int | None = None
    size: str | None = None
    response_format: Literal["b64_json", "url"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    negative_prompt: str | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    stream: bool | None = None
    # Accepted for OpenAI-client compatibility and ignored (they describe hosted models).
    user: str | None = None
    quality: str | None = None
    style: str | None = None


def parse_generation_body(raw: bytes) -> ImageGenerationRequest:
    """Raw body -> request model. JSON whatever the Content-Type (curl -d sends form type).

    Empty or malformed JSON -> 400; a JSON value that is not an object or has wrong field
    types -> 422 naming the field.
    """
    if not raw.strip():
        raise APIError(400, "Request body is empty: send a JSON object with at least 'prompt'.",
                       code="empty_body")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise APIError(400, f"Request body is not valid JSON ({exc}).", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(422, f"Request body must be a JSON object, got {type(data).__name__}.",
                       code="invalid_body")
    try:
        return ImageGenerationRequest.model_validate(data)
    except ValidationError as exc:
        raise reshape_validation_errors(exc.errors()) from None


@dataclass(frozen=True)
class GenerationParams:
    """A validated request, ready for the batcher."""

    prompt: str
    negative_prompt: str | None
    height: int
    width: int
    num_inference_steps: int
    guidance_scale: float | None
    seed: int
    n: int
    output_format: str


def parse_size(size: str, settings: ServeSettings, param: str = "size") -> tuple[int, int]:
    """'WxH' -> (width, height), checked against the settings' bounds."""
    match = SIZE_PATTERN.match(size)
    if match is None:
        raise APIError(400, f"size={size[:40]!r} is not of the form 'WIDTHxHEIGHT' (e.g. '1024x1024').",
                       param=param, code="invalid_size")
    width, height = int(match.group(1)), int(match.group(2))
    m = settings.size_multiple
    for name, value in (("width", width), ("height", height)):
        if value % m or not settings.min_side <= value <= settings.max_side:
            raise APIError(
                400, f"size={size!r}: {name} {value} must be a multiple of {m} between "
                f"{settings.min_side} and {settings.max_side}.", param=param, code="invalid_size")
    if width * height > settings.max_pixels:
        raise APIError(400, f"size={size!r}: {width * height} pixels exceeds the server's budget of "
                       f"{settings.max_pixels} pixels.", param=param, code="invalid_size")
    return width, height


def validate_generation(req: ImageGenerationRequest, settings: ServeSettings) -> GenerationParams:
    """Check value bounds; raise APIError(400) naming the field, its value and what is allowed."""
    if req.stream:
        raise APIError(400, "stream=true is not supported: images are returned whole, as b64_json.",
                       param="stream", code="unsupported_stream")
    if req.response_format == "url":
        raise APIError(400, "response_format='url' is not supported: this server does not host files; "
                       "use response_format='b64_json' (the default).", param="response_format",
                       code="unsupported_response_format")
    if not req.prompt.strip():
        raise APIError(400, "prompt must be a non-empty string.", param="prompt")
    if len(req.prompt) > settings.max_prompt_chars:
        raise APIError(400, f"prompt has {len(req.prompt)} characters; the limit is "
                       f"{settings.max_prompt_chars}.", param="prompt", code="prompt_too_long")
    if req.negative_prompt is not None and len(req.negative_prompt) > settings.max_prompt_chars:
        raise APIError(400, f"negative_prompt has {len(req.negative_prompt)} characters; the limit is "
                       f"{settings.max_prompt_chars}.", param="negative_prompt", code="prompt_too_long")
    n = 1 if req.n is None else req.n
    if not 1 <= n <= settings.max_n:
        raise APIError(400, f"n={n} is out of range: allowed 1..{settings.max_n}.", param="n")
    size = settings.default_size if req.size in (None, "auto") else req.size
    width, height = parse_size(size, settings)
    steps = settings.default_num_inference_steps if req.num_inference_steps is None else req.num_inference_steps
    if not 1 <= steps <= settings.max_steps:
        raise APIError(400, f"num_inference_steps={steps} is out of range: allowed 1..{settings.max_steps}.",
                       param="num_inference_steps")
    guidance = settings.default_guidance_scale if req.guidance_scale is None else req.guidance_scale
    if guidance is not None and not (math.isfinite(guidance) and 0 <= guidance <= settings.max_guidance_scale):
        raise APIError(400, f"guidance_scale={guidance} is out of range: allowed 0..{settings.max_guidance_scale}.",
                       param="guidance_scale")
    if req.seed is not None and not 0 <= req.seed <= MAX_SEED:
        raise APIError(400, f"seed={req.seed} is out of range: allowed 0..{MAX_SEED}.", param="seed")
    # Draw the seed here rather than in the engine so the response can report it: every
    # answer can be reproduced by sending its seed back.
    seed = secrets.randbelow(2**32) if req.seed is None else req.seed
    return GenerationParams(
        prompt=req.prompt, negative_prompt=req.negative_prompt, height=height, width=width,
        num_inference_steps=steps, guidance_scale=guidance, seed=seed, n=n,
        output_format=req.output_format or "png",
    )


class ImageData(BaseModel):
    b64_json: str


class ImageGenerationResponse(BaseModel):
    """OpenAI's ``created``/``data`` plus what a self-hosted diffusion server can tell."""

    created: int
    data: list[ImageData]
    output_format: str
    size: str
    seed: int
    timings: dict[str, float]
    usage: dict[str, Any] = Field(default_factory=dict)


def reshape_validation_errors(errors: list[dict[str, Any]]) -> APIError:
    """FastAPI's 422 detail list -> one OpenAI error naming the first bad field."""
    if not errors:
        return APIError(422, "Invalid request body.")
    first = errors[0]
    if first.get("type") == "json_invalid":
        return APIError(400, "Request body is not valid JSON.", code="invalid_json")
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    message = str(first.get("msg", "invalid value"))
    if first.get("type") == "missing":
        text = f"Missing required field {param!r}."
    elif param is None:
        text = f"Invalid request body: {message}. Send a JSON object."
    else:
        received = first.get("input")
        shown = repr(received)[:60] if received is not None else "null"
        text = f"Invalid value for {param!r}: {message} (got {shown})."
    if len(errors) > 1:
        text += f" ({len(errors) - 1} more error(s) not shown.)"
    return APIError(422, text, param=param, code=str(first.get("type", "invalid_value")))
