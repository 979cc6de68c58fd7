"""Shared fixtures: tiny random-weight pipelines written once per session (no hub access)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory):
    """Factory: demo_model_dir("flux") -> path of a saved tiny pipeline (cached per session)."""
    from quantomni.demo_models import write_demo_model

    cache = {}

    def make(arch: str = "flux"):
        if arch not in cache:
            cache[arch] = write_demo_model(tmp_path_factory.mktemp(f"demo-{arch}"), arch)
        return cache[arch]

    return make


@pytest.fixture
def rng_seed():
    """Fresh random inputs every run (never zeros); the seed is printed to reproduce a failure."""
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    print(f"torch seed {seed}")
    return seed
