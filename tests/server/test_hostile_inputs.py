"""The hostile-input suite: schemathesis generates requests from the app's OpenAPI schema, valid and
invalid (positive and negative modes), and runs them in-process (ASGI, no network). No answer may be
a 5xx, and every answer must match what the schema documents (status code, content type, body).

A body that names another model, or asks for what the server refuses outright (n, best_of, echo,
suffix, logprobs, penalties), stops at its first check; the suite names the served model and drops
those fields so generated requests reach tokenization, sampling validation and the engine (the
refusals have their own tests)."""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from fastswitch.server import ServingEngine, create_app

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
REFUSED_FIELDS = ("n", "best_of", "echo", "suffix", "logprobs", "presence_penalty", "frequency_penalty")


@pytest.fixture(scope="module")
def api_schema(tiny_model):
    # 4 blocks of 16 tokens: max_model_len is cut to 64, so a fuzzed request generates at most 64 tokens.
    serving = ServingEngine.load(tiny_model, progress=False, attention_backend="torch", num_gpu_blocks=4,
                                 max_model_len=512)  # fmt: skip
    app = create_app(serving, model_id="tiny")
    with TestClient(app):  # runs the lifespan: the engine thread serves every generated request
        loaded = schemathesis.openapi.from_asgi("/openapi.json", app)
        loaded.config.generation.update(modes=list(schemathesis.GenerationMode))
        yield loaded
    assert serving.max_model_len == 64


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=40, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_generated_request_gets_a_5xx_or_an_undocumented_answer(case):
    if isinstance(case.body, dict):
        case.body["model"] = "tiny"
        for name in REFUSED_FIELDS:
            case.body.pop(name, None)
    case.call_and_validate(checks=CHECKS)
