"""Fixtures for multi-stage omni tests: one tiny Qwen3-Omni directory per session, engines cached."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def omni_dir(tmp_path_factory):
    from quantomni.demo_omni_models import write_qwen3_omni

    return write_qwen3_omni(tmp_path_factory.mktemp("tiny-qwen3-omni"))


@pytest.fixture(scope="session")
def omni_engine(omni_dir):
    """Factory: omni_engine("fp8") -> a loaded OmniMultiStage on CPU (cached per spec)."""
    from quantomni import Omni

    cache = {}

    def make(quantization=None, **kw):
        key = (repr(quantization), repr(sorted(kw.items())))
        if key not in cache:
            cache[key] = Omni(omni_dir, quantization=quantization, device="cpu", progress=False, **kw)
        return cache[key]

    return make
