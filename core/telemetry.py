"""OpenTelemetry traces for every Durapay process, configured by the standard `OTEL_*` environment.

Tracing is on only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
is set and `OTEL_SDK_DISABLED` is not true. Otherwise `setup_tracing` installs nothing: no
tracer provider (OpenTelemetry's API stays a no-op), no instrumentation, no Temporal
interceptor, so a process without an endpoint pays nothing.

When on: a `TracerProvider` whose resource names the process (`OTEL_SERVICE_NAME`, else the
default given, e.g. `durapay-api`), the sampler of `OTEL_TRACES_SAMPLER` /
`OTEL_TRACES_SAMPLER_ARG` (the SDK reads them), and an OTLP http/protobuf exporter behind a
`BatchSpanProcessor` (`OTEL_BSP_*`). Only the http exporter is installed, so a `grpc` protocol
is refused at start instead of exporting nowhere. The provider shuts down (flushing the batch)
when the process exits, SIGTERM included: the API, the simulator (uvicorn) and the workers all
turn SIGTERM into a normal exit, which runs the SDK's exit hook.

One charge is one trace: the maintained instrumentations make the spans (FastAPI's server
spans, httpx's client spans, Temporal's `TracingInterceptor`); this module adds only the
payment's ids as attributes (`durapay.merchant_id`, `durapay.payment_intent_id`,
`durapay.transaction_id`), never card data.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import fields, is_dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from temporalio import activity, client, worker, workflow
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadConverter

from core import search_attributes

if TYPE_CHECKING:
    import httpx
    from fastapi import FastAPI
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

MERCHANT_ID = "durapay.merchant_id"
PAYMENT_INTENT_ID = "durapay.payment_intent_id"
TRANSACTION_ID = "durapay.transaction_id"

# Probes and scrapes every few seconds would drown the traces that matter.
EXCLUDED_URLS = "/livez$,/readyz$,/healthz$,/metrics$"
# Redacted even if an operator turns on header capture (OTEL_INSTRUMENTATION_HTTP_CAPTURE_
# HEADERS_*): the signature headers, the admin token and cookies.
SECRET_HEADERS = (
    "authorization",
    "x-signature",
    "x-nonce",
    "cookie",
    "set-cookie",
    "proxy-authorization",
)
# The Temporal header carrying the merchant id from a payment's workflow to its activities,
# whose inputs hold only the intent and transaction ids.
MERCHANT_HEADER = "durapay-merchant-id"

_provider: TracerProvider | None = None


class TelemetryConfigError(ValueError):
    """The `OTEL_*` environment asks for something this installation cannot do."""


def tracing_requested(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment names an OTLP endpoint and does not disable the SDK."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return bool(
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    )


def tracing_enabled() -> bool:
    """Whether `setup_tracing` installed a tracer provider in this process."""
    return _provider is not None


def setup_tracing(default_service_name: str) -> bool:
    """Install the process's tracer provider from the `OTEL_*` environment; True if tracing is
    on. Without an endpoint, installs nothing and returns False. Safe to call twice."""
    global _provider
    if _provider is not None:
        return True
    if not tracing_requested():
        return False
    _check_exporter_choice()
    # Imported only when tracing is on: a process without an endpoint never loads them.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    service_name = os.environ.get("OTEL_SERVICE_NAME", "").strip() or default_service_name
    # No sampler argument: the SDK reads OTEL_TRACES_SAMPLER(_ARG). shutdown_on_exit (the
    # default, spelled out) flushes the batch processor's last spans at exit.
    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: service_name}), shutdown_on_exit=True
    )
    provider.add_span_processor(PaymentIdsFromWorkflowId())
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider = provider
    return True


def _check_exporter_choice() -> None:
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter and exporter != "otlp":
        _refuse(f"OTEL_TRACES_EXPORTER={exporter}: only 'otlp' (or 'none') is supported")
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = os.environ.get(variable, "").strip()
        if protocol:
            if protocol != "http/protobuf":
                _refuse(
                    f"{variable}={protocol}: only the OTLP http/protobuf exporter is "
                    "installed; set it to http/protobuf (and point the endpoint at the "
                    "collector's OTLP/HTTP port, usually 4318)"
                )
            return  # the traces-specific variable wins over the general one


def _refuse(message: str) -> NoReturn:
    raise TelemetryConfigError(message)


# ---- instrumentation -----------------------------------------------------------------------
def instrument_fastapi(app: FastAPI, tracer_provider: trace.TracerProvider | None = None) -> None:
    """Server spans for every request but health probes and metric scrapes, named by route
    template (`POST /payment-intents/{id}/transactions`). No bodies are recorded, and secret
    headers are redacted even if header capture is turned on."""
    if tracer_provider is None and not tracing_enabled():
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.util.http import (
        OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS,
        get_custom_headers,
    )

    _shape_stack_for_instrumentation(app, tracer_provider or _provider)
    sanitized = [
        *get_custom_headers(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS),
        *SECRET_HEADERS,
    ]
    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=tracer_provider,
        excluded_urls=EXCLUDED_URLS,
        http_capture_headers_sanitize_fields=sanitized,
        # One span per request, not one per ASGI message.
        exclude_spans=["receive", "send"],
    )


def _shape_stack_for_instrumentation(app: FastAPI, provider: trace.TracerProvider | None) -> None:
    """Two things around the app's own middleware stack, before the instrumentation wraps it.

    The FastAPI instrumentation wraps the stack only if its outermost layer is Starlette's
    `ServerErrorMiddleware` (it logs an error and traces nothing otherwise). The API puts its
    request log outside that layer (api/main.py `DurapayApi`), so it gets a bare
    `ServerErrorMiddleware` shell: the server span then encloses the request log, and every
    line logged while answering, the request's own line included, has its trace id.

    Uvicorn ends a SIGTERM'd server by re-raising the signal once it has shut down, which
    kills the process before any exit hook runs, so the batch of last spans would be lost:
    they are flushed when the app's lifespan shutdown completes."""
    from starlette.middleware.errors import ServerErrorMiddleware

    build = app.build_middleware_stack

    def build_shaped() -> ASGIApp:
        stack = build()
        if isinstance(stack, ServerErrorMiddleware):
            stack.app = _FlushTracesAtShutdown(stack.app, provider)
            return stack
        return ServerErrorMiddleware(_FlushTracesAtShutdown(stack, provider))

    # Replaced on this instance only (a method assignment, which mypy refuses).
    app.build_middleware_stack = build_shaped  # type: ignore[method-assign]


class _FlushTracesAtShutdown:
    def __init__(self, app: ASGIApp, provider: trace.TracerProvider | None) -> None:
        self.app = app
        self.provider = provider

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_after_flush(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete" and isinstance(
                self.provider, TracerProvider
            ):
                # Blocking, bounded: the exporter's own timeout; nothing else runs any more.
                self.provider.force_flush(timeout_millis=5_000)
            await send(message)

        await self.app(scope, receive, send_after_flush)


def instrument_httpx(http: httpx.AsyncClient) -> None:
    """Client spans for this client's requests, and a W3C `traceparent` header on them. Records
    method, URL and status only: no body, no header (unless an operator turns header capture
    on), so the card the adapter sends never reaches a span."""
    if not tracing_enabled():
        return
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    HTTPXClientInstrumentor.instrument_client(http)


def temporal_interceptors() -> list[client.Interceptor]:
    """For `Client.connect`: Temporal's `TracingInterceptor` (client spans for starts and
    Updates, workflow and activity spans on the workers, which take a client's interceptors)
    and the payment-id attributes; empty when tracing is off."""
    if not tracing_enabled():
        return []
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return [TracingInterceptor(), PaymentIdsInterceptor()]


# ---- the payment's ids on spans ------------------------------------------------------------
def annotate_current_span(
    *,
    merchant_id: str | None = None,
    payment_intent_id: str | None = None,
    transaction_id: str | None = None,
) -> None:
    """Put the payment's ids on the current span (the API's server span in a route). A no-op
    when tracing is off: the current span is then the API's non-recording one."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    for key, value in (
        (MERCHANT_ID, merchant_id),
        (PAYMENT_INTENT_ID, payment_intent_id),
        (TRANSACTION_ID, transaction_id),
    ):
        if value:
            span.set_attribute(key, value)


class PaymentIdsFromWorkflowId(SpanProcessor):
    """A payment's workflow id is its intent id (`pi_…`, api/payment_workflow.py): every span
    Temporal's interceptor makes for it (update, workflow, activity) gets the intent id."""

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        workflow_id = (span.attributes or {}).get("temporalWorkflowID")
        if isinstance(workflow_id, str) and workflow_id.startswith("pi_"):
            span.set_attribute(PAYMENT_INTENT_ID, workflow_id)

    def on_end(self, span: ReadableSpan) -> None:
        return None


def ids_of_activity_input(args: Sequence[Any]) -> dict[str, str]:
    """The payment's ids in an activity's arguments: the fields `merchant_id`,
    `payment_intent_id` and `transaction_id` of a dataclass input, and a `txn_…` network
    reference (the transaction id, activities/card_network.py). Reads nothing else, so no
    card field can become an attribute."""
    ids: dict[str, str] = {}
    for arg in args:
        if isinstance(arg, str) and arg.startswith("txn_"):
            ids.setdefault(TRANSACTION_ID, arg)
        if not is_dataclass(arg) or isinstance(arg, type):
            continue
        names = {field.name for field in fields(arg)}
        for name, key in (
            ("merchant_id", MERCHANT_ID),
            ("payment_intent_id", PAYMENT_INTENT_ID),
            ("transaction_id", TRANSACTION_ID),
        ):
            value = getattr(arg, name, None) if name in names else None
            if isinstance(value, str) and value:
                ids.setdefault(key, value)
        reference = (
            getattr(arg, "network_reference", None) if "network_reference" in names else None
        )
        if isinstance(reference, str) and reference.startswith("txn_"):
            ids.setdefault(TRANSACTION_ID, reference)
    return ids


class PaymentIdsInterceptor(client.Interceptor, worker.Interceptor):
    """Sets the payment's ids on each activity's span (the `RunActivity` span that
    `TracingInterceptor`, listed before this one, has just made current). The merchant id is
    in no activity input, so the payment's workflow passes it in a Temporal header."""

    def intercept_activity(
        self, next: worker.ActivityInboundInterceptor
    ) -> worker.ActivityInboundInterceptor:
        return _ActivityIds(next)

    def workflow_interceptor_class(
        self, input: worker.WorkflowInterceptorClassInput
    ) -> type[worker.WorkflowInboundInterceptor]:
        return _WorkflowMerchantHeader


class _ActivityIds(worker.ActivityInboundInterceptor):
    async def execute_activity(self, input: worker.ExecuteActivityInput) -> Any:
        ids = ids_of_activity_input(input.args)
        workflow_id = activity.info().workflow_id or ""
        if workflow_id.startswith("pi_"):
            ids.setdefault(PAYMENT_INTENT_ID, workflow_id)
        merchant = input.headers.get(MERCHANT_HEADER)
        if merchant is not None and MERCHANT_ID not in ids:
            value = PayloadConverter.default.from_payload(merchant, str)
            if isinstance(value, str) and value:
                ids[MERCHANT_ID] = value
        annotate_current_span(
            merchant_id=ids.get(MERCHANT_ID),
            payment_intent_id=ids.get(PAYMENT_INTENT_ID),
            transaction_id=ids.get(TRANSACTION_ID),
        )
        return await self.next.execute_activity(input)


class _WorkflowMerchantHeader(worker.WorkflowInboundInterceptor):
    """Deterministic: reads the payment's merchant id from the workflow's input, or from its
    `DurapayMerchantId` search attribute (set at start: an Update handler can schedule an
    activity before `run` has begun), and adds it as a header to the activities it schedules;
    headers are not part of Temporal's determinism checks."""

    merchant_id: str | None = None

    def init(self, outbound: worker.WorkflowOutboundInterceptor) -> None:
        super().init(_ActivityMerchantHeader(outbound, self))

    async def execute_workflow(self, input: worker.ExecuteWorkflowInput) -> Any:
        merchant_id = getattr(input.args[0], "merchant_id", None) if input.args else None
        if isinstance(merchant_id, str) and merchant_id:
            self.merchant_id = merchant_id
        return await self.next.execute_workflow(input)

    def merchant_header(self, headers: Mapping[str, Payload]) -> Mapping[str, Payload]:
        if self.merchant_id is None:
            self.merchant_id = workflow.info().typed_search_attributes.get(
                search_attributes.MERCHANT_ID
            )
        if not self.merchant_id:
            return headers
        return {**headers, MERCHANT_HEADER: PayloadConverter.default.to_payload(self.merchant_id)}


class _ActivityMerchantHeader(worker.WorkflowOutboundInterceptor):
    def __init__(
        self, next: worker.WorkflowOutboundInterceptor, root: _WorkflowMerchantHeader
    ) -> None:
        super().__init__(next)
        self._root = root

    def start_activity(self, input: worker.StartActivityInput) -> Any:
        input.headers = self._root.merchant_header(input.headers)
        return self.next.start_activity(input)

    def start_local_activity(self, input: worker.StartLocalActivityInput) -> Any:
        input.headers = self._root.merchant_header(input.headers)
        return self.next.start_local_activity(input)
