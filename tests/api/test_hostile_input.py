"""Requests built to break the API: NUL characters anywhere, bodies FastAPI cannot parse sent
without valid credentials, an Idempotency-Key sent twice. Each is a clear 4xx naming what is
wrong, never a 500, and changes nothing."""

from __future__ import annotations

import gzip
import json
from typing import Any

import asyncpg
import httpx
import pytest

from client import sign
from tests.api.conftest import ADMIN, ADMIN_TOKEN, PUBLIC_URL, Merchant, rows_of

pytestmark = pytest.mark.api


def _assert_nul_refused(response: httpx.Response, param: str | None) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "parameter_invalid"
    assert error["param"] == param
    assert "\x00" not in response.text and "\\u0000" not in response.text


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/payment-intents?startingAfter=pi_%00x", "startingAfter"),
        ("/payment-intents/pi_%00x", "id"),
        ("/payment-intents/pi_%00x/events", "id"),
        ("/events?type=payment.%00created", "type"),
        ("/events?startingAfter=evt_%00", "startingAfter"),
        ("/webhook-endpoints/we_%00", "id"),
    ],
)
async def test_a_nul_in_the_path_or_query_is_400_naming_it(
    merchant: Merchant, path: str, param: str
) -> None:
    _assert_nul_refused(await merchant.get(path), param)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"amountInCents": 100, "currency": "usd", "description": "Order\u0000 1"}, "description"),
        (
            {"amountInCents": 100, "currency": "usd", "metadata": {"orderId": "1\u00002"}},
            "metadata.orderId",
        ),
        (
            {"amountInCents": 100, "currency": "usd", "metadata": {"order\u0000Id": "12"}},
            "metadata",
        ),
    ],
)
async def test_a_nul_in_a_body_string_is_400_naming_it(
    merchant: Merchant, db: asyncpg.Pool, body: dict[str, Any], param: str
) -> None:
    before = await rows_of(db, merchant)
    _assert_nul_refused(await merchant.post("/payment-intents", body), param)
    _assert_nul_refused(
        await merchant.post("/payment-intents", body, idempotency_key="nul-body-key"), param
    )
    assert await rows_of(db, merchant) == before


async def test_a_nul_in_a_webhook_endpoint_or_merchant_field_is_400_naming_it(
    http: httpx.AsyncClient, merchant: Merchant, db: asyncpg.Pool
) -> None:
    before = await rows_of(db, merchant)
    _assert_nul_refused(
        await merchant.post(
            "/webhook-endpoints", {"url": PUBLIC_URL + "\u0000", "enabledEvents": ["*"]}
        ),
        "url",
    )
    _assert_nul_refused(
        await merchant.post(
            "/webhook-endpoints",
            {"url": PUBLIC_URL, "enabledEvents": ["payment.succeeded", "\u0000"]},
        ),
        "enabledEvents.1",
    )
    assert await rows_of(db, merchant) == before
    _assert_nul_refused(
        await http.post("/merchants", json={"name": "Acme\u0000"}, headers=ADMIN), "name"
    )


async def test_a_nul_in_the_idempotency_key_is_400_naming_it(merchant: Merchant) -> None:
    response = await merchant.request(
        "POST",
        "/payment-intents",
        {"amountInCents": 100, "currency": "usd"},
        headers={"Idempotency-Key": "key\x00one"},
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "Idempotency-Key"


async def test_an_idempotency_key_sent_twice_is_400(
    http: httpx.AsyncClient, merchant: Merchant, db: asyncpg.Pool
) -> None:
    before = await rows_of(db, merchant)
    request = http.build_request(
        "POST",
        "/payment-intents",
        content=json.dumps({"amountInCents": 100, "currency": "usd"}).encode(),
        headers=[
            ("Content-Type", "application/json"),
            ("Idempotency-Key", "first-key"),
            ("Idempotency-Key", "second-key"),
        ],
    )
    sign(request, public_key=merchant.public_key, secret_key=merchant.secret_key)
    response = await http.send(request)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert response.json()["error"]["param"] == "Idempotency-Key"
    assert await rows_of(db, merchant) == before


# 30,000 levels: far past the JSON parser's recursion limit, within the 64 KiB body limit.
DEEP = b"[" * 30_000 + b"]" * 30_000
GZIPPED = gzip.compress(json.dumps({"amountInCents": 100, "currency": "usd"}).encode())
UNPARSABLE = {
    "invalid JSON": ({}, b'{"amountInCents": '),
    "nested too deep": ({}, DEEP),
    "gzip": ({"Content-Encoding": "gzip"}, GZIPPED),
}


@pytest.mark.parametrize("shape", list(UNPARSABLE))
async def test_an_unparsable_body_is_401_without_valid_credentials(
    http: httpx.AsyncClient, merchant: Merchant, shape: str
) -> None:
    extra, body = UNPARSABLE[shape]
    headers = {"Content-Type": "application/json", **extra}
    unsigned = await http.post("/payment-intents", content=body, headers=headers)
    assert unsigned.status_code == 401, unsigned.text
    assert unsigned.json()["error"]["code"] == "missing_api_key"
    request = http.build_request("POST", "/payment-intents", content=body, headers=headers)
    sign(request, public_key=merchant.public_key, secret_key="sk_test_" + "0" * 32)
    forged = await http.send(request)
    assert forged.status_code == 401, forged.text
    assert forged.json()["error"]["code"] == "invalid_signature"
    no_token = await http.post("/merchants", content=body, headers=headers)
    assert no_token.status_code == 401, no_token.text
    assert no_token.json()["error"]["code"] == "invalid_admin_token"


@pytest.mark.parametrize("shape", list(UNPARSABLE))
async def test_an_unparsable_body_is_400_invalid_json_once_authenticated(
    http: httpx.AsyncClient, merchant: Merchant, shape: str
) -> None:
    extra, body = UNPARSABLE[shape]
    headers = {"Content-Type": "application/json", **extra}
    request = http.build_request("POST", "/payment-intents", content=body, headers=headers)
    sign(request, public_key=merchant.public_key, secret_key=merchant.secret_key)
    signed = await http.send(request)
    assert signed.status_code == 400, signed.text
    assert signed.json()["error"]["code"] == "invalid_json"
    admin = await http.post(
        "/merchants", content=body, headers={**headers, "Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert admin.status_code == 400, admin.text
    assert admin.json()["error"]["code"] == "invalid_json"
