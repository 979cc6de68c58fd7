"""Every error path over raw HTTP: status code and OpenAI error shape with param."""

import json
import socket
import sys
import threading
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from serve_fakes import FAIL_PROMPT, MODEL_ID, FakeEngine, running_server, wait_until  # noqa: E402

GEN = "/v1/images/generations"
OK_BODY = {"prompt": "a cat", "size": "32x32", "num_inference_steps": 1, "seed": 5}


def assert_error(resp: httpx.Response, status: int, param: str | None = "<any>", contains: str = "") -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    if param != "<any>":
        assert error["param"] == param, error
    assert contains in error["message"], error
    return error


@pytest.fixture(scope="module")
def server():
    with running_server(max_n=3, max_steps=10, max_prompt_chars=50, max_pixels=128 * 128,
                        default_num_inference_steps=2, default_size="32x32",
                        max_body_bytes=4096) as (handle, engine):
        with httpx.Client(base_url=handle.url, timeout=20) as client:
            yield client, engine


@pytest.mark.parametrize("patch, param, contains", [
    ({"size": "64x65"}, "size", "multiple of 16"),
    ({"size": "256x256"}, "size", "budget"),
    ({"size": "big"}, "size", "WIDTHxHEIGHT"),
    ({"size": "0x64"}, "size", "between"),
    ({"n": 4}, "n", "1..3"),
    ({"n": 0}, "n", "1..3"),
    ({"num_inference_steps": 11}, "num_inference_steps", "1..10"),
    ({"num_inference_steps": 0}, "num_inference_steps", "1..10"),
    ({"prompt": "x" * 51}, "prompt", "limit is 50"),
    ({"prompt": "   "}, "prompt", "non-empty"),
    ({"negative_prompt": "y" * 51}, "negative_prompt", "limit is 50"),
    ({"response_format": "url"}, "response_format", "b64_json"),
    ({"seed": -1}, "seed", "out of range"),
    ({"guidance_scale": -1.0}, "guidance_scale", "out of range"),
    ({"stream": True}, "stream", "not supported"),
])
def test_serve_error_400_bounds(server, patch, param, contains):
    client, _ = server
    error = assert_error(client.post(GEN, json={**OK_BODY, **patch}), 400, param, contains)
    assert error["type"] == "invalid_request_error"


def test_serve_error_400_nan_guidance_and_bad_json(server):
    client, _ = server
    raw = '{"prompt": "a", "size": "32x32", "guidance_scale": NaN}'
    assert_error(client.post(GEN, content=raw, headers={"content-type": "application/json"}), 400,
                 "guidance_scale")
    assert_error(client.post(GEN, content="{not json", headers={"content-type": "application/json"}),
                 400, None, "not valid JSON")
    assert_error(client.post(GEN, content=b"\xff\xfe", headers={"content-type": "application/json"}),
                 400, None, "not valid JSON")
    assert_error(client.post(GEN, content=""), 400, None, "empty")


def test_serve_json_body_accepted_whatever_the_content_type(server):
    client, _ = server
    raw = json.dumps(OK_BODY)
    for content_type in ("application/x-www-form-urlencoded", "text/plain", None):
        headers = {"content-type": content_type} if content_type else {}
        resp = client.post(GEN, content=raw, headers=headers)
        assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("patch, param", [
    ({"n": "2"}, "n"),
    ({"n": 1.5}, "n"),
    ({"n": True}, "n"),
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"size": 64}, "size"),
    ({"seed": "1"}, "seed"),
    ({"output_format": "gif"}, "output_format"),
    ({"response_format": "png"}, "response_format"),
    ({"guidance_scale": "high"}, "guidance_scale"),
])
def test_serve_error_422_wrong_types(server, patch, param):
    client, _ = server
    assert_error(client.post(GEN, json={**OK_BODY, **patch}), 422, param, param)


def test_serve_error_422_missing_prompt_and_non_object(server):
    client, _ = server
    assert_error(client.post(GEN, json={"size": "32x32"}), 422, "prompt", "Missing required field")
    assert_error(client.post(GEN, json=["a"]), 422, None, "JSON object")
    assert_error(client.post(GEN, json="a"), 422, None, "JSON object")


def test_serve_error_404_model_and_route(server):
    client, _ = server
    error = assert_error(client.post(GEN, json={**OK_BODY, "model": "dall-e-3"}), 404, "model", "dall-e-3")
    assert error["code"] == "model_not_found" and MODEL_ID in error["message"]
    assert_error(client.get("/v1/models/nope"), 404, "model")
    assert_error(client.get("/v1/nothing-here"), 404, None, "Unknown route")
    assert_error(client.get(GEN), 405, None)


def test_serve_error_413_body_too_large(server):
    client, _ = server
    assert_error(client.post(GEN, json={**OK_BODY, "prompt": "x" * 5000}), 413, None, "4096 bytes")

    def chunks():
        for _ in range(10):
            yield b"x" * 1000

    assert_error(client.post(GEN, content=chunks(), headers={"content-type": "application/json"}), 413)
    assert client.post(GEN, json=OK_BODY).status_code == 200


def test_serve_error_500_then_next_request_ok(server):
    client, engine = server
    error = assert_error(client.post(GEN, json={**OK_BODY, "prompt": FAIL_PROMPT}), 500, None,
                         "magic failure prompt")
    assert error["type"] == "server_error" and error["code"] == "generation_failed"
    resp = client.post(GEN, json=OK_BODY)
    assert resp.status_code == 200 and len(resp.json()["data"]) == 1
    assert client.get("/health").json()["status"] == "ok"


def test_serve_error_401_without_key():
    with running_server(api_key="secret-key") as (handle, _):
        with httpx.Client(base_url=handle.url, timeout=10) as client:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "secret-key"},
                            {"Authorization": "Basic secret-key"}):
                resp = client.post(GEN, json=OK_BODY, headers=headers)
                error = assert_error(resp, 401, None, "API key")
                assert error["code"] == "invalid_api_key" and resp.headers["www-authenticate"] == "Bearer"
            assert_error(client.get("/v1/models"), 401)
            assert_error(client.get("/v1/unknown"), 401)  # auth comes before routing
            # auth is checked before the body is parsed: garbage body without key is still 401
            assert_error(client.post(GEN, content="{bad", headers={"content-type": "application/json"}), 401)
            good = {"Authorization": "Bearer secret-key"}
            assert client.post(GEN, json=OK_BODY, headers=good).status_code == 200
            assert client.get("/v1/models", headers={"authorization": "bearer secret-key"}).status_code == 200
            assert client.get("/health").status_code == 200
            assert client.get("/metrics").status_code == 200


def test_serve_error_429_queue_full():
    engine = FakeEngine(step_delay_s=0.05)
    with running_server(engine, max_queue=1, max_batch_size=1) as (handle, _):
        results = {}

        def post(name, body):
            with httpx.Client(base_url=handle.url, timeout=20) as c:
                results[name] = c.post(GEN, json=body)

        running = threading.Thread(target=post, args=("running", {**OK_BODY, "num_inference_steps": 10}))
        running.start()
        assert engine.started.wait(5)
        queued = threading.Thread(target=post, args=("queued", {**OK_BODY, "size": "48x48"}))
        queued.start()
        assert wait_until(lambda: handle.app.state.batcher.queue_depth == 1)
        with httpx.Client(base_url=handle.url, timeout=20) as c:
            resp = c.post(GEN, json=OK_BODY)
        error = assert_error(resp, 429, None, "queue is full")
        assert resp.headers["retry-after"] == "1" and error["type"] == "rate_limit_error"
        running.join(10)
        queued.join(10)
        assert results["running"].status_code == 200 and results["queued"].status_code == 200


def test_serve_error_504_timeout_cancels_running_and_queued():
    gate = threading.Event()
    engine = FakeEngine(step_delay_s=0.01, gate=gate)
    with running_server(engine, request_timeout_s=0.3, max_batch_size=1) as (handle, _):
        results = {}

        def post(name, body):
            with httpx.Client(base_url=handle.url, timeout=20) as c:
                results[name] = c.post(GEN, json=body)

        slow = threading.Thread(target=post, args=("slow", {**OK_BODY, "prompt": "slow", "num_inference_steps": 5}))
        slow.start()
        assert engine.started.wait(5)
        post("waiting", {**OK_BODY, "prompt": "waiting", "size": "48x48"})  # queued behind "slow"
        slow.join(10)
        for name in ("slow", "waiting"):
            error = assert_error(results[name], 504, None, "timed out")
            assert error["type"] == "timeout_error" and error["code"] == "timeout"
        assert handle.app.state.batcher.queue_depth == 0
        gate.set()  # the engine reaches its next step boundary and must see cancel_event
        assert wait_until(lambda: "slow" in engine.cancelled_prompts)
        assert "slow" not in engine.completed_prompts
        assert "waiting" not in engine.received_prompts  # dropped while queued
        with httpx.Client(base_url=handle.url, timeout=20) as c:
            assert c.post(GEN, json=OK_BODY).status_code == 200


class _WrongCountEngine(FakeEngine):
    def generate(self, *args, **kwargs):
        result = super().generate(*args, **kwargs)
        result.images = result.images[:-1]
        return result


def test_serve_error_500_engine_contract_violation():
    with running_server(_WrongCountEngine()) as (handle, _):
        with httpx.Client(base_url=handle.url, timeout=10) as client:
            assert_error(client.post(GEN, json=OK_BODY), 500, None, "expected 1")
            assert client.get("/health").json()["status"] == "ok"


def test_serve_error_raw_socket_garbage_keeps_serving(server):
    client, _ = server
    host, port = client.base_url.host, client.base_url.port
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        sock.recv(1024)
    resp = client.post(GEN, content=json.dumps(OK_BODY), headers={"content-type": "application/json"})
    assert resp.status_code == 200


def test_serve_no_request_field_touches_the_filesystem(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with running_server(FakeEngine()) as (handle, _):
        with httpx.Client(base_url=handle.url, timeout=10) as client:
            for patch in ({"prompt": "../../etc/passwd"}, {"model": "/etc/passwd"}, {"user": "out.png"},
                          {"output_format": "../x.png"}, {"size": "../64x64"}):
                client.post(GEN, json={**OK_BODY, **patch})
            assert client.post(GEN, json={**OK_BODY, "prompt": "./out.png"}).status_code == 200
    assert list(tmp_path.iterdir()) == []
