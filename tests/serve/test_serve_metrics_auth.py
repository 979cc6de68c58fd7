"""/metrics parses and counts; /health stays open with a key; settings and helpers."""

import math
import re
import sys
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from serve_fakes import FakeEngine, running_server  # noqa: E402

from quantomni.serve.app import create_app
from quantomni.serve.metrics import Metrics
from quantomni.serve.middleware import bearer_token_matches
from quantomni.serve.schemas import APIError, parse_size
from quantomni.serve.server import describe_summary
from quantomni.serve.settings import ServeSettings, ServeSettingsError

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text: str) -> dict:
    """Strict-enough parser of Prometheus text format: {(name, frozenset(labels)): value}."""
    samples, types = {}, {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram") and name not in types
            types[name] = kind
            continue
        match = SAMPLE.match(line)
        assert match, f"bad exposition line: {line!r}"
        name, labels, value = match.group(1), match.group(2) or "", match.group(3)
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in types or base in types, f"sample {name} has no TYPE"
        number = float(value)  # '+Inf' parses too
        assert not math.isnan(number)
        samples[(name, frozenset(LABEL.findall(labels)))] = number
    return samples


def test_serve_metrics_parse_and_count():
    with running_server(FakeEngine()) as (handle, _):
        with httpx.Client(base_url=handle.url, timeout=10) as client:
            for seed in range(3):
                assert client.post("/v1/images/generations", json={
                    "prompt": "m", "size": "32x32", "num_inference_steps": 1, "seed": seed, "n": 2}).status_code == 200
            assert client.post("/v1/images/generations", json={"prompt": "m", "size": "33x32"}).status_code == 400
            client.get("/no/such/path")
            samples = parse_exposition(client.get("/metrics").text)
    gen = "/v1/images/generations"

    def value(name, **labels):
        return samples[(name, frozenset(labels.items()))]

    assert value("quantomni_requests_total", route=gen, method="POST", status="200") == 3
    assert value("quantomni_requests_total", route=gen, method="POST", status="400") == 1
    assert value("quantomni_requests_total", route="other", method="GET", status="404") == 1
    assert value("quantomni_images_generated_total") == 6
    assert value("quantomni_queue_depth") == 0
    assert value("quantomni_request_duration_seconds_count", route=gen) == 4
    assert value("quantomni_request_duration_seconds_bucket", route=gen, le="+Inf") == 4
    assert value("quantomni_batch_size_count") == 3
    assert value("quantomni_last_generation_peak_memory_bytes") == 4096
    buckets = sorted((float(dict(k[1])["le"]), v) for k, v in samples.items()
                     if k[0] == "quantomni_request_duration_seconds_bucket" and dict(k[1])["route"] == gen)
    assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:]))  # cumulative


def test_serve_metrics_label_escaping():
    metrics = Metrics()
    metrics.observe_request('we"ird\\route\n', "GET", 200, 0.1)
    samples = parse_exposition(metrics.render(queue_depth=2, running=1))
    assert samples[("quantomni_queue_depth", frozenset())] == 2


def test_serve_health_open_with_key_and_env_fallback(monkeypatch):
    monkeypatch.setenv("QUANTOMNI_API_KEY", "from-env")
    settings = ServeSettings()
    assert settings.api_key == "from-env"
    monkeypatch.delenv("QUANTOMNI_API_KEY")
    assert ServeSettings().api_key is None and ServeSettings(api_key="").api_key is None
    with running_server(FakeEngine(), api_key="from-env") as (handle, _):
        with httpx.Client(base_url=handle.url, timeout=10) as client:
            health = client.get("/health")
            assert health.status_code == 200 and health.json()["status"] == "ok"
            assert client.get("/v1/models").status_code == 401
            assert client.get("/v1/models", headers={"Authorization": "Bearer from-env"}).status_code == 200


def test_serve_bearer_token_matching():
    assert bearer_token_matches([(b"authorization", b"Bearer k1")], "k1")
    assert bearer_token_matches([(b"Authorization", b"bearer   k1 ")], "k1")
    assert not bearer_token_matches([(b"authorization", b"Bearer k2")], "k1")
    assert not bearer_token_matches([(b"authorization", b"Bearer ")], "k1")
    assert not bearer_token_matches([(b"authorization", b"k1")], "k1")
    assert not bearer_token_matches([], "k1")


def test_serve_settings_validation_and_size_parsing():
    with pytest.raises(ServeSettingsError, match="max_batch_size=0"):
        ServeSettings(max_batch_size=0)
    with pytest.raises(ServeSettingsError, match="request_timeout_s"):
        ServeSettings(request_timeout_s=0)
    with pytest.raises(ServeSettingsError, match="default_size"):
        create_app(FakeEngine(), ServeSettings(default_size="1000x1000"))
    settings = ServeSettings(max_pixels=512 * 512, max_side=1024)
    assert parse_size("512x256", settings) == (512, 256)
    for bad in ("512x512x1", "-16x16", "16*16", "2048x16", " 16x16", "1024x1024"):
        with pytest.raises(APIError) as info:
            parse_size(bad, settings)
        assert info.value.status == 400 and info.value.param == "size"
    with pytest.raises(AttributeError):
        settings.port = 1  # frozen


def test_serve_describe_summary_lists_components():
    text = describe_summary(FakeEngine().describe())
    assert "transformer" in text and "fp8" in text and "12 quantized layers" in text
    assert "unquantized" in text


def test_serve_metrics_device_memory_when_cuda_is_there(monkeypatch):
    from types import SimpleNamespace

    cuda = SimpleNamespace(is_available=lambda: True, device_count=lambda: 2,
                           memory_allocated=lambda i: 100 + i, memory_reserved=lambda i: 200 + i,
                           max_memory_allocated=lambda i: 300 + i)
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=cuda))
    samples = parse_exposition(Metrics().render(queue_depth=0, running=0))
    assert samples[("quantomni_device_memory_allocated_bytes", frozenset({("device", "1")}))] == 101
    assert samples[("quantomni_device_memory_max_allocated_bytes", frozenset({("device", "0")}))] == 300

    def broken():
        raise RuntimeError("driver gone")

    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=SimpleNamespace(is_available=broken)))
    assert "device_memory" not in Metrics().render(queue_depth=0, running=0)  # a scrape never fails


class _OddDescribeEngine(FakeEngine):
    def describe(self):
        info = super().describe()
        info["dtype"] = object()  # e.g. a torch.dtype: not JSON-serialisable
        return info


def test_serve_models_with_non_json_describe():
    with running_server(_OddDescribeEngine()) as (handle, _):
        with httpx.Client(base_url=handle.url, timeout=10) as client:
            resp = client.get("/v1/models")
            assert resp.status_code == 200 and "object" in resp.json()["data"][0]["metadata"]["dtype"]
