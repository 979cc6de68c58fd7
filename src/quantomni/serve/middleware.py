"""A pure-ASGI gateway in front of the routes: API-key check, body-size cap, metrics.

Pure ASGI (not BaseHTTPMiddleware) so ``receive`` reaches the route untouched apart
from byte counting, which the image route relies on to notice client disconnects.
Auth is checked here, before the body is parsed, so an unauthenticated client learns
nothing about validation; every path under /v1 is covered, known route or not.
"""

from __future__ import annotations

import hmac
import json
import time
from typing import Any, Callable

from .metrics import Metrics
from .schemas import APIError

KNOWN_ROUTES = ("/v1/images/generations", "/v1/models", "/health", "/metrics")


class _BodyTooLarge(Exception):
    pass


def route_label(scope: dict[str, Any]) -> str:
    """The matched route template (bounded cardinality), else 'other'."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    return scope.get("path") if scope.get("path") in KNOWN_ROUTES else "other"


def bearer_token_matches(headers: list[tuple[bytes, bytes]], api_key: str) -> bool:
    """Constant-time check of ``Authorization: Bearer <api_key>``."""
    expected = api_key.encode("utf-8")
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer":
                return hmac.compare_digest(token.strip(), expected)
            return False
    return False


async def send_error(send: Callable, error: APIError) -> None:
    body = json.dumps(error.body()).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    for key, value in (error.headers or {}).items():
        headers.append((key.lower().encode("latin-1"), value.encode("latin-1")))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class GatewayMiddleware:
    def __init__(self, app: Callable, *, metrics: Metrics, api_key: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = {"status": 500, "response_started": False, "too_large": False, "replaced": False}

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                if state["too_large"]:  # the app saw a broken body: answer 413 instead
                    state["replaced"] = True
                    state["status"] = 413
                    state["response_started"] = True
                    await send_error(send, self._too_large_error())
                    return
                state["status"] = message["status"]
                state["response_started"] = True
            elif state["replaced"]:
                return
            await send(message)

        try:
            error = self._gate(scope)
            if error is not None:
                state["status"] = error.status
                state["response_started"] = True
                await send_error(send, error)
                return
            received = 0

            async def receive_wrapper() -> dict:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_body_bytes:
                        state["too_large"] = True
                        raise _BodyTooLarge()
                return message

            try:
                await self.app(scope, receive_wrapper, send_wrapper)
            except _BodyTooLarge:
                pass
            if state["too_large"] and not state["response_started"]:
                state["status"] = 413
                state["response_started"] = True
                await send_error(send, self._too_large_error())
        finally:
            self.metrics.observe_request(route_label(scope), scope.get("method", "?"), state["status"],
                                         time.perf_counter() - started)

    def _too_large_error(self) -> APIError:
        return APIError(413, f"Request body exceeds the server's limit of {self.max_body_bytes} bytes.",
                        code="request_too_large")

    def _gate(self, scope: dict) -> APIError | None:
        headers = scope.get("headers", [])
        path = scope.get("path", "")
        if self.api_key is not None and (path == "/v1" or path.startswith("/v1/")):
            if not bearer_token_matches(headers, self.api_key):
                return APIError(401, "Missing or invalid API key: send 'Authorization: Bearer <key>'.",
                                code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        for name, value in headers:
            if name.lower() == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    return APIError(400, "Content-Length header is not an integer.", code="invalid_header")
                if length > self.max_body_bytes:
                    return self._too_large_error()
        return None
