"""An ASGI guard that refuses request bodies over a size limit with OpenAI's error body and a 413.

The declared Content-Length is checked before anything is read; a body sent without one (chunked)
is counted as it arrives and refused once it passes the limit (an HTTPException the app's handler
answers), so no handler ever holds more than the limit in memory, and the JSON parser and tokenizer
never see an oversized prompt.
"""

from __future__ import annotations

import json

DEFAULT_MAX_BODY_BYTES = 8 << 20  # 8 MiB: far above any prompt a context of 128k tokens can hold


def too_large_message(limit: int) -> str:
    return f"the request body exceeds this server's limit of {limit} bytes"


def _error_body(limit: int) -> bytes:
    message = too_large_message(limit)
    return json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                 "code": "request_too_large"}}).encode()  # fmt: skip


class BodySizeLimit:
    def __init__(self, app, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.check(max_body_bytes)
        self.app = app
        self.max_body_bytes = max_body_bytes

    @staticmethod
    def check(max_body_bytes: int) -> None:
        if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) or max_body_bytes < 1:
            raise ValueError(f"max_body_bytes={max_body_bytes!r} must be a positive integer")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            await self._refuse(send)
            return
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    from starlette.exceptions import HTTPException  # the serve extra: imported when serving

                    raise HTTPException(413, too_large_message(self.max_body_bytes))
            return message

        await self.app(scope, counting_receive, send)

    async def _refuse(self, send) -> None:
        body = _error_body(self.max_body_bytes)
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})
