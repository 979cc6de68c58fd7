"""POST /v1/chat/completions on a real uvicorn server in front of the FP8 tiny Qwen3-Omni."""

import json

import httpx
import pytest

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def chat_server(omni_engine):
    from quantomni.serve.server import start_background_server
    from quantomni.serve.settings import ServeSettings

    omni = omni_engine("fp8")
    with start_background_server(omni, ServeSettings(port=0)) as handle:
        yield handle, omni


def test_openai_client_chat_completion(chat_server):
    handle, omni = chat_server
    client = openai.OpenAI(base_url=handle.url + "/v1", api_key="none", max_retries=0, timeout=60)
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
    res = client.chat.completions.create(model=omni.model_id, messages=msgs, max_tokens=6, temperature=0)
    direct = omni.chat(msgs, max_tokens=6, temperature=0)
    assert res.choices[0].message.role == "assistant"
    assert res.choices[0].message.content == direct.text
    assert res.choices[0].finish_reason == direct.finish_reason
    assert res.usage.completion_tokens == direct.completion_tokens
    assert res.usage.prompt_tokens == len(omni.encode_messages(msgs))
    seeded = [client.chat.completions.create(model=omni.model_id, messages=msgs, max_tokens=6, temperature=1.0,
                                             seed=5, top_p=0.9).choices[0].message.content for _ in range(2)]
    assert seeded[0] == seeded[1]
    meta = str(client.models.list().model_dump())
    assert "thinker" in meta and "fp8" in meta


def test_openai_client_streaming(chat_server):
    handle, omni = chat_server
    client = openai.OpenAI(base_url=handle.url + "/v1", api_key="none", max_retries=0, timeout=60)
    msgs = [{"role": "user", "content": "stream please"}]
    stream = client.chat.completions.create(model=omni.model_id, messages=msgs, max_tokens=8, temperature=0,
                                            stream=True)
    pieces, finish = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    direct = omni.chat(msgs, max_tokens=8, temperature=0)
    assert "".join(pieces) == direct.text and finish == direct.finish_reason


@pytest.mark.parametrize("body, status, needle", [
    ({"messages": []}, 422, "messages"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, 422, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": 3}, 422, "temperature"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 2}, 422, "n"),
    ({"messages": [{"role": "user", "content": "x"}], "model": "other"}, 404, "other"),
    ({"messages": [{"role": "tool", "content": "x"}]}, 422, "role"),
])
def test_bad_chat_requests_get_openai_errors(chat_server, body, status, needle):
    handle, _ = chat_server
    r = httpx.post(handle.url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == status, r.text  # 422: invalid field value, as the images route answers
    err = r.json()["error"]
    assert needle in json.dumps(err)


def test_image_route_refuses_text_model(chat_server):
    handle, _ = chat_server
    r = httpx.post(handle.url + "/v1/images/generations", json={"prompt": "a cat", "size": "64x64"}, timeout=30)
    assert r.status_code == 400
    assert "chat/completions" in r.json()["error"]["message"]


def test_chat_route_honours_api_key_and_is_absent_for_image_engines(omni_engine):
    from fastapi.testclient import TestClient

    from quantomni.serve.app import create_app
    from quantomni.serve.settings import ServeSettings

    omni = omni_engine("fp8")
    body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
    with TestClient(create_app(omni, ServeSettings(api_key="sk-test"))) as client:
        assert client.post("/v1/chat/completions", json=body).status_code == 401
        ok = client.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer sk-test"})
        assert ok.status_code == 200 and ok.json()["object"] == "chat.completion"

    class ImagesOnly:
        model_id = "img"

        def describe(self):
            return {"components": {}}

        def generate(self, *a, **k):  # pragma: no cover - never called here
            raise AssertionError

    with TestClient(create_app(ImagesOnly())) as client:
        assert client.post("/v1/chat/completions", json=body).status_code == 404


def test_openai_client_audio_output(chat_server):
    import base64
    import io
    import wave

    handle, omni = chat_server
    client = openai.OpenAI(base_url=handle.url + "/v1", api_key="none", max_retries=0, timeout=60)
    res = client.chat.completions.create(
        model=omni.model_id, messages=[{"role": "user", "content": "speak"}], modalities=["text", "audio"],
        audio={"voice": "ethan", "format": "wav"}, max_tokens=4, seed=0, extra_body={"max_audio_tokens": 6})
    msg = res.choices[0].message
    assert msg.audio is not None and msg.audio.transcript == omni.chat("speak", max_tokens=4, temperature=0).text
    with wave.open(io.BytesIO(base64.b64decode(msg.audio.data))) as w:
        assert w.getframerate() == 24000 and w.getnchannels() == 1 and w.getnframes() > 0
    bad = httpx.post(handle.url + "/v1/chat/completions", timeout=30, json={
        "messages": [{"role": "user", "content": "x"}], "modalities": ["text", "audio"], "stream": True})
    assert bad.status_code == 400 and "stream" in bad.text
    bad = httpx.post(handle.url + "/v1/chat/completions", timeout=30, json={
        "messages": [{"role": "user", "content": "x"}], "modalities": ["audio"], "audio": {"voice": "nobody"}})
    assert bad.status_code == 400 and "nobody" in bad.text


def test_concurrent_chat_requests_are_batched(omni_dir):
    """float32 engine: a batched greedy reply equals the single-sequence one."""
    from concurrent.futures import ThreadPoolExecutor

    from quantomni import Omni
    from quantomni.serve.server import start_background_server
    from quantomni.serve.settings import ServeSettings

    omni = Omni(omni_dir, quantization="fp8", device="cpu", progress=False, dtype="float32", model_id="tiny32")
    prompts = [f"question number {i}" + " more" * i for i in range(6)]
    with start_background_server(omni, ServeSettings(port=0)) as handle:
        def call(p):
            r = httpx.post(handle.url + "/v1/chat/completions", timeout=60, json={
                "messages": [{"role": "user", "content": p}], "max_tokens": 5, "temperature": 0})
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["message"]["content"]

        with ThreadPoolExecutor(6) as pool:
            replies = list(pool.map(call, prompts))
        sizes = handle.app.state.chat_batcher.batch_sizes
    assert sum(sizes) == 6 and max(sizes) > 1, sizes
    for p, reply in zip(prompts, replies):
        assert reply == omni.chat([{"role": "user", "content": p}], max_tokens=5, temperature=0).text
