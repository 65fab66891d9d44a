"""Fixtures: a tiny random Llama with a byte-level tokenizer, and a server over it."""

from __future__ import annotations

import pytest

from fastswitch.model_sources import tiny_random_llama
from server_harness import running_server


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return tiny_random_llama(seed=0, root=tmp_path_factory.mktemp("models") / "tiny-random")


@pytest.fixture(scope="module")
def server(tiny_model):
    with running_server(tiny_model, num_gpu_blocks=64) as running:
        yield running
