"""POST /v1/chat/completions (OpenAI shape, text output, optional SSE streaming).

Added by ``create_app`` only when the engine has a ``chat_stream`` capability (multi-stage omni
models); image-only engines do not get the route. Non-streaming requests that arrive together are
decoded as one batch (``ChatBatcher``, when the engine has ``chat_batch``); streaming ones run in a
worker thread each; the engine serialises its calls with its own lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import threading
import time
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .schemas import APIError, reshape_validation_errors

MAX_TOKENS_LIMIT = 4096


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "user", "assistant"]
    content: str


class AudioOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    voice: str | None = None
    format: Literal["wav"] = "wav"


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float | int = Field(default=1.0, ge=0, le=2)
    top_p: float | int = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1)
    modalities: list[Literal["text", "audio"]] | None = None
    audio: AudioOptions | None = None
    max_audio_tokens: int = Field(default=256, ge=1, le=MAX_TOKENS_LIMIT)  # extension: talker codec steps


def _parse(raw: bytes) -> ChatCompletionRequest:
    try:
        data = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"Request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise APIError(400, "Request body must be a JSON object.")
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        raise reshape_validation_errors(list(exc.errors())) from None


def _params(body: ChatCompletionRequest, default_max_tokens: int):
    from quantomni.multistage.textgen import SamplingParams

    stop = body.stop if isinstance(body.stop, list) else ([body.stop] if body.stop else [])
    try:
        return SamplingParams(max_tokens=body.max_completion_tokens or body.max_tokens or default_max_tokens,
                              temperature=float(body.temperature), top_p=float(body.top_p), top_k=body.top_k,
                              seed=body.seed, stop=tuple(stop))
    except ValueError as exc:
        raise APIError(400, str(exc), param=str(exc).split(":")[0]) from None


def add_chat_routes(app, engine, default_max_tokens: int = 256, max_batch: int = 8) -> None:
    batcher = None
    if hasattr(engine, "chat_batch") and max_batch > 1:
        from .chat_batcher import ChatBatcher

        batcher = ChatBatcher(engine, max_batch=max_batch)
    app.state.chat_batcher = batcher

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = _parse(await request.body())
        if body.model is not None and body.model != engine.model_id:
            raise APIError(404, f"Model {body.model[:200]!r} is not served here; this server serves "
                                f"{engine.model_id!r}.", param="model", code="model_not_found")
        params = _params(body, default_max_tokens)
        messages = [m.model_dump() for m in body.messages]
        try:
            prompt_ids = engine.encode_messages(messages)
        except ValueError as exc:
            raise APIError(400, str(exc), param="messages") from None
        rid = "chatcmpl-" + secrets.token_hex(12)
        created = int(time.time())
        if body.modalities and "audio" in body.modalities:
            return await _speech(engine, body, messages, params, rid, created)
        if not body.stream:
            try:
                if batcher is not None:
                    result = await asyncio.wrap_future(batcher.submit(messages, params))
                else:
                    result = await asyncio.to_thread(engine.chat, messages, params)
            except ValueError as exc:
                raise APIError(400, str(exc)) from None
            return JSONResponse({
                "id": rid, "object": "chat.completion", "created": created, "model": engine.model_id,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                             "finish_reason": result.finish_reason, "logprobs": None}],
                "usage": _usage(result, len(prompt_ids)),
                "timings": result.timings,
            })
        return StreamingResponse(_sse(engine, messages, params, rid, created, len(prompt_ids)),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def wav_bytes(waveform, sample_rate: int) -> bytes:
    """float waveform [S] in [-1, 1] -> 16-bit PCM mono WAV bytes."""
    import io
    import wave

    import numpy as np

    pcm = (np.clip(waveform.numpy(), -1.0, 1.0) * 32767.0).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


async def _speech(engine, body, messages, params, rid: str, created: int):
    """modalities ["text", "audio"]: thinker -> talker -> code2wav; the reply carries message.audio
    (base64 WAV + transcript) as OpenAI's audio-capable chat models do. Greedy thinker, no streaming."""
    import base64

    if body.stream:
        raise APIError(400, "Streaming is not supported with audio output; set stream to false.", param="stream")
    if not hasattr(engine, "speak"):
        raise APIError(400, f"Model {engine.model_id!r} cannot produce audio.", param="modalities")
    voice = body.audio.voice if body.audio else None
    try:
        out = await asyncio.to_thread(engine.speak, messages, params.max_tokens, body.max_audio_tokens, voice,
                                      params.seed)
    except ValueError as exc:
        raise APIError(400, str(exc), param="audio" if "speaker" in str(exc) else None) from None
    data = base64.b64encode(wav_bytes(out["waveform"], out["sample_rate"])).decode("ascii")
    audio = {"id": "audio_" + secrets.token_hex(8), "data": data, "expires_at": created + 3600,
             "transcript": out["text"]}
    completion = len(out["token_ids"])
    return JSONResponse({
        "id": rid, "object": "chat.completion", "created": created, "model": engine.model_id,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": None, "audio": audio},
                     "finish_reason": "length" if completion >= params.max_tokens else "stop", "logprobs": None}],
        "usage": {"prompt_tokens": out["prompt_tokens"], "completion_tokens": completion,
                  "total_tokens": out["prompt_tokens"] + completion},
    })


def _usage(result, prompt_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": prompt_tokens + result.completion_tokens}


async def _sse(engine, messages, params, rid: str, created: int, prompt_tokens: int):
    """Run the engine's generator in a thread; forward deltas as chat.completion.chunk events."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    cancel = threading.Event()

    def worker():
        try:
            # closing(): a client that goes away stops generation and releases the engine lock now
            with contextlib.closing(engine.chat_stream(messages, params)) as stream:
                for delta, final in stream:
                    if cancel.is_set():
                        break
                    loop.call_soon_threadsafe(queue.put_nowait, ("delta", delta, final))
            loop.call_soon_threadsafe(queue.put_nowait, ("end", None, None))
        except Exception as exc:  # surfaced to the client as an error event
            loop.call_soon_threadsafe(queue.put_nowait, ("error", str(exc), None))

    def chunk(delta: dict[str, Any], finish=None, **extra) -> str:
        body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": engine.model_id,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
        return f"data: {json.dumps(body)}\n\n"

    thread = threading.Thread(target=worker, name="quantomni-chat", daemon=True)
    thread.start()
    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            kind, payload, final = await queue.get()
            if kind == "error":
                yield f"data: {json.dumps({'error': {'message': payload, 'type': 'server_error'}})}\n\n"
                break
            if kind == "end":
                break
            if payload:
                yield chunk({"content": payload})
            if final is not None:
                yield chunk({}, final.finish_reason, usage=_usage(final, prompt_tokens))
        yield "data: [DONE]\n\n"
    finally:
        cancel.set()
