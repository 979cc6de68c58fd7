"""Batcher without HTTP: shutdown, cancel semantics, FIFO batching."""

import asyncio
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from serve_fakes import FakeEngine, wait_until  # noqa: E402

from quantomni.serve.batcher import Batcher, QueueFullError, ShuttingDownError
from quantomni.serve.schemas import GenerationParams
from quantomni.serve.settings import ServeSettings


def params(prompt, size=32, steps=1, n=1, seed=0):
    return GenerationParams(prompt=prompt, negative_prompt=None, height=size, width=size,
                            num_inference_steps=steps, guidance_scale=None, seed=seed, n=n, output_format="png")


def test_serve_batcher_stop_fails_queued_and_cancels_running():
    async def main():
        gate = threading.Event()
        engine = FakeEngine(gate=gate, step_delay_s=0.01)
        batcher = Batcher(engine, ServeSettings(api_key=None, max_batch_size=1, max_queue=1))
        batcher.start()
        running = batcher.submit(params("running", steps=100))
        assert await asyncio.to_thread(engine.started.wait, 5)
        queued = batcher.submit(params("queued", size=48))
        with pytest.raises(QueueFullError):
            batcher.submit(params("one too many"))
        stopper = asyncio.create_task(asyncio.to_thread(batcher.stop))
        assert await asyncio.to_thread(wait_until, lambda: batcher._stopping)
        gate.set()
        await stopper
        for job in (running, queued):
            with pytest.raises(ShuttingDownError):
                await asyncio.wait_for(job.future, 5)
        assert "running" in engine.cancelled_prompts and "queued" not in engine.received_prompts
        assert not batcher.worker_alive
        with pytest.raises(ShuttingDownError):
            batcher.submit(params("late"))

    asyncio.run(main())


def test_serve_batcher_cancel_semantics():
    async def main():
        gate = threading.Event()
        engine = FakeEngine(gate=gate)
        batcher = Batcher(engine, ServeSettings(api_key=None, max_batch_size=8))
        batcher.start()
        try:
            blocker = batcher.submit(params("blocker", size=64))
            assert await asyncio.to_thread(engine.started.wait, 5)
            a = batcher.submit(params("a", seed=1))
            b = batcher.submit(params("b", seed=2))
            c = batcher.submit(params("c", seed=3))
            assert batcher.cancel(b, "test") and batcher.cancel(b, "test")  # idempotent
            assert batcher.queue_depth == 2
            gate.set()
            results = [await asyncio.wait_for(j.future, 5) for j in (blocker, a, c)]
            assert [len(r.images) for r in results] == [1, 1, 1]
            assert engine.batch_sizes == [1, 2] and "b" not in engine.received_prompts
            assert not batcher.cancel(a, "late")  # already finished
            assert not b.future.done()  # the HTTP layer answers cancelled jobs itself
        finally:
            await asyncio.to_thread(batcher.stop)

    asyncio.run(main())


def test_serve_batcher_max_batch_images_caps_requests_times_n():
    async def main():
        gate = threading.Event()
        engine = FakeEngine(gate=gate)
        batcher = Batcher(engine, ServeSettings(api_key=None, max_batch_size=8, max_batch_images=5))
        batcher.start()
        try:
            jobs = [batcher.submit(params("blocker", size=64))]
            assert await asyncio.to_thread(engine.started.wait, 5)
            jobs += [batcher.submit(params(f"p{i}", n=2, seed=i)) for i in range(5)]
            gate.set()
            for job in jobs:
                assert len((await asyncio.wait_for(job.future, 5)).images) == job.params.n
            assert engine.batch_sizes == [1, 2, 2, 1]  # 5 images // n=2 -> 2 requests per call
        finally:
            await asyncio.to_thread(batcher.stop)

    asyncio.run(main())


def test_serve_engine_protocol_and_create_app_checks():
    from quantomni.serve.app import create_app
    from quantomni.serve.engine import ImageEngine

    assert isinstance(FakeEngine(), ImageEngine)
    with pytest.raises(TypeError, match="lacks describe, generate"):
        create_app(type("NotAnEngine", (), {"model_id": "x"})(), ServeSettings(api_key=None))
    with pytest.raises(TypeError, match="model_id"):
        create_app(FakeEngine(model_id=""), ServeSettings(api_key=None))
