"""One engine worker thread fed by a bounded queue, batching compatible requests.

Why a thread: ``ImageEngine.generate`` is blocking and not thread-safe, so exactly one
thread ever calls it, and the asyncio event loop stays free to accept, validate, reject
(429) and time out requests while a batch runs.

Batching: the worker takes the oldest queued job, then every other queued job with the
same :class:`BatchKey` (height, width, steps, guidance, n), oldest first, up to
``max_batch_size`` jobs (and ``max_batch_images`` images when set), and hands them to
one ``generate`` call.

Cancellation (timeout or client disconnect), see :meth:`Batcher.cancel`:
- a queued job is removed from the queue: the engine never sees it;
- a running job is marked cancelled and its result discarded. The batch's
  ``cancel_event`` is set only once *every* job in the batch is cancelled, so a request
  that times out never fails the requests it shares a batch with; a job running alone
  is therefore stopped at the next denoising step.

Failures: if a batched ``generate`` raises, each live job is retried alone (when
``isolate_failed_batches``), so one bad request cannot fail its neighbours; a job that
fails alone gets :class:`GenerationFailed` (the HTTP layer answers 500).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .engine import GenerationCancelled, ImageEngine
from .metrics import Metrics
from .schemas import GenerationParams
from .settings import ServeSettings

log = logging.getLogger("quantomni.serve")


class QueueFullError(RuntimeError):
    """The queue holds ``max_queue`` jobs already (answered 429)."""


class ShuttingDownError(RuntimeError):
    """The server is stopping; the job was not (or not fully) run (answered 503)."""


class GenerationFailed(RuntimeError):
    """``generate`` raised for this job (answered 500 with the message)."""


@dataclass(frozen=True)
class BatchKey:
    height: int
    width: int
    num_inference_steps: int
    guidance_scale: float | None
    num_images: int

    @classmethod
    def of(cls, params: GenerationParams) -> "BatchKey":
        return cls(params.height, params.width, params.num_inference_steps, params.guidance_scale, params.n)


@dataclass
class JobResult:
    images: list[Any]
    """This job's PIL images (``params.n`` of them)."""
    timings: dict[str, float]
    peak_memory_bytes: int | None
    batch_size: int


@dataclass(eq=False)
class Job:
    params: GenerationParams
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    key: BatchKey
    enqueued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    state: str = "queued"  # queued -> running -> finished, or -> cancelled
    batch: "_Batch | None" = None


@dataclass(eq=False)
class _Batch:
    jobs: list[Job]
    cancel_event: threading.Event = field(default_factory=threading.Event)


def _resolve(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Batcher:
    """Owns the queue and the single engine worker thread."""

    def __init__(self, engine: ImageEngine, settings: ServeSettings, metrics: Metrics | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.metrics = metrics or Metrics()
        self._cond = threading.Condition()
        self._queue: deque[Job] = deque()
        self._running: _Batch | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._worker, name="quantomni-engine-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Fail queued jobs with ShuttingDownError, cancel the running batch, join the worker."""
        with self._cond:
            self._stopping = True
            queued = list(self._queue)
            self._queue.clear()
            for job in queued:
                job.state = "cancelled"
            if self._running is not None:
                self._running.cancel_event.set()
            self._cond.notify_all()
        for job in queued:
            self._post(job, None, ShuttingDownError("the server is shutting down"))
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    # -- event-loop side -----------------------------------------------------------------
    def submit(self, params: GenerationParams) -> Job:
        """Queue a job (call from the event loop); its ``future`` resolves to a JobResult."""
        loop = asyncio.get_running_loop()
        job = Job(params=params, loop=loop, future=loop.create_future(), key=BatchKey.of(params))
        if self._thread is None and not self._stopping:
            self.start()  # e.g. an ASGI server run without lifespan events
        with self._cond:
            if self._stopping:
                raise ShuttingDownError("the server is shutting down")
            if len(self._queue) >= self.settings.max_queue:
                raise QueueFullError(f"the queue is full ({self.settings.max_queue} requests waiting)")
            self._queue.append(job)
            self._cond.notify_all()
        return job

    def cancel(self, job: Job, reason: str) -> bool:
        """Withdraw a job (timeout, disconnect); safe from any thread, idempotent.

        Returns False when the job had already finished (its result is on its way to the
        future), True when it was withdrawn now or earlier.
        """
        with self._cond:
            if job.state == "finished":
                return False
            if job.state == "queued":
                self._queue.remove(job)
                job.state = "cancelled"
            elif job.state == "running":
                job.state = "cancelled"
                batch = job.batch
                if batch is not None and all(j.state == "cancelled" for j in batch.jobs):
                    batch.cancel_event.set()
            else:
                return True
        self.metrics.count_cancelled(reason)
        log.info("request cancelled (%s) after %.2fs", reason, time.monotonic() - job.enqueued_at)
        return True

    @property
    def worker_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def queue_depth(self) -> int:
        with self._cond:
            return len(self._queue)

    @property
    def running(self) -> int:
        with self._cond:
            return 0 if self._running is None else sum(j.state == "running" for j in self._running.jobs)

    # -- worker side -------------------------------------------------------------------------
    def _post(self, job: Job, result: JobResult | None, error: BaseException | None) -> None:
        try:
            job.loop.call_soon_threadsafe(_resolve, job.future, result, error)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    def _take_batch(self) -> _Batch | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            # Let concurrent arrivals join for a moment (bounded by batch_window_s).
            deadline = time.monotonic() + self.settings.batch_window_s
            while len(self._queue) < self.settings.max_batch_size and not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if self._stopping:
                return None
            if not self._queue:  # all withdrawn meanwhile
                return _Batch(jobs=[])
            first = self._queue.popleft()
            jobs = [first]
            limit = self.settings.max_batch_size
            if self.settings.max_batch_images is not None:
                limit = min(limit, max(1, self.settings.max_batch_images // first.key.num_images))
            for job in list(self._queue):
                if len(jobs) >= limit:
                    break
                if job.key == first.key:
                    self._queue.remove(job)
                    jobs.append(job)
            batch = _Batch(jobs=jobs)
            now = time.monotonic()
            for job in jobs:
                job.state, job.batch, job.started_at = "running", batch, now
            self._running = batch
            return batch

    def _worker(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            if batch.jobs:
                try:
                    self._run(batch, allow_isolation=self.settings.isolate_failed_batches)
                except BaseException:  # never let the worker die: the server must keep serving
                    log.exception("engine worker: unexpected error")
                    for job in batch.jobs:
                        self._finish(job, None, GenerationFailed("internal error in the engine worker"))
            with self._cond:
                self._running = None

    def _finish(self, job: Job, result: JobResult | None, error: BaseException | None) -> None:
        with self._cond:
            if job.state == "cancelled":
                return
            job.state = "finished"
        self._post(job, result, error)

    def _run(self, batch: _Batch, allow_isolation: bool) -> None:
        jobs = batch.jobs
        key = jobs[0].key
        negatives = [j.params.negative_prompt for j in jobs]
        started = time.perf_counter()
        try:
            result = self.engine.generate(
                prompt=[j.params.prompt for j in jobs],
                negative_prompt=None if all(n is None for n in negatives) else negatives,
                height=key.height, width=key.width, num_inference_steps=key.num_inference_steps,
                guidance_scale=key.guidance_scale, seed=[j.params.seed for j in jobs],
                num_images=key.num_images, cancel_event=batch.cancel_event,
            )
            expected = len(jobs) * key.num_images
            if len(result.images) != expected:
                raise RuntimeError(f"engine returned {len(result.images)} images, expected {expected}")
        except GenerationCancelled:
            error = ShuttingDownError("generation was cancelled because the server is shutting down")
            for job in jobs:
                self._finish(job, None, error)  # jobs cancelled by clients are skipped
            return
        except Exception as exc:  # the engine failed: answer, log, keep serving
            self.metrics.count_generation_failure()
            live = [j for j in jobs if j.state == "running"]
            if allow_isolation and len(live) > 1 and not self._stopping:
                log.warning("batch of %d failed (%s: %s); retrying each request alone",
                            len(jobs), type(exc).__name__, exc)
                for job in live:
                    with self._cond:
                        if job.state != "running":
                            continue
                        solo = _Batch(jobs=[job])
                        job.batch = solo
                        self._running = solo
                    self._run(solo, allow_isolation=False)
                return
            log.error("generation failed: %s: %s", type(exc).__name__, exc)
            error = GenerationFailed(f"{type(exc).__name__}: {exc}")
            for job in jobs:
                self._finish(job, None, error)
            return
        elapsed = time.perf_counter() - started
        self.metrics.observe_batch(len(jobs), len(result.images), elapsed, result.peak_memory_bytes)
        n = key.num_images
        timings = {k: float(v) for k, v in dict(result.timings).items()}
        for i, job in enumerate(jobs):
            job_timings = dict(timings)
            job_timings["queue_s"] = (job.started_at or started) - job.enqueued_at
            self._finish(job, JobResult(images=list(result.images[i * n:(i + 1) * n]), timings=job_timings,
                                        peak_memory_bytes=result.peak_memory_bytes, batch_size=len(jobs)), None)
