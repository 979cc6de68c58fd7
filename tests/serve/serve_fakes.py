"""FakeEngine and helpers shared by the tests/serve tests (imported via sys.path)."""

from __future__ import annotations

import hashlib
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from quantomni.serve.engine import GenerationCancelled
from quantomni.serve.server import start_background_server
from quantomni.serve.settings import ServeSettings

FAIL_PROMPT = "please fail now"
MODEL_ID = "fake/tiny-dit-fp8"


@dataclass
class FakeResult:
    images: list
    timings: dict
    peak_memory_bytes: int | None = None


def fake_pixels(prompt: str, seed: int | None, index: int, width: int, height: int) -> np.ndarray:
    """Deterministic in (prompt, seed, index, size); a random seed when seed is None."""
    if seed is None:
        seed = int(np.random.default_rng().integers(0, 2**63 - 1))
    digest = hashlib.sha256(f"{prompt}|{seed}|{index}|{width}x{height}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


@dataclass
class FakeEngine:
    """Honours cancel_event between 'steps', fails on FAIL_PROMPT, records what it saw."""

    step_delay_s: float = 0.0
    gate: threading.Event | None = None
    """When given, generate blocks (ignoring cancellation) until it is set: simulates a long step."""
    model_id: str = MODEL_ID
    batch_sizes: list = field(default_factory=list)
    received_prompts: list = field(default_factory=list)
    cancelled_prompts: list = field(default_factory=list)
    completed_prompts: list = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)
    active_calls: int = 0
    max_active_calls: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def describe(self) -> dict:
        return {
            "model": self.model_id, "device": "cpu", "dtype": "bfloat16", "load_time_s": 0.01,
            "components": {
                "transformer": {"class": "FakeTransformer", "method": "fp8", "quantized_layers": 12,
                                "weight_bytes": 123456},
                "text_encoder": {"class": "FakeTextEncoder", "method": None, "quantized_layers": 0,
                                 "weight_bytes": 654321},
            },
        }

    def generate(self, prompt, negative_prompt, height, width, num_inference_steps, guidance_scale, seed,
                 num_images, cancel_event=None):
        with self._lock:
            self.active_calls += 1
            self.max_active_calls = max(self.max_active_calls, self.active_calls)
            self.batch_sizes.append(len(prompt))
            self.received_prompts.extend(prompt)
        self.started.set()
        try:
            if self.gate is not None:
                self.gate.wait(10)
            assert len(seed) == len(prompt)
            assert negative_prompt is None or len(negative_prompt) == len(prompt)
            if any(FAIL_PROMPT in p for p in prompt):
                raise RuntimeError("magic failure prompt")
            t0 = time.perf_counter()
            for _ in range(num_inference_steps):
                if cancel_event is not None and cancel_event.is_set():
                    with self._lock:
                        self.cancelled_prompts.extend(prompt)
                    raise GenerationCancelled("cancelled")
                time.sleep(self.step_delay_s)
            if cancel_event is not None and cancel_event.is_set():
                with self._lock:
                    self.cancelled_prompts.extend(prompt)
                raise GenerationCancelled("cancelled")
            images = [Image.fromarray(fake_pixels(p, s, k, width, height))
                      for p, s in zip(prompt, seed) for k in range(num_images)]
            with self._lock:
                self.completed_prompts.extend(prompt)
            dt = time.perf_counter() - t0
            return FakeResult(images=images, timings={"total_s": dt, "denoise_s": dt}, peak_memory_bytes=4096)
        finally:
            with self._lock:
                self.active_calls -= 1


@contextmanager
def running_server(engine=None, graceful_shutdown_s=2.0, **settings_kwargs):
    """A real uvicorn server on 127.0.0.1 (free port) around a FakeEngine."""
    engine = engine or FakeEngine()
    settings_kwargs.setdefault("api_key", None)
    settings = ServeSettings(**settings_kwargs)
    handle = start_background_server(engine, settings, graceful_shutdown_s=graceful_shutdown_s)
    try:
        yield handle, engine
    finally:
        handle.stop()


def wait_until(predicate, timeout_s: float = 5.0, interval_s: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()
