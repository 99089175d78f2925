"""Request ids and the one log line per request.

A pure ASGI middleware, outside the body limit, so every answer it sees (a 413, a 401, a 404,
a 429) carries `Request-Id`. The id is the caller's, when it sent a valid `Request-Id`
(`req_` then 1 to 64 of [A-Za-z0-9_-]: the shape of ours, so a client retrying with the id
it was given correlates, and nothing else — spaces, quotes, control characters, long
strings — reaches a log line or a header), or `req_` + 24 hex digits. The id sits in
`core.logs.request_context` for every log line written while the request runs.

The log line has the method, the route template (`/payment-intents/{id}`, not the path, so ids
are not the key of the line; `unmatched` when no route took the request), the status and the
duration. No body, no headers and no query string: query values are cursors and filters, of
no use to an operator reading a request line, and keeping them out means nothing a client puts
there is ever logged.
"""

from __future__ import annotations

import logging
import re
import secrets
import time

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.logs import RequestContext, request_context
from core.metrics import observe_request

REQUEST_ID_PATTERN = re.compile(r"req_[A-Za-z0-9_-]{1,64}")
# W3C trace context: version-traceid-parentid-flags; an all-zero trace id is invalid.
TRACEPARENT_PATTERN = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")

log = logging.getLogger("durapay.api.requests")


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


class RequestLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        incoming = headers.get("request-id", "")
        context = RequestContext(
            request_id=incoming if REQUEST_ID_PATTERN.fullmatch(incoming) else new_request_id(),
            trace_id=_trace_id(headers.get("traceparent", "")),
        )
        token = request_context.set(context)
        status = 500  # what the client gets if the app raises before answering
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["Request-Id"] = context.request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            intent_id = (scope.get("path_params") or {}).get("id")
            if isinstance(intent_id, str) and intent_id.startswith("pi_"):
                context.payment_intent_id = intent_id
            seconds = time.perf_counter() - started
            observe_request(route=template, method=scope["method"], status=status, seconds=seconds)
            duration_ms = round(seconds * 1000, 1)
            log.info(
                "%s %s %d %.1f ms",
                scope["method"],
                template,
                status,
                duration_ms,
                extra={
                    "fields": {
                        "method": scope["method"],
                        "route": template,
                        "status": status,
                        "durationMs": duration_ms,
                    }
                },
            )
            request_context.reset(token)


def _trace_id(traceparent: str) -> str | None:
    match = TRACEPARENT_PATTERN.fullmatch(traceparent.strip())
    if match is None or set(match.group(1)) == {"0"}:
        return None
    return match.group(1)
