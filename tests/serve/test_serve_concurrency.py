"""Batching, load, interleaved good/bad requests and disconnects against a real server."""

import base64
import io
import json
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from serve_fakes import FAIL_PROMPT, FakeEngine, fake_pixels, running_server, wait_until  # noqa: E402

GEN = "/v1/images/generations"


def body(prompt, seed=1, size="32x32", steps=1, **extra):
    return {"prompt": prompt, "seed": seed, "size": size, "num_inference_steps": steps, **extra}


def pixels_of(response_json, index=0):
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(response_json["data"][index]["b64_json"]))))


def post_in_thread(url, payload, results, name, timeout=20):
    def run():
        try:
            with httpx.Client(base_url=url, timeout=timeout) as client:
                results[name] = client.post(GEN, json=payload)
        except httpx.HTTPError as exc:
            results[name] = exc
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def open_raw_request(url, payload) -> socket.socket:
    """Send a complete POST on a raw socket and leave it open (closing it = disconnecting)."""
    parsed = httpx.URL(url)
    data = json.dumps(payload).encode()
    sock = socket.create_connection((parsed.host, parsed.port), timeout=10)
    sock.sendall(b"POST " + GEN.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    return sock


def test_serve_batches_compatible_requests():
    gate = threading.Event()
    engine = FakeEngine(gate=gate)
    with running_server(engine, max_batch_size=4) as (handle, _):
        results = {}
        threads = [post_in_thread(handle.url, body("blocker", size="64x64"), results, "blocker")]
        assert engine.started.wait(5)
        for i in range(5):
            threads.append(post_in_thread(handle.url, body(f"p{i}", seed=i), results, f"p{i}"))
        threads.append(post_in_thread(handle.url, body("odd", size="48x48"), results, "odd"))
        assert wait_until(lambda: handle.app.state.batcher.queue_depth == 6)
        gate.set()
        for t in threads:
            t.join(10)
        assert all(r.status_code == 200 for r in results.values()), results
        # blocker alone, then 4 compatible (max_batch_size), then the rest; 48x48 never mixed in
        assert engine.batch_sizes[0] == 1 and max(engine.batch_sizes) == 4
        assert sorted(engine.batch_sizes) == [1, 1, 1, 4] and engine.max_active_calls == 1
        for i in range(5):
            resp = results[f"p{i}"].json()
            np.testing.assert_array_equal(pixels_of(resp), fake_pixels(f"p{i}", i, 0, 32, 32))
        assert max(results[f"p{i}"].json()["usage"]["batch_size"] for i in range(5)) == 4
        assert pixels_of(results["odd"].json()).shape == (48, 48, 3)


def test_serve_load_40_requests_concurrency_8():
    engine = FakeEngine(step_delay_s=0.002)
    with running_server(engine, max_batch_size=4) as (handle, _):
        def one(i):
            payload = body(f"load {i}", seed=1000 + i, steps=2, n=1 + i % 2)
            with httpx.Client(base_url=handle.url, timeout=30) as client:
                t0 = time.perf_counter()
                resp = client.post(GEN, json=payload)
                return i, resp, time.perf_counter() - t0

        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(one, range(40)))
        latencies = sorted(dt for _, _, dt in outcomes)
        for i, resp, _ in outcomes:
            assert resp.status_code == 200, resp.text
            data = resp.json()
            assert len(data["data"]) == 1 + i % 2
            for k in range(1 + i % 2):
                np.testing.assert_array_equal(pixels_of(data, k), fake_pixels(f"load {i}", 1000 + i, k, 32, 32))
        assert sorted(engine.completed_prompts) == sorted(f"load {i}" for i in range(40))  # none lost/duplicated
        assert engine.max_active_calls == 1
        p50 = statistics.median(latencies)
        p99 = latencies[min(len(latencies) - 1, int(round(0.99 * (len(latencies) - 1))))]
        print(f"\nload: 40 requests @ concurrency 8: p50={p50 * 1000:.1f} ms p99={p99 * 1000:.1f} ms "
              f"batches={len(engine.batch_sizes)} max_batch={max(engine.batch_sizes)}")
        assert handle.app.state.batcher.queue_depth == 0


def test_serve_interleaved_good_and_bad_requests():
    engine = FakeEngine(step_delay_s=0.002)
    with running_server(engine, max_batch_size=4) as (handle, _):
        cases = []
        for i in range(30):
            kind = ["good", "bad_size", "bad_type", "bad_model", "fail", "good"][i % 6]
            payload = {
                "good": body(f"good {i}", seed=i),
                "bad_size": body(f"x {i}", size="30x30"),
                "bad_type": body(f"x {i}", steps="many"),
                "bad_model": body(f"x {i}", model="someone-else"),
                "fail": body(f"{FAIL_PROMPT} {i}"),
            }[kind]
            cases.append((i, kind, payload))
        expected = {"good": 200, "bad_size": 400, "bad_type": 422, "bad_model": 404, "fail": 500}

        def one(case):
            i, kind, payload = case
            with httpx.Client(base_url=handle.url, timeout=30) as client:
                return i, kind, client.post(GEN, json=payload)

        with ThreadPoolExecutor(6) as pool:
            outcomes = list(pool.map(one, cases))
        for i, kind, resp in outcomes:
            assert resp.status_code == expected[kind], (kind, resp.text)
            if kind == "good":
                np.testing.assert_array_equal(pixels_of(resp.json()), fake_pixels(f"good {i}", i, 0, 32, 32))
            else:
                assert set(resp.json()["error"]) == {"message", "type", "param", "code"}
        # failing prompts never reached the "completed" list; every good one did
        assert sorted(p for p in engine.completed_prompts if p.startswith("good")) == \
            sorted(f"good {i}" for i, kind, _ in cases if kind == "good")


def test_serve_failure_in_batch_is_isolated():
    gate = threading.Event()
    engine = FakeEngine(gate=gate)
    with running_server(engine, max_batch_size=4) as (handle, _):
        results = {}
        threads = [post_in_thread(handle.url, body("blocker", size="64x64"), results, "blocker")]
        assert engine.started.wait(5)
        threads += [post_in_thread(handle.url, body("ok a"), results, "a"),
                    post_in_thread(handle.url, body(FAIL_PROMPT), results, "bad"),
                    post_in_thread(handle.url, body("ok b"), results, "b")]
        assert wait_until(lambda: handle.app.state.batcher.queue_depth == 3)
        gate.set()
        for t in threads:
            t.join(10)
        assert engine.batch_sizes[:2] == [1, 3]  # the batch of 3 failed, then each was retried alone
        assert results["a"].status_code == 200 and results["b"].status_code == 200
        assert results["bad"].status_code == 500


def test_serve_disconnect_cancels_running_work():
    engine = FakeEngine(step_delay_s=0.02)
    with running_server(engine) as (handle, _):
        sock = open_raw_request(handle.url, body("abandoned", steps=150))  # ~3 s of work
        assert wait_until(lambda: "abandoned" in engine.received_prompts)
        t0 = time.monotonic()
        sock.close()
        assert wait_until(lambda: "abandoned" in engine.cancelled_prompts, timeout_s=2.5)
        assert time.monotonic() - t0 < 2.5 and "abandoned" not in engine.completed_prompts
        with httpx.Client(base_url=handle.url, timeout=10) as client:
            assert client.post(GEN, json=body("after")).status_code == 200
            text = client.get("/metrics").text
        assert 'quantomni_requests_cancelled_total{reason="disconnect"} 1' in text


def test_serve_disconnect_drops_queued_work():
    gate = threading.Event()
    engine = FakeEngine(gate=gate)
    with running_server(engine) as (handle, _):
        results = {}
        blocker = post_in_thread(handle.url, body("blocker"), results, "blocker")
        assert engine.started.wait(5)
        sock = open_raw_request(handle.url, body("queued then gone", size="48x48"))
        assert wait_until(lambda: handle.app.state.batcher.queue_depth == 1)
        sock.close()
        assert wait_until(lambda: handle.app.state.batcher.queue_depth == 0)
        gate.set()
        blocker.join(10)
        assert results["blocker"].status_code == 200
        time.sleep(0.05)
        assert "queued then gone" not in engine.received_prompts


def test_serve_disconnect_in_shared_batch_does_not_fail_the_others():
    gate = threading.Event()
    engine = FakeEngine(gate=gate, step_delay_s=0.02)
    with running_server(engine, max_batch_size=4) as (handle, _):
        results = {}
        blocker = post_in_thread(handle.url, body("blocker", size="64x64"), results, "blocker")
        assert engine.started.wait(5)
        leaver = open_raw_request(handle.url, body("leaver", steps=20))
        stayer = post_in_thread(handle.url, body("stayer", steps=20), results, "stayer")
        assert wait_until(lambda: handle.app.state.batcher.queue_depth == 2)
        gate.set()
        assert wait_until(lambda: engine.batch_sizes[-1:] == [2])
        leaver.close()
        stayer.join(10)
        blocker.join(10)
        assert results["stayer"].status_code == 200
        assert "stayer" in engine.completed_prompts and engine.cancelled_prompts == []


def test_serve_shutdown_answers_in_flight_requests_503():
    engine = FakeEngine(step_delay_s=0.02)
    results = {}
    with running_server(engine, graceful_shutdown_s=0.3, max_batch_size=1) as (handle, _):
        threads = [post_in_thread(handle.url, body("running", steps=150), results, "running")]
        assert engine.started.wait(5)
        threads.append(post_in_thread(handle.url, body("queued", size="48x48"), results, "queued"))
        assert wait_until(lambda: handle.app.state.batcher.queue_depth == 1)
    for t in threads:
        t.join(10)
    for name in ("running", "queued"):
        assert results[name].status_code == 503, results[name]
        assert results[name].json()["error"]["code"] == "shutting_down"
    assert "running" in engine.cancelled_prompts and "queued" not in engine.received_prompts
