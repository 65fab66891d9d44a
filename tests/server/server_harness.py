"""A server over a model folder, on a real socket on 127.0.0.1, for the tests."""

from __future__ import annotations

import contextlib
import http.client
import json
from urllib.parse import urlsplit

from fastswitch.server import ServingEngine, create_app
from fastswitch.server.background import serving_in_background
from fastswitch.server.body_limit import DEFAULT_MAX_BODY_BYTES


@contextlib.contextmanager
def running_server(model_folder, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, **overrides):
    """Yields (base_url, app) while a uvicorn server runs the app on its own thread."""
    overrides = {"attention_backend": "torch", "max_model_len": 512, **overrides}
    serving = ServingEngine.load(model_folder, progress=False, **overrides)
    app = create_app(serving, model_id="tiny", max_body_bytes=max_body_bytes)
    with serving_in_background(app) as base_url:
        yield base_url, app


def http_json(base_url: str, method: str, path: str, body: dict | bytes | None = None, timeout: float = 30):
    """(status, parsed JSON body) of one plain HTTP request: the stdlib, so raw and malformed bodies can be sent."""
    connection = http.client.HTTPConnection(urlsplit(base_url).netloc, timeout=timeout)
    payload = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    try:
        connection.request(method, path, body=payload, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


def send(connection: http.client.HTTPConnection, method: str, path: str, body: dict | bytes | None = None,
         headers: dict | None = None):  # fmt: skip
    """(status, parsed JSON) of one request on an open connection, which stays open (keep-alive)."""
    payload = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    connection.request(method, path, body=payload, headers={"Content-Type": "application/json", **(headers or {})})
    response = connection.getresponse()
    return response.status, json.loads(response.read() or b"null")
