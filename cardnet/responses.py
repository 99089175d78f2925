"""A response that is deliberately lost on the wire."""

from __future__ import annotations

import json
import logging

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

# uvicorn's own log line when an app returns mid-body, which is exactly what we intend.
_UVICORN_INCOMPLETE = "ASGI callable returned without completing response."


class DroppedResponse(Response):
    """Sends the status line, a Content-Length header and half the body, then stops.

    Returning without finishing makes uvicorn close the connection, so the client sees a
    transport error (an incomplete body), not a clean HTTP status: the decision was made,
    but the caller cannot know it.
    """

    def __init__(self, content: dict[str, object], status_code: int = 200) -> None:
        super().__init__(
            content=json.dumps(content).encode(),
            status_code=status_code,
            media_type="application/json",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        half = bytes(self.body[: len(self.body) // 2])
        await send({"type": "http.response.body", "body": half, "more_body": True})


class _DropNoiseFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != _UVICORN_INCOMPLETE


def quiet_uvicorn_about_drops() -> None:
    """Silence uvicorn's error for our intentional drops (we log each drop ourselves)."""
    uvicorn_logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropNoiseFilter) for f in uvicorn_logger.filters):
        uvicorn_logger.addFilter(_DropNoiseFilter())
