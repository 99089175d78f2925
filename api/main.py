"""The merchant API: builds the FastAPI app, its shared state and error handlers."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.body_limit import BodyLimitMiddleware
from api.concurrency_limit import AdaptiveConcurrencyLimit
from api.deps import AppState, AuthenticatedRoute, TemporalConnection, needs_authentication
from api.errors import install_error_handlers
from api.in_flight import InFlightLimitMiddleware
from api.openapi import install_openapi
from api.rate_limit import burst_of
from api.request_log import RequestLogMiddleware
from api.routers import (
    events,
    health,
    merchants,
    metrics,
    payment_intents,
    refunds,
    transactions,
    webhook_endpoints,
)
from core.db.session import create_engine, session_factory
from core.logs import configure_logging
from core.loop_lag import watch_loop_lag
from core.metrics import API_LOOP_LAG
from core.settings import Settings, get_settings
from core.telemetry import instrument_fastapi, setup_tracing
from core.vault_epochs import destroy_expired_periodically
from core.webhooks import UrlPolicy

DESCRIPTION = """
Durapay's PaymentIntents API. Every payment runs as a durable Temporal workflow.

## Authentication: signed requests
Every merchant request carries four headers:

* `Authorization: Bearer pk_test_…` (your public key)
* `X-Timestamp: <unix seconds>` (within 300 s of the server clock)
* `X-Nonce: <16 to 64 chars of [A-Za-z0-9_-]>` (never reused within the window)
* `X-Signature: v1=<lowercase hex HMAC-SHA256(secret_key, canonical)>`

where `canonical` is the UTF-8 string
`METHOD + "\\n" + PATH_AND_QUERY + "\\n" + TIMESTAMP + "\\n" + NONCE + "\\n" + hex(SHA256(body))`
(`PATH_AND_QUERY` exactly as sent, e.g. `/payment-intents?limit=10`: raw, percent-escapes as
sent, never decoded; empty body for GET).
A bad signature, stale timestamp, replayed nonce, unknown/revoked key or an authentication
header sent twice answers 401.
The project's Python client (`client.DurapayClient`) signs for you.

Operator endpoints (`/merchants`) take `Authorization: Bearer <admin token>` instead.

## Errors
Every error is `{"error": {"type", "code", "message", "param"}}`; card declines (402) add
`declineCode` and the failed `transaction`. Another merchant's object answers 404.
While a service Durapay depends on is briefly unreachable (its database or workflow engine
restarting), any request may answer 503 with `"type": "api_error"`, `"code":
"service_unavailable"` and a `Retry-After` header in seconds. Retry after that delay; retry a
`POST` with the same `Idempotency-Key`, so that it takes effect at most once.

## Idempotency
The payment `POST`s (create, charge, capture, cancel, refund) accept an `Idempotency-Key`
header: the same key with the same body replays the first response; the same key with a
different body is a 400 (`idempotency_key_reused`); a key whose first request is still running
is a 409 (`idempotency_key_in_use`).
Keys are kept 24 h (`DURAPAY_IDEMPOTENCY_RETENTION_SECONDS`); an older key is treated as new.
A charge's card counts toward the "same body" check only as brand, last4 and expiry: a retry
that changes only the CVC replays the first response. `POST /events/{id}/redeliver` uses the
key to name its deliveries (the same key sends nothing twice). Creating a webhook endpoint,
rotating its secret and onboarding a merchant take no key: their answers hold a secret shown
once, which Durapay does not store to replay; after a lost answer, list before retrying.
"""


def limits_section(settings: Settings) -> str:
    """The API docs' limits, with this deployment's values."""
    rate = settings.rate_limit_per_second
    rate_text = "no per-key limit is set."
    if rate > 0:
        rate_text = (
            f"each API key may make {rate:g} requests a second on average, in bursts "
            f"of {burst_of(rate):g}. Past it: 429 `rate_limit_error` / "
            "`rate_limit_exceeded` with `Retry-After` (whole seconds); retry after "
            "it. Only correctly signed requests count against a key."
        )
    return f"""
## Limits
* **Request size:** a body larger than {settings.max_body_bytes} bytes answers 413
  `invalid_request_error` / `request_too_large`, before authentication.
* **Slow bodies:** a body that has not arrived {settings.request_body_timeout_seconds:g} seconds
  after the request's headers answers 408 `invalid_request_error` / `request_timeout`, and the
  connection is closed.
* **Load:** each API process answers a bounded number of requests at once (at most
  {settings.api_max_in_flight}; fewer while answers slow down, so that the requests it takes
  are answered at about their usual latency). Past it, a request answers 503 `api_error` /
  `service_unavailable` at once, with `Retry-After` and `Durapay-Not-Processed: true`: nothing
  was done for it, so it may be sent again after that delay (a `POST` with the same
  `Idempotency-Key`). Past
  {settings.api_max_connections} open connections to one process (idle ones included), the
  HTTP server itself answers 503 (plain text).
* **Rate:** {rate_text}
* **Operator token:** after {settings.admin_rate_limit_per_minute:g} failed admin-token attempts
  a minute from one address, `/merchants` answers 429 with `Retry-After` to that address.
* **Webhooks:** at most {settings.max_webhook_endpoints} webhook endpoints per merchant (deleted
  ones do not count), and at most {settings.max_redeliveries} manual redeliveries of one event
  to one endpoint; past either, 400 `webhook_endpoint_limit_reached` /
  `redelivery_limit_reached`, and nothing is created.

## Caching
Every answer carries `Cache-Control: no-store`: some hold secrets (a merchant's secret key, a
webhook signing secret) and none is meant for a cache.
"""


log = logging.getLogger("durapay.api")


class NoStoreMiddleware:
    """`Cache-Control: no-store` on every answer: onboarding, key rolls and webhook endpoint
    creation and rotation (and their idempotent replays) carry secrets, and the rest is one
    merchant's private data, so no browser or proxy may keep any of it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_no_store(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_no_store)


class DurapayApi(FastAPI):
    """The FastAPI app with the request-id, request-log and no-store layers around everything,
    Starlette's catch-all for unexpected errors included (`add_middleware` would put them
    inside that one): a 500 carries its Request-Id and `Cache-Control: no-store` and is logged
    as 500, and every line logged while answering (the 413 of the body limit, the "unhandled
    error" line) has the request's id."""

    def build_middleware_stack(self) -> ASGIApp:
        return RequestLogMiddleware(NoStoreMiddleware(super().build_middleware_stack()))


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    # Here, not in a uvicorn log config: uvicorn (`--factory`) calls this after setting up its
    # own loggers, which this turns into JSON lines through the root handler.
    configure_logging("api")
    setup_tracing("durapay-api")  # nothing unless OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set
    # A malformed DURAPAY_WEBHOOK_ALLOWED_PORTS stops the API here, as it stops the workers,
    # instead of failing every webhook endpoint request with a 500.
    UrlPolicy.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings.effective_database_url)
        app.state.durapay = AppState.build(
            settings, session_factory(engine), TemporalConnection(settings)
        )
        # As every worker does: card numbers must not outlive their epoch key's time because
        # no worker runs.
        destroyer = asyncio.create_task(destroy_expired_periodically(settings.vault_epoch_keys()))
        lag_watcher = asyncio.create_task(watch_loop_lag(API_LOOP_LAG.observe))
        # Everything built so far lives as long as the process. Frozen, it is left out of the
        # collector's full passes: with ~165,000 such objects a full pass took ~80 ms of CPU,
        # a pause of every request in flight (and longer on a machine short of CPU).
        gc.freeze()
        yield
        lag_watcher.cancel()
        destroyer.cancel()
        await engine.dispose()

    app = DurapayApi(
        title="Durapay",
        version="0.1.0",
        description=DESCRIPTION + limits_section(settings),
        lifespan=lifespan,
    )
    install_error_handlers(app)
    install_openapi(app)
    for router in (
        health.router,
        metrics.router,
        merchants.router,
        payment_intents.router,
        transactions.router,
        refunds.router,
        events.router,
        webhook_endpoints.router,
    ):
        app.include_router(router)
    _check_authentication_comes_first(app)
    # Added last, so the outermost layers: nothing reads a body before its size is checked,
    # and a request past the process's load is refused before even that.
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=settings.max_body_bytes,
        timeout_seconds=settings.request_body_timeout_seconds,
    )
    app.state.admission = AdaptiveConcurrencyLimit(
        min_limit=settings.api_min_in_flight,
        max_limit=settings.api_max_in_flight,
        tolerance=settings.api_latency_tolerance,
    )
    app.add_middleware(InFlightLimitMiddleware, limit=app.state.admission)
    instrument_fastapi(app)  # a no-op when tracing is off
    return app


def _check_authentication_comes_first(app: FastAPI) -> None:
    """Every authenticated route authenticates before its body is parsed: a router declared
    without `route_class=AuthenticatedRoute` stops the API at start, not in production."""
    pending = list(app.routes)
    while pending:
        route = pending.pop()
        included = getattr(route, "original_router", None)  # FastAPI keeps routers nested
        if included is not None:
            pending.extend(included.routes)
        elif (
            isinstance(route, APIRoute)
            and needs_authentication(route)
            and not isinstance(route, AuthenticatedRoute)
        ):
            raise RuntimeError(
                f"{route.path}: its router needs route_class=AuthenticatedRoute (api/deps.py)"
            )
