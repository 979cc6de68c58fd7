"""The official openai client against a real uvicorn server."""

import base64
import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from serve_fakes import MODEL_ID, fake_pixels, running_server  # noqa: E402

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def server():
    with running_server(api_key="sk-test-123") as (handle, engine):
        yield handle, engine


def _client(handle, key="sk-test-123"):
    return openai.OpenAI(base_url=handle.url + "/v1", api_key=key, max_retries=0, timeout=20)


def _decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_serve_openai_generate_png_deterministic(server):
    handle, engine = server
    client = _client(handle)
    kwargs = dict(model=MODEL_ID, prompt="a red fox", size="64x64", response_format="b64_json", n=2,
                  extra_body={"seed": 1, "num_inference_steps": 2})
    first = client.images.generate(**kwargs)
    second = client.images.generate(**kwargs)
    assert len(first.data) == 2
    images = [_decode(d.b64_json) for d in first.data]
    for k, image in enumerate(images):
        assert image.format == "PNG" and image.size == (64, 64)
        np.testing.assert_array_equal(np.asarray(image), fake_pixels("a red fox", 1, k, 64, 64))
    assert not np.array_equal(np.asarray(images[0]), np.asarray(images[1]))
    assert [d.b64_json for d in first.data] == [d.b64_json for d in second.data]
    other_seed = client.images.generate(**{**kwargs, "extra_body": {"seed": 2, "num_inference_steps": 2}})
    assert other_seed.data[0].b64_json != first.data[0].b64_json
    unseeded = client.images.generate(model=MODEL_ID, prompt="a red fox", size="64x64",
                                      extra_body={"num_inference_steps": 1}).model_dump()
    reproduced = client.images.generate(model=MODEL_ID, prompt="a red fox", size="64x64",
                                        extra_body={"num_inference_steps": 1, "seed": unseeded["seed"]})
    assert reproduced.data[0].b64_json == unseeded["data"][0]["b64_json"]
    raw = first.model_dump()
    assert raw["seed"] == 1
    assert raw["timings"]["total_s"] >= 0 and "queue_s" in raw["timings"]


def test_serve_openai_non_square_and_formats(server):
    handle, _ = server
    client = _client(handle)
    for fmt, pil_name in (("jpeg", "JPEG"), ("webp", "WEBP"), ("png", "PNG")):
        resp = client.images.generate(model=MODEL_ID, prompt="x", size="96x32", output_format=fmt,
                                      extra_body={"seed": 3, "num_inference_steps": 1})
        image = _decode(resp.data[0].b64_json)
        assert image.format == pil_name and image.size == (96, 32)


def test_serve_openai_models_list_has_quantization(server):
    handle, _ = server
    models = _client(handle).models.list()
    assert [m.id for m in models.data] == [MODEL_ID]
    meta = models.data[0].model_dump()["metadata"]
    assert meta["quantization"]["transformer"] == {"method": "fp8", "quantized_layers": 12}
    assert meta["quantization"]["text_encoder"]["method"] is None
    assert _client(handle).models.retrieve(MODEL_ID).id == MODEL_ID


def test_serve_openai_errors_surface_as_exceptions(server):
    handle, _ = server
    with pytest.raises(openai.AuthenticationError):
        _client(handle, key="wrong").images.generate(prompt="x", size="64x64")
    with pytest.raises(openai.NotFoundError) as info:
        _client(handle).images.generate(model="other-model", prompt="x", size="64x64")
    assert "other-model" in str(info.value)
    with pytest.raises(openai.BadRequestError) as info:
        _client(handle).images.generate(prompt="x", size="65x64")
    assert info.value.body["param"] == "size"
