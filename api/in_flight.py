"""The load one API process takes at once: past `DURAPAY_API_MAX_IN_FLIGHT` requests being
answered, a new one is refused at once with 503 `service_unavailable` and `Retry-After`,
rendered like every other error, instead of queueing behind the others until every answer is
late (a burst answered promptly: some now, the rest told when to come back).

It counts requests, not connections: uvicorn's `limit_concurrency` (`DURAPAY_API_MAX_CONNECTIONS`,
api/serve.py) stays the backstop for open connections, idle keep-alive ones included, and
answers its own plain-text 503. Health probes are never refused: a busy process is not a dead
one, and an orchestrator must not restart it for being busy.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import ServiceUnavailableError

# Long enough for a burst's first wave to be answered, short enough not to idle a client.
OVERLOAD_RETRY_AFTER_SECONDS = 1
PROBES = frozenset({"/livez", "/readyz", "/healthz"})


class InFlightLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_in_flight: int) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.in_flight = 0  # one event loop per process: no lock needed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PROBES:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            error = ServiceUnavailableError(
                "service_unavailable", "Durapay is answering as many requests as it can; "
                "nothing was done for this one. Retry it (with the same Idempotency-Key) after "
                "the Retry-After delay.",
                headers={"Retry-After": str(OVERLOAD_RETRY_AFTER_SECONDS)})
            response = JSONResponse(error.body(), status_code=error.status, headers={
                "Retry-After": str(OVERLOAD_RETRY_AFTER_SECONDS), "Cache-Control": "no-store"})
            await response(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
