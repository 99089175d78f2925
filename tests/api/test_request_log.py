"""api/request_log.py: a `Request-Id` on every answer and one JSON log line per request."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from api.main import create_app
from core.logs import JsonFormatter
from core.settings import Settings
from tests.api.conftest import Merchant

pytestmark = pytest.mark.api

GENERATED = re.compile(r"req_[0-9a-f]{24}")
LIMIT = 65_536  # DURAPAY_MAX_BODY_BYTES's default, which the session's app uses


class JsonLines(logging.Handler):
    """Formats each record as it is emitted, while the request's context is still set."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter("api"))
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))

    def requests(self) -> list[dict[str, Any]]:
        return [line for line in self.lines if line["logger"] == "durapay.api.requests"]


@pytest.fixture
def log_lines() -> Iterator[JsonLines]:
    handler = JsonLines()
    logger = logging.getLogger("durapay.api.requests")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def test_a_request_without_an_id_gets_a_generated_one(http: httpx.AsyncClient) -> None:
    first = await http.get("/livez")
    second = await http.get("/livez")
    assert GENERATED.fullmatch(first.headers["Request-Id"])
    assert first.headers["Request-Id"] != second.headers["Request-Id"]


async def test_a_valid_incoming_request_id_is_echoed(http: httpx.AsyncClient) -> None:
    response = await http.get("/livez", headers={"Request-Id": "req_from-the_caller42"})
    assert response.headers["Request-Id"] == "req_from-the_caller42"


@pytest.mark.parametrize(
    "incoming", ["abc", "req_", "req_has space", 'req_"quoted"', "req_" + "a" * 65, "req_caf\u00e9"]
)
async def test_a_malformed_request_id_is_replaced(http: httpx.AsyncClient, incoming: str) -> None:
    response = await http.get("/livez", headers={b"Request-Id": incoming.encode()})
    assert GENERATED.fullmatch(response.headers["Request-Id"])


async def test_errors_carry_a_request_id_too(http: httpx.AsyncClient) -> None:
    unauthenticated = await http.get("/payment-intents")
    missing = await http.get("/nowhere")
    too_large = await http.post(
        "/payment-intents", content=b"x" * (LIMIT + 1), headers={"Content-Type": "application/json"}
    )
    assert [unauthenticated.status_code, missing.status_code, too_large.status_code] == [
        401,
        404,
        413,
    ]
    for response in (unauthenticated, missing, too_large):
        assert GENERATED.fullmatch(response.headers["Request-Id"]), response.status_code


async def test_one_line_per_request_with_route_template_status_and_duration(
    merchant: Merchant, log_lines: JsonLines
) -> None:
    intent = await merchant.create_intent(amount=4321, description="secret-looking body text")
    log_lines.lines.clear()
    response = await merchant.request(
        "GET", f"/payment-intents/{intent['id']}", headers={"Request-Id": "req_the_one_to_find"}
    )
    assert response.status_code == 200
    [line] = log_lines.requests()
    assert line["route"] == "/payment-intents/{id}"
    assert (line["method"], line["status"]) == ("GET", 200)
    assert isinstance(line["durationMs"], float) and line["durationMs"] >= 0
    assert line["requestId"] == "req_the_one_to_find"
    assert line["merchantId"] == merchant.id
    assert line["paymentIntentId"] == intent["id"]
    assert line["service"] == "api" and line["level"] == "INFO"
    assert line["message"] == f"GET /payment-intents/{{id}} 200 {line['durationMs']:.1f} ms"


async def test_the_line_holds_no_body_query_or_credentials(
    merchant: Merchant, log_lines: JsonLines
) -> None:
    response = await merchant.request(
        "POST",
        "/payment-intents?probe=query-value",
        {"amountInCents": 777, "currency": "usd", "description": "body-marker-1234"},
        idempotency_key="idem-marker-5678",
    )
    assert response.status_code == 201
    [line] = log_lines.requests()
    assert (line["route"], line["status"], line["merchantId"]) == (
        "/payment-intents",
        201,
        merchant.id,
    )
    text = json.dumps(log_lines.lines)
    for secret in (
        "body-marker-1234",
        "query-value",
        "idem-marker-5678",
        merchant.secret_key,
        merchant.public_key,
        "X-Signature",
        "v1=",
    ):
        assert secret not in text


async def test_an_unmatched_url_is_logged_as_unmatched(
    http: httpx.AsyncClient, log_lines: JsonLines
) -> None:
    await http.get("/nowhere/pi_123")
    [line] = log_lines.requests()
    assert (line["route"], line["status"]) == ("unmatched", 404)
    assert "merchantId" not in line


async def test_an_unexpected_error_is_a_500_with_a_request_id_and_a_line(
    settings: Settings, log_lines: JsonLines
) -> None:
    app = create_app(settings)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://durapay.test") as http,
    ):
        response = await http.get("/boom", headers={"Request-Id": "req_boom"})
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert response.headers["Request-Id"] == "req_boom"
    [line] = log_lines.requests()
    assert (line["route"], line["status"], line["requestId"]) == ("/boom", 500, "req_boom")
