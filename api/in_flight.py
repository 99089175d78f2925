"""Admission control: the load one API process takes at once. Past its concurrency limit, a new
request is refused at once with 503 `service_unavailable` and `Retry-After`, rendered like every
other error, before anything reads its body, the database or Temporal; so nothing was done
for it and any client may send it again. A burst is answered promptly: some requests now at
about calm latency, the rest told when to come back, instead of all of them queueing until
every answer is late.

The limit adapts (api/concurrency_limit.py): it follows the latency of the requests this process
answers, between `DURAPAY_API_MIN_IN_FLIGHT` and `DURAPAY_API_MAX_IN_FLIGHT`. Only answers that
did their route's work teach it: a 2xx or a card decline (402), not an idempotent replay (it
skipped the work) and not another error (a 4xx is quick, a 5xx says a dependency is away).

It counts requests, not connections: uvicorn's `limit_concurrency` (`DURAPAY_API_MAX_CONNECTIONS`,
api/serve.py) stays the backstop for open connections, idle keep-alive ones included, and
answers its own plain-text 503. Health probes and `/metrics` are never refused nor counted: a
busy process is not a dead one (an orchestrator must not restart it for being busy), and an
overload is when an operator most needs its metrics.
"""

from __future__ import annotations

import time

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.concurrency_limit import AdaptiveConcurrencyLimit
from api.errors import ServiceUnavailableError
from api.idempotency import IdempotentRoute
from core.metrics import ADMISSION_LIMIT, ADMISSION_REFUSALS, REQUESTS_IN_FLIGHT

NEVER_REFUSED = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})
CARD_DECLINED = 402
# Says a refusal did nothing, so a client may send it again even where the API ignores
# Idempotency-Key (the SDK's client/retry.py reads it); other 503s may come after some work.
NOT_PROCESSED_HEADER = "Durapay-Not-Processed"


class InFlightLimitMiddleware:
    def __init__(self, app: ASGIApp, *, limit: AdaptiveConcurrencyLimit) -> None:
        self.app = app
        self.limit = limit  # one event loop per process: no lock needed
        ADMISSION_LIMIT.set_function(lambda: limit.current_limit)
        REQUESTS_IN_FLIGHT.set_function(lambda: limit.in_flight)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in NEVER_REFUSED:
            await self.app(scope, receive, send)
            return
        now = time.monotonic()
        admitted_with = self.limit.try_admit(now)
        if admitted_with is None:
            ADMISSION_REFUSALS.inc()
            await _refuse(
                scope, receive, send, retry_after_seconds=self.limit.retry_after_seconds(now)
            )
            return
        status = 0

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.monotonic()
        try:
            await self.app(scope, receive, send_noting_status)
        except BaseException:
            self.limit.release()
            raise
        if _did_the_work(scope, status):
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            now = time.monotonic()
            self.limit.release_with_sample(
                f"{scope['method']} {template}", now - started, admitted_with=admitted_with, now=now
            )
        else:
            self.limit.release()


def _did_the_work(scope: Scope, status: int) -> bool:
    if not (200 <= status < 300 or status == CARD_DECLINED):
        return False
    # IdempotentRoute hands every answer it computed to the request's state; a replayed one
    # (sent as stored) is not there.
    replayed = isinstance(
        scope.get("route"), IdempotentRoute
    ) and "idempotent_answer" not in scope.get("state", {})
    return not replayed


async def _refuse(scope: Scope, receive: Receive, send: Send, *, retry_after_seconds: int) -> None:
    error = ServiceUnavailableError(
        "service_unavailable",
        "Durapay is answering as many requests as it can; "
        "nothing was done for this one. Retry it (with the same Idempotency-Key) after "
        "the Retry-After delay.",
        headers={"Retry-After": str(retry_after_seconds)},
    )
    response = JSONResponse(
        error.body(),
        status_code=error.status,
        headers={
            "Retry-After": str(retry_after_seconds),
            "Cache-Control": "no-store",
            NOT_PROCESSED_HEADER: "true",
        },
    )
    await response(scope, receive, send)
