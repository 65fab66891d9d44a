"""An OpenAI-compatible HTTP server on the FastSwitch engine (`fastswitch serve`). The model sources
(`resolve_model`, `tiny_random_llama`, ...) live in fastswitch/model_sources.py and are re-exported
here for code that imported them from this package."""

from __future__ import annotations

from fastswitch.model_sources import TINY_RANDOM, default_model_path, resolve_model, tiny_random_llama
from fastswitch.server.body_limit import DEFAULT_MAX_BODY_BYTES
from fastswitch.server.serving_engine import ServingEngine


def create_app(serving: ServingEngine, model_id: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
    """The FastAPI app (imported lazily: FastAPI is the `serve` extra, not a core dependency)."""
    from fastswitch.server.app import create_app as _create_app

    return _create_app(serving, model_id, max_body_bytes)


def run_server(serving: ServingEngine, host: str = "127.0.0.1", port: int = 8000, model_id: str | None = None,
               log_level: str = "info", max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:  # fmt: skip
    """Serves until interrupted (Ctrl-C)."""
    import uvicorn

    uvicorn.run(create_app(serving, model_id, max_body_bytes), host=host, port=port, log_level=log_level)


__all__ = ["TINY_RANDOM", "ServingEngine", "create_app", "default_model_path", "resolve_model", "run_server",
           "tiny_random_llama"]  # fmt: skip
