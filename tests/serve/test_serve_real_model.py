"""The server in front of a real quantized Omni engine (tiny FLUX, FP8, CPU)."""

import base64
import io
import threading

import httpx
import numpy as np
import pytest
from PIL import Image

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def real_server(demo_model_dir):
    from quantomni import Omni
    from quantomni.serve.server import start_background_server
    from quantomni.serve.settings import ServeSettings

    omni = Omni(demo_model_dir("flux"), quantization="fp8", device="cpu", progress=False, model_id="tiny-flux")
    settings = ServeSettings(port=0, default_size="32x32", default_num_inference_steps=2, max_batch_size=4)
    with start_background_server(omni, settings) as handle:
        yield handle, omni


def test_openai_client_against_quantized_engine(real_server):
    handle, omni = real_server
    client = openai.OpenAI(base_url=handle.url + "/v1", api_key="none", max_retries=0, timeout=60)
    res = client.images.generate(model="tiny-flux", prompt="a red fox", size="32x32", response_format="b64_json",
                                 n=2, extra_body={"seed": 7, "num_inference_steps": 2})
    images = [Image.open(io.BytesIO(base64.b64decode(d.b64_json))) for d in res.data]
    assert [im.size for im in images] == [(32, 32), (32, 32)]
    direct = omni.generate("a red fox", height=32, width=32, num_inference_steps=2, seed=7, num_images=2).images
    assert np.array_equal(np.asarray(images[0].convert("RGB")), np.asarray(direct[0]))
    models = client.models.list().model_dump()
    meta = str(models)
    assert "tiny-flux" in meta and "fp8" in meta


def test_concurrent_requests_and_bad_ones_interleaved(real_server):
    handle, _ = real_server
    results = {}

    def call(i):
        body = {"prompt": f"p{i}", "size": "32x32", "num_inference_steps": 2, "seed": i}
        if i % 3 == 0:
            body["size"] = "33x32"  # invalid: not a multiple of 16
        r = httpx.post(handle.url + "/v1/images/generations", json=body, timeout=120)
        results[i] = r.status_code

    threads = [threading.Thread(target=call, args=(i,)) for i in range(9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[i] == (400 if i % 3 == 0 else 200) for i in range(9)), results
    assert httpx.get(handle.url + "/health").status_code == 200
