"""The OpenAPI document's own rules, read from the document the app serves (no database or
Temporal needed: `/openapi.json` reads neither). Whether real answers match it is
tests/integration/test_schemathesis.py's part."""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest
import schemathesis

from api.main import create_app
from api.openapi import OPERATION_ID_PATTERN
from core.domain import IntentStatus, TransactionStatus, TransactionType
from core.settings import Settings
from core.webhooks import ENDPOINT_DISABLED_EVENT, PAYMENT_EVENT_TYPES

SIGNED: list[dict[str, list[str]]] = [
    {"publicKey": [], "timestamp": [], "nonce": [], "signature": []}
]
ADMIN: list[dict[str, list[str]]] = [{"adminToken": []}]
HEALTH_PATHS = ("/livez", "/readyz", "/healthz")
# The error `type` each status always carries (docs/api.md, Errors).
ERROR_TYPES = {
    "400": "invalid_request_error",
    "401": "authentication_error",
    "402": "card_error",
    "404": "not_found",
    "408": "invalid_request_error",
    "409": "conflict",
    "413": "invalid_request_error",
    "429": "rate_limit_error",
    "500": "api_error",
    "503": "api_error",
}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    app = create_app(
        Settings(admin_token="openapi-tests", master_key=base64.b64encode(os.urandom(32)).decode())
    )
    return app.openapi()


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            yield method.upper(), path, operation


def resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def validator(spec: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    """Validates against `schema`, its `#/components/...` references resolved in `spec`."""
    return jsonschema.Draft202012Validator({**schema, "components": spec["components"]})


def test_the_document_is_valid_openapi(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.1")
    schemathesis.openapi.from_dict(spec).validate()  # against the OpenAPI 3.1 meta-schema


def test_every_operation_id_is_resource_then_verb_and_unique(spec: dict[str, Any]) -> None:
    seen: dict[str, str] = {}
    for method, path, operation in operations(spec):
        operation_id = operation.get("operationId", "")
        assert re.fullmatch(OPERATION_ID_PATTERN, operation_id), (method, path, operation_id)
        assert operation_id not in seen, (operation_id, path, seen.get(operation_id))
        seen[operation_id] = path
        # The resource is the path's, its `{id}`s left out (nested ones after their parent).
        resource = "-".join(s for s in path.strip("/").split("/") if not s.startswith("{"))
        expected = "health" if path in HEALTH_PATHS else resource
        assert operation_id.startswith(expected + "-") or operation_id == resource, (
            method,
            path,
            operation_id,
        )
    assert len(seen) >= 22
    assert {
        "payment-intents-create",
        "payment-intents-retrieve",
        "payment-intents-list",
        "payment-intents-capture",
        "payment-intents-cancel",
        "payment-intents-transactions-create",
        "payment-intents-refunds-create",
        "events-list",
        "events-redeliver",
        "webhook-endpoints-create",
        "webhook-endpoints-delete",
        "merchants-create",
        "merchants-keys-roll",
        "health-readyz",
    } <= set(seen)


def test_signature_headers_are_one_security_scheme_set(spec: dict[str, Any]) -> None:
    schemes = spec["components"]["securitySchemes"]
    headers = {
        name: (s["type"], s["in"], s["name"])
        for name, s in schemes.items()
        if s["type"] == "apiKey"
    }
    assert headers == {
        "publicKey": ("apiKey", "header", "Authorization"),
        "timestamp": ("apiKey", "header", "X-Timestamp"),
        "nonce": ("apiKey", "header", "X-Nonce"),
        "signature": ("apiKey", "header", "X-Signature"),
    }
    assert schemes["adminToken"] == {**schemes["adminToken"], "type": "http", "scheme": "bearer"}
    for method, path, operation in operations(spec):
        expected = (
            [] if path in HEALTH_PATHS else ADMIN if path.startswith("/merchants") else SIGNED
        )
        assert operation["security"] == expected, (method, path)
        # Described by the schemes, not repeated as parameters that a generator would fill.
        names = {p["name"].lower() for p in operation.get("parameters", [])}
        assert not names & {"authorization", "x-timestamp", "x-nonce", "x-signature"}, path


def test_every_operation_documents_the_errors_it_can_answer(spec: dict[str, Any]) -> None:
    for method, path, operation in operations(spec):
        statuses = set(operation["responses"])
        parameters = {p["in"] for p in operation.get("parameters", [])}
        takes_input = "requestBody" in operation or bool(parameters - {"path"})
        idempotent = any(
            p["name"].lower() == "idempotency-key" for p in operation.get("parameters", [])
        )
        # The body's time and size limits are before routing; a crash is a 500.
        expected = {"408", "413", "500"}
        if path not in HEALTH_PATHS:
            expected |= {"401", "503"}
        if operation["security"] in (SIGNED, ADMIN):
            expected.add("429")  # per merchant key; failed admin tokens per address
        if "{id}" in path:
            expected.add("404")
        if takes_input:
            expected.add("400")
        if idempotent and method == "POST" and path != "/events/{id}/redeliver":
            expected.add("409")  # idempotency_key_in_use
        assert expected <= statuses, (method, path, sorted(expected - statuses))
        assert "422" not in statuses, (method, path)  # validation answers 400
        for status, answer in operation["responses"].items():
            assert set(answer["headers"]) >= {"Request-Id", "Cache-Control"}, (path, status)
            if status in ERROR_TYPES and not path.startswith(HEALTH_PATHS):
                schema = resolve(spec, answer["content"]["application/json"]["schema"])
                error_type = resolve(spec, schema["properties"]["error"])["properties"]["type"]
                assert error_type.get("const") == ERROR_TYPES[status], (method, path, status)
            if status in ("429", "503"):
                assert answer["headers"]["Retry-After"]["required"] is True, (path, status)


def test_statuses_and_types_are_enums(spec: dict[str, Any]) -> None:
    def enum_of(model: str, field: str) -> list[str | None]:
        schema = spec["components"]["schemas"][model]["properties"][field]
        return schema.get("enum") or schema["items"]["enum"]

    assert enum_of("PaymentIntentOut", "status") == [s.value for s in IntentStatus]
    assert enum_of("PaymentIntentOut", "captureMethod") == ["automatic", "manual"]
    assert None in enum_of("PaymentIntentOut", "cancellationReason")
    assert enum_of("TransactionOut", "status") == [s.value for s in TransactionStatus]
    assert enum_of("TransactionOut", "type") == [t.value for t in TransactionType]
    assert enum_of("EventOut", "type") == [*PAYMENT_EVENT_TYPES, ENDPOINT_DISABLED_EVENT]
    assert enum_of("WebhookEndpointOut", "status") == ["enabled", "disabled"]
    assert enum_of("WebhookDeliveryOut", "status") == ["pending", "succeeded", "failed", "canceled"]
    assert enum_of("WebhookEndpointCreate", "enabledEvents") == ["*", *PAYMENT_EVENT_TYPES]
    assert set(enum_of("PaymentIntentCreate", "currency")) >= {"usd", "eur", "gbp", "jpy"}
    assert set(enum_of("ErrorDetail", "type")) == set(ERROR_TYPES.values())


def test_every_operation_has_a_valid_example(spec: dict[str, Any]) -> None:
    for method, path, operation in operations(spec):
        success = [s for s in operation["responses"] if s.startswith("2")]
        assert success, (method, path)
        for status, answer in operation["responses"].items():
            media = answer["content"]["application/json"] if "content" in answer else None
            if media is None:  # a 202 whose body is the 200's
                assert status == "202", (method, path, status)
                continue
            assert "example" in media, (method, path, status)
            validator(spec, media["schema"]).validate(media["example"])
        body = operation.get("requestBody", {}).get("content", {}).get("application/json")
        if body is not None:
            assert "example" in body, (method, path)
            validator(spec, body["schema"]).validate(body["example"])


async def test_the_document_and_its_pages_are_served() -> None:
    app = create_app(
        Settings(admin_token="openapi-tests", master_key=base64.b64encode(os.urandom(32)).decode())
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://durapay.test"
    ) as http:
        document = await http.get("/openapi.json")
        assert document.status_code == 200
        assert (
            document.json()["components"]["securitySchemes"]["signature"]["name"] == "X-Signature"
        )
        for page in ("/docs", "/redoc"):
            response = await http.get(page)
            assert response.status_code == 200 and "/openapi.json" in response.text, page
