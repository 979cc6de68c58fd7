"""Run the app under uvicorn: in the foreground (CLI) or in a background thread (tests).

The background helper binds its own socket on a free port first, so the port is known
before uvicorn starts and there is no race between picking a port and binding it.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass

from .app import create_app
from .engine import ImageEngine
from .settings import ServeSettings

log = logging.getLogger("quantomni.serve")


def _uvicorn():
    try:
        import uvicorn
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("quantomni serve needs uvicorn: pip install 'quantomni[serve]'") from exc
    return uvicorn


def describe_summary(description: dict) -> str:
    """Human-readable start-up summary of engine.describe()."""
    lines = [f"model {description.get('model')} on {description.get('device')} ({description.get('dtype')}), "
             f"loaded in {float(description.get('load_time_s') or 0):.1f} s"]
    for name, info in (description.get("components") or {}).items():
        if not isinstance(info, dict):
            continue
        method = info.get("method") or "unquantized"
        mib = float(info.get("weight_bytes") or 0) / 2**20
        lines.append(f"  {name:<16} {str(info.get('class')):<32} {method:<14} "
                     f"{int(info.get('quantized_layers') or 0):>5} quantized layers  {mib:>10.1f} MiB")
    attention = description.get("attention")
    if isinstance(attention, dict) and attention.get("mode") not in (None, "sdpa"):
        lines.append(f"  attention: {attention['mode']} on {attention.get('processors')} modules, kernel "
                     f"{attention.get('kernel')}")
    return "\n".join(lines)


def _log_startup(engine: ImageEngine, settings: ServeSettings) -> None:
    log.info("%s", describe_summary(engine.describe()))
    log.info("serving %r on http://%s:%d (api key %s, max batch %d, queue %d, timeout %g s)",
             engine.model_id, settings.host, settings.port, "required" if settings.api_key else "not set",
             settings.max_batch_size, settings.max_queue, settings.request_timeout_s)
    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        log.warning("listening on %s without an API key: anyone who can reach it can use the GPU",
                    settings.host)


def _ensure_log_output(level: str) -> None:
    """Make the start-up summary visible when the caller configured no logging."""
    if not logging.getLogger().handlers and not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
    log.setLevel(level.upper())


def run_server(engine: ImageEngine, settings: ServeSettings | None = None) -> None:
    """Serve until interrupted (blocking)."""
    settings = settings or ServeSettings()
    uvicorn = _uvicorn()
    _ensure_log_output(settings.log_level)
    app = create_app(engine, settings)
    _log_startup(engine, settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                timeout_graceful_shutdown=5)


@dataclass
class BackgroundServer:
    url: str
    """Base URL, e.g. http://127.0.0.1:54321 (no trailing slash)."""
    app: object
    _server: object
    _thread: threading.Thread

    def stop(self, timeout_s: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout_s)

    def __enter__(self) -> "BackgroundServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_background_server(engine: ImageEngine, settings: ServeSettings | None = None,
                            startup_timeout_s: float = 15.0,
                            graceful_shutdown_s: float = 2.0) -> BackgroundServer:
    """Start a real uvicorn server on ``settings.host`` and a free port, in a daemon thread.

    On ``stop()`` requests still in flight after ``graceful_shutdown_s`` are answered 503.
    """
    settings = settings or ServeSettings()
    uvicorn = _uvicorn()
    app = create_app(engine, settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="critical", timeout_graceful_shutdown=graceful_shutdown_s,
                            lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="quantomni-uvicorn",
                              daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"uvicorn did not start on {settings.host}:{port} within {startup_timeout_s} s")
        time.sleep(0.01)
    return BackgroundServer(url=f"http://{settings.host}:{port}", app=app, _server=server, _thread=thread)
