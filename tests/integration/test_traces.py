"""One charge is one trace across the API, the worker and the card-network simulator, exported
over OTLP/HTTP (protobuf) to a receiver this module runs; no span holds card data or secrets.

The stack is this module's own (tracing is configured at process start, by environment).
"""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from client import DurapayClient
from tests.integration.helpers import (
    assert_eventually,
    charge,
    log_lines,
    onboard,
    own_stack,
)
from tests.stack import RunningStack, free_port, private_dir, stop_process

pytestmark = pytest.mark.integration

CARD_NUMBER = "4242424242424242"
CVC = "738"
API, WORKER, CARDNET = "durapay-api", "durapay-worker", "durapay-cardnet"
SERVER, CLIENT = "SPAN_KIND_SERVER", "SPAN_KIND_CLIENT"


@dataclass
class ReceivedSpan:
    service: str
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: str
    attributes: dict[str, Any]
    events: list[dict[str, Any]]


class OtlpReceiver:
    """A minimal OTLP/HTTP traces endpoint: decodes each ExportTraceServiceRequest and keeps its
    spans (and the raw bodies, to search them for card data)."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.bodies: list[bytes] = []
        self.paths: set[str] = set()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.receive(self.path, body)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def receive(self, path: str, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        spans = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    as_dict = MessageToDict(span, preserving_proto_field_name=True)
                    spans.append(
                        ReceivedSpan(
                            service=str(resource.get("service.name")),
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            name=span.name,
                            kind=as_dict.get("kind", "SPAN_KIND_UNSPECIFIED"),
                            attributes=_attributes(span.attributes),
                            events=[
                                {"name": e.name, **_attributes(e.attributes)} for e in span.events
                            ],
                        )
                    )
        with self._lock:
            self.paths.add(path)
            self.bodies.append(body)
            self.spans.extend(spans)

    def snapshot(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.spans)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _attributes(key_values: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key_value in key_values:
        value = MessageToDict(key_value.value)
        values[key_value.key] = next(iter(value.values())) if value else None
    return values


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    running = OtlpReceiver()
    yield running
    running.close()


@pytest.fixture(scope="module")
def traced_stack(
    tmp_path_factory: pytest.TempPathFactory, receiver: OtlpReceiver
) -> Iterator[RunningStack]:
    with own_stack(
        tmp_path_factory,
        "otel",
        extra_env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        },
    ) as running:
        yield running


async def test_one_charge_is_one_trace_across_api_worker_and_cardnet(
    traced_stack: RunningStack, receiver: OtlpReceiver
) -> None:
    async with httpx.AsyncClient(
        base_url=traced_stack.api_url,
        timeout=30,
        headers={"Authorization": f"Bearer {traced_stack.admin_token}"},
    ) as admin:
        merchant = await onboard(admin, f"Traced {uuid.uuid4().hex[:6]}")
    async with DurapayClient(
        traced_stack.api_url, merchant["publicKey"], merchant["secretKey"]
    ) as durapay:
        created = await durapay.post("/payment-intents", {"amountInCents": 1999, "currency": "usd"})
        assert created.status_code == 201, created.text
        intent_id = created.json()["id"]
        charged = await charge(
            durapay, intent_id, {"number": CARD_NUMBER, "expMonth": 12, "expYear": 2030, "cvc": CVC}
        )
        assert charged.status_code == 200, charged.text
        transaction_id = charged.json()["id"]
        assert charged.json()["status"] == "succeeded", charged.text

    async def whole_trace() -> list[ReceivedSpan]:
        spans = receiver.snapshot()
        servers = [
            s
            for s in spans
            if s.service == API
            and s.kind == SERVER
            and s.attributes.get("durapay.payment_intent_id") == intent_id
        ]
        assert len(servers) == 1, f"API server spans of the charge: {servers}"
        trace = [s for s in spans if s.trace_id == servers[0].trace_id]
        assert {API, WORKER, CARDNET} <= {s.service for s in trace}, sorted(
            {(s.service, s.name) for s in trace}
        )
        return trace

    trace = await assert_eventually(whole_trace, timeout=30, interval=0.3)
    # The batch processors may still hold the trace's last spans: wait until its span count
    # holds still over a few export periods.
    counts: list[int] = []

    async def settled() -> list[ReceivedSpan] | None:
        spans = [s for s in receiver.snapshot() if s.trace_id == trace[0].trace_id]
        counts.append(len(spans))
        return spans if len(counts) >= 4 and len(set(counts[-4:])) == 1 else None

    trace = await assert_eventually(settled, timeout=15, interval=0.5)
    _print_tree(trace)

    by_id = {s.span_id: s for s in trace}
    [network_server] = [
        s
        for s in trace
        if s.service == CARDNET and s.kind == SERVER and s.name == "POST /v1/operations"
    ]
    chain = [network_server]
    while chain[-1].parent_id in by_id:
        chain.append(by_id[chain[-1].parent_id])
    described = [(s.service, s.kind, s.name) for s in chain]
    print(
        "\n[traces] cardnet server span up to the root:\n  "
        + "\n  ".join(f"{service:<16} {kind:<17} {name}" for service, kind, name in described)
    )
    # The parent chain: cardnet server <- worker's httpx client <- the activity's span <- the
    # workflow's StartActivity <- the API's update-with-start client span <- the API's server
    # span for the charge (the root: no traceparent came with the request).
    assert described[0] == (CARDNET, SERVER, "POST /v1/operations")
    assert described[1][:2] == (WORKER, CLIENT)  # httpx's span for the POST
    assert described[2] == (WORKER, SERVER, "RunActivity:authorize_card")
    assert described[3] == (WORKER, CLIENT, "StartActivity:authorize_card")
    assert described[4] == (API, CLIENT, "StartUpdateWithStartWorkflow:PaymentIntentWorkflow")
    assert described[5] == (API, SERVER, "POST /payment-intents/{id}/transactions")
    assert len(described) == 6, described
    assert chain[-1].parent_id == "", "the API's server span is the trace's root"
    update_client = chain[4]
    workflow_spans = {s.name for s in trace if s.parent_id == update_client.span_id}
    assert {"RunWorkflow:PaymentIntentWorkflow", "HandleUpdate:confirm_charge"} <= workflow_spans, (
        workflow_spans
    )
    assert all(
        s.service == WORKER for s in trace if s.name.startswith(("RunWorkflow:", "HandleUpdate:"))
    )

    # The payment's ids, as attributes.
    api_server = chain[5]
    activities = [s for s in trace if s.name.startswith("RunActivity:")]
    assert {s.name for s in activities} >= {
        "RunActivity:record_charge_attempt",
        "RunActivity:authorize_card",
        "RunActivity:record_outcome",
    }, activities
    for span in (api_server, *activities):
        assert span.attributes.get("durapay.merchant_id") == merchant["id"], span
        assert span.attributes.get("durapay.payment_intent_id") == intent_id, span
        assert span.attributes.get("durapay.transaction_id") == transaction_id, span
    assert all(
        s.attributes.get("durapay.payment_intent_id") == intent_id
        for s in trace
        if s.name.startswith(("RunWorkflow:", "HandleUpdate:", "RunActivity:", "StartActivity:"))
    )

    # The log lines written while the charge ran carry its trace id: the API's request line,
    # and the worker's lines about this payment.
    trace_id = api_server.trace_id

    async def charge_request_line() -> dict[str, Any]:
        [line] = [
            line
            for line in log_lines(traced_stack, "api", strict=False)
            if line.get("route") == "/payment-intents/{id}/transactions"
            and line.get("paymentIntentId") == intent_id
        ]
        return line

    assert (await assert_eventually(charge_request_line, timeout=10))["traceId"] == trace_id
    worker_lines = [
        line
        for line in log_lines(traced_stack, "worker-1", strict=False)
        if line.get("paymentIntentId") == intent_id
    ]
    print(f"\n[traces] worker log lines about {intent_id}: {len(worker_lines)}")
    assert all(line.get("traceId") == trace_id for line in worker_lines), worker_lines

    # No card data and no secret anywhere: not in any span of any service, not in any
    # attribute or event, not in the bytes exported.
    secrets = (CARD_NUMBER, merchant["secretKey"])
    for body in receiver.bodies:
        assert not any(secret.encode() in body for secret in secrets)
    cvc_token = re.compile(rf"(?<![0-9A-Za-z]){CVC}(?![0-9A-Za-z])")
    for span in receiver.snapshot():
        for value in [
            *span.attributes.values(),
            *span.attributes.keys(),
            *(str(e) for e in span.events),
        ]:
            text = str(value)
            assert CARD_NUMBER not in text, (span.name, text)
            assert not cvc_token.search(text), (span.name, text)
            assert "cvc" not in text.lower(), (span.name, text)
    assert receiver.paths == {"/v1/traces"}


def _print_tree(trace: list[ReceivedSpan]) -> None:
    children: dict[str, list[ReceivedSpan]] = {}
    ids = {s.span_id for s in trace}
    for span in trace:
        children.setdefault(span.parent_id if span.parent_id in ids else "", []).append(span)
    lines: list[str] = []

    def walk(parent: str, depth: int) -> None:
        for span in children.get(parent, []):
            ids_text = " ".join(
                f"{k.removeprefix('durapay.')}={v}"
                for k, v in sorted(span.attributes.items())
                if k.startswith("durapay.")
            )
            kind = span.kind.removeprefix("SPAN_KIND_")
            lines.append(f"{'  ' * depth}{span.service:<16} {kind:<8} {span.name}  {ids_text}")
            walk(span.span_id, depth + 1)

    walk("", 0)
    print(
        f"\n[traces] one charge, trace {trace[0].trace_id}, {len(trace)} spans:\n"
        + "\n".join(lines)
    )


def test_the_last_spans_are_exported_when_a_process_is_stopped(
    receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """SIGTERM, as a supervisor stops a process: the batch still held (its export delay is an
    hour here) is flushed on the way out, not lost. The simulator stands for the uvicorn
    processes (the API is one too); the workers return from main and flush at exit."""
    port = free_port()
    data_dir = private_dir("otel-cardnet")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "DURAPAY_"))},
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "3600000",
        "OTEL_SERVICE_NAME": "cardnet-sigterm-check",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "cardnet", "--port", str(port), "--data-dir", str(data_dir)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ledger", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the simulator did not start"
            time.sleep(0.2)
        assert not [s for s in receiver.snapshot() if s.service == "cardnet-sigterm-check"]
    finally:
        stop_process(process)  # SIGTERM first
    # Uvicorn re-raises the SIGTERM once shut down (-15), which skips every exit hook: the
    # flush must have happened before.
    assert process.returncode in (0, -15)
    assert [
        s.name
        for s in receiver.snapshot()
        if s.service == "cardnet-sigterm-check" and s.kind == SERVER
    ] == ["GET /ledger"]
