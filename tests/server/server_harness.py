"""Runs the app on a real uvicorn server on 127.0.0.1 (a free port), on its own thread."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import uvicorn

from fastswitch.server import ServingEngine, create_app


@contextlib.contextmanager
def running_server(model_folder, **overrides):
    """Yields (base_url, app) while a uvicorn server runs the app on its own thread."""
    overrides = {"attention_backend": "torch", "max_model_len": 512, **overrides}
    serving = ServingEngine.load(model_folder, progress=False, **overrides)
    app = create_app(serving, model_id="tiny")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", app
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
