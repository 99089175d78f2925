"""api/deps.py's signed-request auth (docs/api.md, "Signed requests"), through
POST /payment-intents: every way a request fails it answers 401 and changes nothing."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from client import DurapayClient, signed_headers
from core.crypto import sign_request
from tests.api.conftest import ADMIN_TOKEN, Merchant, count, statements_of
from tests.signed_escapes import check_escaped_requests_are_verified

pytestmark = pytest.mark.api


def _signed(
    merchant: Merchant, method: str, path: str, body: bytes, **overrides: Any
) -> dict[str, str]:
    headers = signed_headers(
        public_key=merchant.public_key,
        secret_key=merchant.secret_key,
        method=method,
        path_and_query=path,
        body=body,
        timestamp=overrides.pop("timestamp", None),
        nonce=overrides.pop("nonce", None),
    )
    return {**headers, "Content-Type": "application/json", **overrides}


async def test_auth_failures_are_401_and_change_nothing(
    http: httpx.AsyncClient, merchant: Merchant, db: asyncpg.Pool
) -> None:
    path = "/payment-intents"
    body = json.dumps({"amountInCents": 100, "currency": "usd"}).encode()
    now = int(time.time())
    cases: dict[str, tuple[dict[str, str], bytes]] = {
        "missing_api_key": ({}, body),
        "missing_signature": ({"Authorization": f"Bearer {merchant.public_key}"}, body),
        "invalid_signature": (
            _signed(merchant, "POST", path, body, **{"X-Signature": "v1=" + "0" * 64}),
            body,
        ),
        "timestamp_out_of_window": (
            _signed(merchant, "POST", path, body, timestamp=now - 301),
            body,
        ),
        # Well past the tolerance: on a busy machine the cases before it can take seconds.
        "timestamp_out_of_window ": (
            _signed(merchant, "POST", path, body, timestamp=now + 360),
            body,
        ),
        "invalid_api_key": (
            _signed(merchant, "POST", path, body, Authorization="Bearer pk_test_" + "0" * 32),
            body,
        ),
        "invalid_nonce": (_signed(merchant, "POST", path, body, nonce="short"), body),
        "invalid_signature ": (_signed(merchant, "POST", "/payment-intents?x=1", body), body),
        "invalid_signature  ": (
            _signed(merchant, "POST", path, body),
            body.replace(b"100", b"999"),
        ),  # tampered after signing
    }
    for expected_code, (headers, content) in cases.items():
        response = await http.post(path, content=content, headers=headers)
        assert response.status_code == 401, expected_code
        error = response.json()["error"]
        assert error["type"] == "authentication_error"
        assert error["code"] == expected_code.strip(), (expected_code, error)
    assert await count(db, "payment_intent", merchant) == 0


async def test_a_replayed_nonce_is_401(
    http: httpx.AsyncClient, merchant: Merchant, db: asyncpg.Pool
) -> None:
    body = json.dumps({"amountInCents": 100, "currency": "usd"}).encode()
    headers = _signed(merchant, "POST", "/payment-intents", body, nonce=uuid.uuid4().hex)
    first = await http.post("/payment-intents", content=body, headers=headers)
    assert first.status_code == 201
    replayed = await http.post("/payment-intents", content=body, headers=headers)
    assert replayed.status_code == 401
    assert replayed.json()["error"]["code"] == "replayed_nonce"
    assert await count(db, "payment_intent", merchant) == 1


@pytest.mark.parametrize(
    "timestamp",
    [
        "{now}\u00b2",  # str.isdigit() says yes, int() raises: must not be a 500
        "\u00b9{now}",
        "9" * 5000,  # past int()'s digit limit: must not be a 500
        " {now}",
        "+{now}",
    ],
)
async def test_a_timestamp_of_anything_but_ascii_digits_is_401(
    http: httpx.AsyncClient, merchant: Merchant, db: asyncpg.Pool, timestamp: str
) -> None:
    path = "/payment-intents"
    body = json.dumps({"amountInCents": 100, "currency": "usd"}).encode()
    value = timestamp.format(now=int(time.time()))
    headers = _signed(merchant, "POST", path, body)
    signature = sign_request(
        merchant.secret_key,
        method="POST",
        path_and_query=path,
        timestamp=value,
        nonce=headers["X-Nonce"],
        body=body,
    )
    # Header values are bytes on the wire; Starlette reads them as latin-1, where '²' is one.
    raw = {**headers, "X-Timestamp": value.encode("latin-1"), "X-Signature": signature}
    # httpx sends a bytes value among str ones; its types allow one kind or the other.
    response = await http.post(path, content=body, headers=raw)  # type: ignore[arg-type]
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "timestamp_out_of_window"
    assert await count(db, "payment_intent", merchant) == 0


@pytest.mark.parametrize("header", ["Authorization", "X-Timestamp", "X-Nonce", "X-Signature"])
async def test_an_authentication_header_sent_twice_is_401(
    http: httpx.AsyncClient, merchant: Merchant, db: asyncpg.Pool, header: str
) -> None:
    path = "/payment-intents"
    body = json.dumps({"amountInCents": 100, "currency": "usd"}).encode()
    headers = _signed(merchant, "POST", path, body)
    # The same value twice: even an unambiguous duplicate is refused, since proxies and
    # frameworks disagree on which copy counts.
    twice = [*headers.items(), (header, headers[header])]
    response = await http.post(path, content=body, headers=twice)
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("authentication_error", "duplicate_header")
    assert error["param"] == header
    assert await count(db, "payment_intent", merchant) == 0


async def test_a_signed_get_writes_nothing_but_its_nonce_and_rate_limit_token(
    app: FastAPI, merchant: Merchant, db: asyncpg.Pool
) -> None:
    intent = await merchant.create_intent()
    # Expired rows of another key: a request never deletes them; housekeeping does.
    elsewhere = f"pk_test_{uuid.uuid4().hex}"
    await db.execute(
        "INSERT INTO request_nonce (public_key, nonce, expires_at) "
        "VALUES ($1, $2, now() - interval '1 hour')",
        elsewhere,
        uuid.uuid4().hex,
    )
    for path in (f"/payment-intents/{intent['id']}", "/payment-intents"):
        with statements_of(app) as sent:
            response = await merchant.get(path)
        assert response.status_code == 200, response.text
        writes = [
            s for s in sent if not s.lstrip().upper().startswith(("SELECT", "BEGIN", "ROLLBACK"))
        ]
        # The one authentication statement: its only writes are the nonce and the token.
        [authentication] = writes
        assert "INSERT INTO request_nonce" in authentication
        assert "INSERT INTO rate_limit_bucket" in authentication
        for table in ("payment_intent", "idempotency_record", "card_token", "event"):
            assert table not in authentication
        assert "DELETE" not in " ".join(sent).upper()
    assert (
        await db.fetchval("SELECT count(*) FROM request_nonce WHERE public_key = $1", elsewhere)
        == 1
    )


async def test_a_signed_retrieve_is_two_statements(app: FastAPI, merchant: Merchant) -> None:
    intent = await merchant.create_intent()
    await merchant.get(f"/payment-intents/{intent['id']}")  # this process has cached the key
    with statements_of(app) as sent:
        response = await merchant.get(f"/payment-intents/{intent['id']}")
    assert response.status_code == 200, response.text
    # Authentication, then the intent with its transactions: no BEGIN, COMMIT or ROLLBACK.
    assert len(sent) == 2, [query[:40] for query in sent]


async def test_a_request_with_percent_escapes_signed_by_the_client_is_accepted(
    app: FastAPI, merchant: Merchant
) -> None:
    """The client signs the path and query as httpx sends them; the API verifies them as
    received (`raw_path`, `query_string`), not as decoded."""
    intent = await merchant.create_intent()
    async with DurapayClient(
        "http://durapay.test",
        merchant.public_key,
        merchant.secret_key,
        transport=httpx.ASGITransport(app=app),
    ) as durapay:
        await check_escaped_requests_are_verified(durapay, intent["id"])


async def test_a_signature_over_the_decoded_path_is_refused(
    http: httpx.AsyncClient, merchant: Merchant
) -> None:
    sent = "/payment-intents/pi_no%2Dsuch%2Dintent"
    headers = _signed(merchant, "GET", "/payment-intents/pi_no-such-intent", b"")
    response = await http.get(sent, headers=headers)
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "invalid_signature"
    assert (await http.get(sent, headers=_signed(merchant, "GET", sent, b""))).status_code == 404


async def test_a_body_that_is_not_json_is_401_before_its_parse_error_without_credentials(
    http: httpx.AsyncClient, merchant: Merchant
) -> None:
    # FastAPI parses JSON before any dependency runs: the credentials are checked first anyway,
    # so an unauthenticated client learns nothing about how its body failed.
    body = b'{"amountInCents": '
    json_headers = {"Content-Type": "application/json"}
    unsigned = await http.post("/payment-intents", content=body, headers=json_headers)
    assert unsigned.status_code == 401, unsigned.text
    assert unsigned.json()["error"]["code"] == "missing_api_key"
    forged = {
        **_signed(merchant, "POST", "/payment-intents", body),
        "X-Signature": "v1=00",
        **json_headers,
    }
    assert (await http.post("/payment-intents", content=body, headers=forged)).json()["error"][
        "code"
    ] == "invalid_signature"
    signed = {**_signed(merchant, "POST", "/payment-intents", body), **json_headers}
    parsed = await http.post("/payment-intents", content=body, headers=signed)
    assert parsed.status_code == 400, parsed.text
    assert parsed.json()["error"]["code"] == "invalid_json"
    # Operator routes alike, with the admin token.
    no_token = await http.post("/merchants", content=body, headers=json_headers)
    assert no_token.status_code == 401, no_token.text
    with_token = await http.post(
        "/merchants",
        content=body,
        headers={**json_headers, "Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert with_token.status_code == 400, with_token.text
    assert with_token.json()["error"]["code"] == "invalid_json"
