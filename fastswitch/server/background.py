"""Run the HTTP server on a background thread of this process: for tests, benchmarks and notebooks."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

STARTUP_TIMEOUT_S = 30.0


@contextlib.contextmanager
def serving_in_background(app, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Yields the base URL (http://host:port) while uvicorn serves `app`; port 0 picks a free one."""
    import uvicorn

    sock = socket.socket()
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="fastswitch-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            sock.close()
            raise RuntimeError(f"the HTTP server did not start within {STARTUP_TIMEOUT_S:.0f} s")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
