"""Prometheus text exposition (format 0.0.4), written by hand to avoid a dependency.

Thread-safe: the event loop records requests, the engine worker records batches.
Route labels are the matched route templates (unknown paths -> "other") so a client
cannot blow up the label cardinality.
"""

from __future__ import annotations

import sys
import threading
from collections import defaultdict

LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: str) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, **labels: str) -> list[str]:
        out = []
        for bound, count in zip(self.buckets, self.counts):
            out.append(f"{name}_bucket{_labels(**labels, le=_number(bound))} {count}")
        out.append(f"{name}_bucket{_labels(**labels, le='+Inf')} {self.count}")
        out.append(f"{name}_sum{_labels(**labels)} {_number(self.sum)}")
        out.append(f"{name}_count{_labels(**labels)} {self.count}")
        return out


class Metrics:
    """Counters, gauges and histograms of one server process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self._latency: dict[str, _Histogram] = {}
        self._images_generated = 0
        self._batches = _Histogram(BATCH_SIZE_BUCKETS)
        self._generation_seconds = _Histogram(LATENCY_BUCKETS_S)
        self._generation_failures = 0
        self._cancelled: dict[str, int] = defaultdict(int)
        self._last_peak_memory: int | None = None

    # -- recording -------------------------------------------------------------------
    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            self._requests[(route, method, str(status))] += 1
            hist = self._latency.get(route)
            if hist is None:
                hist = self._latency[route] = _Histogram(LATENCY_BUCKETS_S)
            hist.observe(seconds)

    def observe_batch(self, size: int, images: int, seconds: float, peak_memory_bytes: int | None) -> None:
        with self._lock:
            self._batches.observe(size)
            self._generation_seconds.observe(seconds)
            self._images_generated += images
            if peak_memory_bytes is not None:
                self._last_peak_memory = int(peak_memory_bytes)

    def count_generation_failure(self) -> None:
        with self._lock:
            self._generation_failures += 1

    def count_cancelled(self, reason: str) -> None:
        with self._lock:
            self._cancelled[reason] += 1

    # -- exposition ------------------------------------------------------------------
    def render(self, queue_depth: int, running: int) -> str:
        """The whole exposition; queue figures are read from the batcher by the caller."""
        lines: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")

        with self._lock:
            family("quantomni_requests_total", "counter", "HTTP requests by route, method and status.")
            for (route, method, status), count in sorted(self._requests.items()):
                lines.append(f"quantomni_requests_total{_labels(route=route, method=method, status=status)} {count}")
            family("quantomni_request_duration_seconds", "histogram", "HTTP request latency by route.")
            for route, hist in sorted(self._latency.items()):
                lines.extend(hist.lines("quantomni_request_duration_seconds", route=route))
            family("quantomni_queue_depth", "gauge", "Requests waiting for the engine worker.")
            lines.append(f"quantomni_queue_depth {queue_depth}")
            family("quantomni_running_requests", "gauge", "Requests in the batch the engine is running.")
            lines.append(f"quantomni_running_requests {running}")
            family("quantomni_images_generated_total", "counter", "Images generated by the engine.")
            lines.append(f"quantomni_images_generated_total {self._images_generated}")
            family("quantomni_batch_size", "histogram", "Requests per engine generate() call.")
            lines.extend(self._batches.lines("quantomni_batch_size"))
            family("quantomni_generation_duration_seconds", "histogram", "Duration of engine generate() calls.")
            lines.extend(self._generation_seconds.lines("quantomni_generation_duration_seconds"))
            family("quantomni_generation_failures_total", "counter", "generate() calls that raised.")
            lines.append(f"quantomni_generation_failures_total {self._generation_failures}")
            family("quantomni_requests_cancelled_total", "counter", "Requests cancelled, by reason.")
            for reason, count in sorted(self._cancelled.items()):
                lines.append(f"quantomni_requests_cancelled_total{_labels(reason=reason)} {count}")
            if self._last_peak_memory is not None:
                family("quantomni_last_generation_peak_memory_bytes", "gauge",
                       "Peak device memory reported by the last generate() call.")
                lines.append(f"quantomni_last_generation_peak_memory_bytes {self._last_peak_memory}")
        lines.extend(_device_memory_lines())
        return "\n".join(lines) + "\n"


def _device_memory_lines() -> list[str]:
    """CUDA memory gauges, only when torch is already imported (never import it for this)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return []
    try:
        if not torch.cuda.is_available():
            return []
        readings = []
        for index in range(torch.cuda.device_count()):
            readings.append((str(index), torch.cuda.memory_allocated(index),
                             torch.cuda.memory_reserved(index), torch.cuda.max_memory_allocated(index)))
    except Exception:  # a metrics scrape must never fail because of the device
        return []
    lines = []
    for name, attr, help_text in (
        ("quantomni_device_memory_allocated_bytes", 1, "torch.cuda.memory_allocated per device."),
        ("quantomni_device_memory_reserved_bytes", 2, "torch.cuda.memory_reserved per device."),
        ("quantomni_device_memory_max_allocated_bytes", 3, "torch.cuda.max_memory_allocated per device."),
    ):
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} gauge")
        for reading in readings:
            lines.append(f"{name}{_labels(device=reading[0])} {reading[attr]}")
    return lines
