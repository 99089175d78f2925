"""core/telemetry.py: nothing is installed without an OTLP endpoint; with one, a provider built
from the standard `OTEL_*` environment; the API's server span encloses its request log; the
payment's ids (and nothing else) are read from activity inputs."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from api.main import create_app
from core import telemetry
from core.logs import JsonFormatter
from core.settings import Settings

OTEL_VARIABLES = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
)


@pytest.fixture
def no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in OTEL_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


def test_without_an_endpoint_nothing_is_installed(no_otel_env: None, tmp_path: object) -> None:
    assert telemetry.setup_tracing("durapay-api") is False
    assert not telemetry.tracing_enabled()
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)  # the API's no-op proxy
    assert telemetry.temporal_interceptors() == []
    app = FastAPI()
    unpatched = app.build_middleware_stack
    telemetry.instrument_fastapi(app)
    assert not getattr(app, "_is_instrumented_by_opentelemetry", False)
    assert app.build_middleware_stack == unpatched
    http = httpx.AsyncClient()
    telemetry.instrument_httpx(http)
    assert not getattr(http, "_is_instrumented_by_opentelemetry", False)


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": " "},
    ],
)
def test_tracing_is_requested_only_by_an_endpoint_not_disabled(env: dict[str, str]) -> None:
    assert not telemetry.tracing_requested(env)


def test_a_traces_endpoint_alone_requests_tracing() -> None:
    assert telemetry.tracing_requested({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318"})


# Run in a child: a tracer provider can be set once per process, and this one stays clean.
PROBE = """
import json
from opentelemetry import trace
from core import telemetry
try:
    on = telemetry.setup_tracing("durapay-worker")
except telemetry.TelemetryConfigError as error:
    print(json.dumps({"refused": str(error)}))
    raise SystemExit(0)
provider = trace.get_tracer_provider()
print(json.dumps({
    "on": on, "again": telemetry.setup_tracing("durapay-worker"),
    "service": provider.resource.attributes.get("service.name"),
    "sampler": type(provider.sampler).__name__,
    "interceptors": [type(i).__name__ for i in telemetry.temporal_interceptors()],
}))
"""


def _probe(**env: str) -> dict[str, object]:
    clean = {k: v for k, v in os.environ.items() if k not in OTEL_VARIABLES}
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.processes
def test_an_endpoint_installs_a_provider_from_the_standard_environment() -> None:
    probe = _probe(
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9",
        OTEL_TRACES_SAMPLER="always_off",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
    )
    assert probe == {
        "on": True,
        "again": True,
        "service": "durapay-worker",
        "sampler": "StaticSampler",  # always_off
        "interceptors": ["TracingInterceptor", "PaymentIdsInterceptor"],
    }
    named = _probe(
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="http://127.0.0.1:9/v1/traces",
        OTEL_SERVICE_NAME="payments-eu",
    )
    assert (named["service"], named["sampler"]) == ("payments-eu", "ParentBased")  # the default


@pytest.mark.processes
def test_a_grpc_protocol_is_refused_clearly() -> None:
    probe = _probe(
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9", OTEL_EXPORTER_OTLP_PROTOCOL="grpc"
    )
    assert "OTEL_EXPORTER_OTLP_PROTOCOL=grpc" in str(probe["refused"])
    assert "http/protobuf" in str(probe["refused"])


async def test_the_api_server_span_encloses_the_request_log_and_records_no_secret(
    no_otel_env: None, tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Even with every request header captured (an operator's choice), secrets are redacted.
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", ".*")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = create_app(Settings(home=tmp_path))  # tracing off: create_app instruments nothing
    telemetry.instrument_fastapi(app, tracer_provider=provider)
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter("api"))
    logging.getLogger("durapay.api.requests").addHandler(handler)
    secret = "Bearer pk_test_notreallyakey0123456789"
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api"
        ) as http:
            answered = await http.post(
                "/nowhere?cursor=x",
                content=b'{"number":"4242424242424242"}',
                headers={"Authorization": secret, "X-Signature": "v1=" + "ab" * 32},
            )
            await http.get("/livez")  # probes are not traced
    finally:
        logging.getLogger("durapay.api.requests").removeHandler(handler)
    assert answered.status_code == 404
    [span] = [s for s in exporter.get_finished_spans() if s.kind is trace.SpanKind.SERVER]
    assert span.name == "POST"  # no route matched; a matched one is named by its template
    everything = json.dumps(
        [
            {**(s.attributes or {}), "events": [dict(e.attributes or {}) for e in s.events]}
            for s in exporter.get_finished_spans()
        ]
    )
    assert "4242424242424242" not in everything
    assert "pk_test_notreallyakey" not in everything
    assert "abababab" not in everything
    assert span.attributes is not None
    assert span.attributes["http.request.header.x_signature"] == ("[REDACTED]",)
    assert span.attributes["http.request.header.authorization"] == ("[REDACTED]",)
    request_line = json.loads(lines.getvalue().splitlines()[0])
    assert request_line["traceId"] == trace.format_trace_id(span.context.trace_id)


@dataclass
class _Charge:
    payment_intent_id: str
    transaction_id: str
    card_number: str
    cvc: str


@dataclass
class _Authorize:
    network_reference: str
    card_token_id: str


def test_activity_ids_come_only_from_the_named_fields() -> None:
    ids = telemetry.ids_of_activity_input([_Charge("pi_1", "txn_1", "4242424242424242", "123")])
    assert ids == {telemetry.PAYMENT_INTENT_ID: "pi_1", telemetry.TRANSACTION_ID: "txn_1"}
    assert telemetry.ids_of_activity_input([_Authorize("txn_2", "tok_9")]) == {
        telemetry.TRANSACTION_ID: "txn_2"
    }
    assert telemetry.ids_of_activity_input(["txn_3"]) == {telemetry.TRANSACTION_ID: "txn_3"}
    assert telemetry.ids_of_activity_input([_Authorize("ref-9", "tok_9"), 7, None]) == {}
