"""Responses that deliberately go wrong on the wire: lost, replaced, mangled or slow."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from starlette.responses import HTMLResponse, Response
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


# What a reverse proxy (nginx here) in front of the network says when its upstream fails.
_GATEWAY_ERROR_PAGE = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)

# A trickled body arrives in this many pieces: the first with the headers, then one per pause.
TRICKLE_PIECES = 3


def gateway_error_response() -> Response:
    """A 502 from a gateway in front of the network: HTML, not the protocol's JSON error."""
    return HTMLResponse(_GATEWAY_ERROR_PAGE, status_code=502)


def garbage_response(content: dict[str, object], status_code: int = 200) -> Response:
    """A complete, well-framed response whose JSON body is cut in half."""
    body = json.dumps(content).encode()
    return Response(body[: len(body) // 2], status_code=status_code, media_type="application/json")


class TrickledResponse(Response):
    """The right answer, sent so slowly that a caller's read timeout fires first.

    The headers (with the full Content-Length) and the first piece of the body go out at once,
    then one more piece after each pause of `pause_seconds`. A read timeout restarts with every
    piece received, so what beats the caller is the pause, not the total: any caller whose
    read timeout is shorter than the pause times out, and a patient one gets the whole valid
    body after (TRICKLE_PIECES - 1) pauses. The wait ends as soon as the caller hangs up, so a
    trickle never keeps a request task (or a graceful shutdown) busy for longer than that.
    """

    def __init__(self, content: dict[str, object], status_code: int, pause_seconds: float) -> None:
        super().__init__(
            content=json.dumps(content).encode(),
            status_code=status_code,
            media_type="application/json",
        )
        self.pause_seconds = pause_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = bytes(self.body)
        size = -(-len(body) // TRICKLE_PIECES)  # ceiling division: at most TRICKLE_PIECES pieces
        pieces = [body[i : i + size] for i in range(0, len(body), size)]
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        for index, piece in enumerate(pieces):
            if index and await _hung_up_within(receive, self.pause_seconds):
                return
            more = index < len(pieces) - 1
            await send({"type": "http.response.body", "body": piece, "more_body": more})


async def _hung_up_within(receive: Receive, seconds: float) -> bool:
    """Wait up to seconds; True as soon as the client disconnects."""

    async def disconnected() -> None:
        # The request body has been read already, so the next message is the disconnect.
        while (await receive())["type"] != "http.disconnect":
            pass

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(disconnected(), seconds)
        return True
    return False


class _DropNoiseFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != _UVICORN_INCOMPLETE


def quiet_uvicorn_about_drops() -> None:
    """Silence uvicorn's error for our intentional drops (we log each drop ourselves)."""
    uvicorn_logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropNoiseFilter) for f in uvicorn_logger.filters):
        uvicorn_logger.addFilter(_DropNoiseFilter())
