"""The FastAPI application: OpenAI-compatible image generation over an ImageEngine.

Routes: POST /v1/images/generations, GET /v1/models, GET /v1/models/{model},
GET /health (always open), GET /metrics (Prometheus text, open like /health).
Every error is an OpenAI error object (see ``schemas``). No request field is ever used
as a path: images are encoded in memory and returned as base64.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import time
from contextlib import asynccontextmanager
from typing import Any

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("quantomni serve needs FastAPI: pip install 'quantomni[serve]'") from exc

from .batcher import Batcher, GenerationFailed, JobResult, QueueFullError, ShuttingDownError
from .engine import ImageEngine
from .metrics import CONTENT_TYPE, Metrics
from .middleware import GatewayMiddleware
from .schemas import (APIError, ImageData, ImageGenerationResponse, error_body, parse_generation_body,
                      parse_size, reshape_validation_errors, validate_generation)
from .settings import ServeSettings, ServeSettingsError

log = logging.getLogger("quantomni.serve")

CLIENT_CLOSED_REQUEST = 499  # nginx's convention; recorded in metrics, never delivered


def _json_safe(value: Any) -> Any:
    """describe() output made JSON-serialisable (unknown objects become strings)."""
    return json.loads(json.dumps(value, default=str))


def model_card(engine: ImageEngine, description: dict[str, Any], created: int) -> dict[str, Any]:
    """One entry of GET /v1/models, with the quantization per component in metadata."""
    components = description.get("components") or {}
    quantization = {
        name: {"method": info.get("method"), "quantized_layers": info.get("quantized_layers", 0)}
        for name, info in components.items() if isinstance(info, dict)
    }
    return {
        "id": engine.model_id,
        "object": "model",
        "created": created,
        "owned_by": "quantomni",
        "metadata": {
            "device": description.get("device"),
            "dtype": description.get("dtype"),
            "load_time_s": description.get("load_time_s"),
            "quantization": quantization,
            "attention": description.get("attention"),
            "components": components,
        },
    }


def encode_image(image: Any, output_format: str) -> str:
    """PIL image -> base64 text in png/jpeg/webp."""
    buffer = io.BytesIO()
    if output_format == "jpeg":
        image.convert("RGB").save(buffer, format="JPEG", quality=95)
    elif output_format == "webp":
        image.save(buffer, format="WEBP", quality=95)
    else:
        image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


async def _wait_for_disconnect(request: Request) -> None:
    """Returns when the client goes away (call after the body has been read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _check_engine(engine: object) -> None:
    missing = [name for name in ("model_id", "describe", "generate") if not hasattr(engine, name)]
    if missing:
        raise TypeError(f"{type(engine).__name__} is not an ImageEngine: it lacks {', '.join(missing)} "
                        "(see quantomni.serve.engine.ImageEngine)")
    if not isinstance(engine.model_id, str) or not engine.model_id:
        raise TypeError(f"engine.model_id={engine.model_id!r}: must be a non-empty string")


def create_app(engine: ImageEngine, settings: ServeSettings | None = None) -> FastAPI:
    """The app; its lifespan starts and stops the engine worker thread."""
    _check_engine(engine)
    settings = settings or ServeSettings()
    try:
        parse_size(settings.default_size, settings, param="default_size")
    except APIError as exc:
        raise ServeSettingsError(f"ServeSettings.default_size: {exc.message}") from None
    metrics = Metrics()
    batcher = Batcher(engine, settings, metrics)
    description = _json_safe(engine.describe())
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            await asyncio.to_thread(batcher.stop)

    app = FastAPI(title="quantomni", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.state.engine = engine
    app.add_middleware(GatewayMiddleware, metrics=metrics, api_key=settings.api_key,
                       max_body_bytes=settings.max_body_bytes)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        error = reshape_validation_errors(list(exc.errors()))
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"Unknown route {request.method} {request.url.path}."
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}."
        else:
            message = str(exc.detail)
        error = APIError(exc.status_code, message)
        return JSONResponse(error.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(error_body(f"Internal server error ({type(exc).__name__}).", "server_error"),
                            status_code=500)

    @app.get("/health")
    async def health() -> JSONResponse:
        alive = batcher.worker_alive
        body = {"status": "ok" if alive else "unavailable", "model": engine.model_id,
                "queue_depth": batcher.queue_depth, "running": batcher.running}
        return JSONResponse(body, status_code=200 if alive else 503)

    @app.get("/metrics")
    async def prometheus_metrics() -> PlainTextResponse:
        text = metrics.render(queue_depth=batcher.queue_depth, running=batcher.running)
        return PlainTextResponse(text, media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [model_card(engine, description, created)]}

    @app.get("/v1/models/{model:path}")
    async def retrieve_model(model: str) -> dict:
        if model != engine.model_id:
            raise _model_not_found(model, engine.model_id)
        return model_card(engine, description, created)

    if hasattr(engine, "chat_stream"):  # text engines (multi-stage omni models)
        from .chat_routes import add_chat_routes

        add_chat_routes(app, engine)

    @app.post("/v1/images/generations")
    async def generate_images(request: Request) -> Response:
        started = time.perf_counter()
        if getattr(engine, "produces_images", True) is False:
            raise APIError(400, f"Model {engine.model_id!r} produces text, not images; use POST /v1/chat/completions.",
                           code="unsupported_endpoint")
        body = parse_generation_body(await request.body())
        if body.model is not None and body.model != engine.model_id:
            raise _model_not_found(body.model, engine.model_id)
        params = validate_generation(body, settings)
        try:
            job = batcher.submit(params)
        except QueueFullError as exc:
            raise APIError(429, f"Server busy: {exc}; retry later.", code="queue_full",
                           headers={"Retry-After": "1"}) from None
        except ShuttingDownError as exc:
            raise APIError(503, f"Service unavailable: {exc}.", code="shutting_down") from None
        watcher = asyncio.create_task(_wait_for_disconnect(request))
        try:
            remaining = settings.request_timeout_s - (time.monotonic() - job.enqueued_at)
            done, _ = await asyncio.wait({job.future, watcher}, timeout=max(remaining, 0.0),
                                         return_when=asyncio.FIRST_COMPLETED)
            if job.future not in done:
                if watcher in done:
                    if batcher.cancel(job, "disconnect"):
                        return Response(status_code=CLIENT_CLOSED_REQUEST)
                elif batcher.cancel(job, "timeout"):
                    raise APIError(504, f"Request timed out after {settings.request_timeout_s:g} s "
                                   f"(queue + generation) and was cancelled.", code="timeout")
                await asyncio.wait({job.future})  # finished just now: its result is on the way
            try:
                result: JobResult = job.future.result()
            except GenerationFailed as exc:
                raise APIError(500, f"Image generation failed: {exc}", code="generation_failed") from None
            except ShuttingDownError as exc:
                raise APIError(503, f"Service unavailable: {exc}.", code="shutting_down") from None
        except asyncio.CancelledError:
            # uvicorn cancels in-flight requests when its graceful-shutdown time is up:
            # withdraw the job and say so, instead of a bare "Internal Server Error".
            batcher.cancel(job, "shutdown")
            error = APIError(503, "The server is shutting down; the request was cancelled.",
                             code="shutting_down")
            return JSONResponse(error.body(), status_code=503)
        finally:
            watcher.cancel()
            if not job.future.done():
                batcher.cancel(job, "aborted")
        encode_started = time.perf_counter()
        images_b64 = await asyncio.to_thread(
            lambda: [encode_image(image, params.output_format) for image in result.images])
        timings = dict(result.timings)
        timings["encode_s"] = time.perf_counter() - encode_started
        timings["request_s"] = time.perf_counter() - started
        payload = ImageGenerationResponse(
            created=int(time.time()),
            data=[ImageData(b64_json=data) for data in images_b64],
            output_format=params.output_format,
            size=f"{params.width}x{params.height}",
            seed=params.seed,
            timings=timings,
            usage={"images": len(images_b64), "batch_size": result.batch_size,
                   "num_inference_steps": params.num_inference_steps,
                   "peak_memory_bytes": result.peak_memory_bytes},
        )
        return JSONResponse(payload.model_dump())

    return app


def _model_not_found(requested: str, served: str) -> APIError:
    return APIError(404, f"Model {requested[:200]!r} is not served here; this server serves {served!r}.",
                    param="model", code="model_not_found")
