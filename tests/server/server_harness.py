"""A server over a model folder, on a real socket on 127.0.0.1, for the tests."""

from __future__ import annotations

import contextlib

from fastswitch.server import ServingEngine, create_app
from fastswitch.server.background import serving_in_background


@contextlib.contextmanager
def running_server(model_folder, **overrides):
    """Yields (base_url, app) while a uvicorn server runs the app on its own thread."""
    overrides = {"attention_backend": "torch", "max_model_len": 512, **overrides}
    serving = ServingEngine.load(model_folder, progress=False, **overrides)
    app = create_app(serving, model_id="tiny")
    with serving_in_background(app) as base_url:
        yield base_url, app
