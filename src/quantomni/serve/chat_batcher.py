"""Micro-batching of non-streaming chat requests: requests that arrive within a short window are
decoded together through ``engine.chat_batch`` (one KV cache, per-row sampling and stops).

Why: decode is memory-bound; B rows per forward cost little more than one, so concurrent clients
get their replies sooner. Streaming requests and engines without ``chat_batch`` run one by one.
The worker thread starts on the first request and exits after ``idle_exit_s`` without work.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import queue
import threading
import time


@dataclasses.dataclass
class _Job:
    messages: list
    params: object
    future: concurrent.futures.Future


class ChatBatcher:
    """engine: has ``chat_batch(conversations, params_list)``; max_batch: rows per forward;
    window_s: how long the first request waits for company."""

    def __init__(self, engine, max_batch: int = 8, window_s: float = 0.005, idle_exit_s: float = 30.0):
        if max_batch < 1 or window_s < 0:
            raise ValueError(f"ChatBatcher: max_batch must be >= 1 and window_s >= 0, got {max_batch}, {window_s}")
        self.engine = engine
        self.max_batch = max_batch
        self.window_s = window_s
        self.idle_exit_s = idle_exit_s
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.batch_sizes: list[int] = []  # for metrics and tests

    def submit(self, messages, params) -> concurrent.futures.Future:
        job = _Job(messages, params, concurrent.futures.Future())
        self._queue.put(job)
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="quantomni-chat-batcher", daemon=True)
                self._thread.start()
        return job.future

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=self.idle_exit_s)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():  # a submit after this point starts a new thread
                        self._thread = None
                        return
                continue
            batch = [first]
            deadline = time.monotonic() + self.window_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            self._execute([j for j in batch if j.future.set_running_or_notify_cancel()])

    def _execute(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        self.batch_sizes.append(len(jobs))
        try:
            results = self.engine.chat_batch([j.messages for j in jobs], [j.params for j in jobs])
        except BaseException as exc:  # every waiting request learns why
            for j in jobs:
                j.future.set_exception(exc)
            return
        for j, r in zip(jobs, results):
            j.future.set_result(r)
