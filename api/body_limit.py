"""The request-size limit: bodies above `DURAPAY_MAX_BODY_BYTES` are refused before anything
reads them.

A pure ASGI middleware, the app's outermost layer: it reads the whole body itself (every
endpoint reads it anyway: the signature covers it) and hands the app a body that is known to
fit, so authentication, idempotency and JSON parsing never see an oversize one. A declared
`Content-Length` over the limit is refused without reading a byte; a body sent without one
(chunked) or longer than it declared is refused as soon as its running size passes the limit.
Requests without credentials are refused alike: the limit comes before authentication.

The body must also arrive within `DURAPAY_REQUEST_BODY_TIMEOUT_SECONDS` of the request's
headers: a client that declares a body and then sends it slowly, or stalls, gets 408
`request_timeout` and the connection is closed, instead of holding it (and a slot of the
process's connection limit) for as long as it likes. How long the headers themselves may take
is the proxy's bound (nginx `client_header_timeout`): uvicorn has none (docs/operations.md).
"""

from __future__ import annotations

import asyncio
from typing import Literal

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ApiError, InvalidRequestError, RequestTimeoutError, RequestTooLargeError

# Before answering 413, read and drop what the client is still sending, up to this much and
# this long: a connection closed with unread data is reset by the kernel, and the reset can
# destroy our answer before the client reads it (seen: httpx.ReadError instead of the 413 on a
# loaded machine). Past either bound the client gets the reset: it is sending far too much.
DISCARD_LIMIT_BYTES = 1 << 20
DISCARD_SECONDS = 2.0


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, timeout_seconds: float) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.timeout_seconds = timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared == "invalid":
            await _refuse(
                InvalidRequestError(
                    "invalid_content_length", "The Content-Length header is not a number."
                ),
                scope,
                receive,
                send,
            )
            return
        if declared is not None and declared > self.max_body_bytes:
            await _discard_rest(receive)
            await _refuse(self._too_large(), scope, receive, send)
            return
        try:
            async with asyncio.timeout(self.timeout_seconds):
                body, unread = await self._read_body(receive)
        except TimeoutError:
            await _refuse(
                RequestTimeoutError(
                    "request_timeout",
                    f"The request body did not arrive within {self.timeout_seconds:g} seconds.",
                ),
                scope,
                receive,
                send,
            )
            return
        if body is None:
            return  # the client left before it finished sending: nobody to answer
        if len(body) > self.max_body_bytes:
            if unread:
                await _discard_rest(receive)
            await _refuse(self._too_large(), scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read_body(self, receive: Receive) -> tuple[bytes | None, bool]:
        """The whole body, or the part that passes the limit and whether more is unread; None
        when the client disconnected."""
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None, False
            body += message.get("body", b"")
            more = bool(message.get("more_body", False))
            if len(body) > self.max_body_bytes or not more:
                return bytes(body), more

    def _too_large(self) -> ApiError:
        return RequestTooLargeError(
            "request_too_large",
            f"The request body is larger than the {self.max_body_bytes} bytes this API accepts.",
        )


def _content_length(scope: Scope) -> int | Literal["invalid"] | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else "invalid"
    return None


async def _discard_rest(receive: Receive) -> None:
    """Drop the rest of the body, within DISCARD_LIMIT_BYTES and DISCARD_SECONDS."""
    discarded = 0
    try:
        async with asyncio.timeout(DISCARD_SECONDS):
            while discarded <= DISCARD_LIMIT_BYTES:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                discarded += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return
    except TimeoutError:
        return


async def _refuse(error: ApiError, scope: Scope, receive: Receive, send: Send) -> None:
    # Rendered as api/errors.py renders every error. `Connection: close`: the rest of the body
    # may not have been read (past the discard bounds), so the connection cannot carry another
    # request.
    response = JSONResponse(
        error.body(),
        status_code=error.status,
        headers={"Cache-Control": "no-store", "Connection": "close"},
    )
    await response(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body as one message; then the client's own messages (its disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
