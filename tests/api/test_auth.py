"""api/deps.py's signed-request auth (API.md "Authentication"), through POST /payment-intents:
every way a request fails it answers 401 and changes nothing."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from client import signed_headers
from tests.api.conftest import Merchant, count

pytestmark = pytest.mark.api


def _signed(merchant: Merchant, method: str, path: str, body: bytes,
            **overrides: Any) -> dict[str, str]:
    headers = signed_headers(public_key=merchant.public_key, secret_key=merchant.secret_key,
                             method=method, path_and_query=path, body=body,
                             timestamp=overrides.pop("timestamp", None),
                             nonce=overrides.pop("nonce", None))
    return {**headers, "Content-Type": "application/json", **overrides}


async def test_auth_failures_are_401_and_change_nothing(
        http: httpx.AsyncClient, merchant: Merchant, db: asyncpg.Pool) -> None:
    path = "/payment-intents"
    body = json.dumps({"amountInCents": 100, "currency": "usd"}).encode()
    now = int(time.time())
    cases: dict[str, tuple[dict[str, str], bytes]] = {
        "missing_api_key": ({}, body),
        "missing_signature": ({"Authorization": f"Bearer {merchant.public_key}"}, body),
        "invalid_signature": (_signed(merchant, "POST", path, body,
                                      **{"X-Signature": "v1=" + "0" * 64}), body),
        "timestamp_out_of_window": (_signed(merchant, "POST", path, body,
                                            timestamp=now - 301), body),
        "timestamp_out_of_window ": (_signed(merchant, "POST", path, body,
                                             timestamp=now + 301), body),
        "invalid_api_key": (_signed(merchant, "POST", path, body,
                                    Authorization="Bearer pk_test_" + "0" * 32), body),
        "invalid_nonce": (_signed(merchant, "POST", path, body, nonce="short"), body),
        "invalid_signature ": (_signed(merchant, "POST", "/payment-intents?x=1", body), body),
        "invalid_signature  ": (_signed(merchant, "POST", path, body),
                                body.replace(b"100", b"999")),  # tampered after signing
    }
    for expected_code, (headers, content) in cases.items():
        response = await http.post(path, content=content, headers=headers)
        assert response.status_code == 401, expected_code
        error = response.json()["error"]
        assert error["type"] == "authentication_error"
        assert error["code"] == expected_code.strip(), (expected_code, error)
    assert await count(db, "payment_intent", merchant) == 0


async def test_a_replayed_nonce_is_401(http: httpx.AsyncClient, merchant: Merchant,
                                       db: asyncpg.Pool) -> None:
    body = json.dumps({"amountInCents": 100, "currency": "usd"}).encode()
    headers = _signed(merchant, "POST", "/payment-intents", body, nonce=uuid.uuid4().hex)
    first = await http.post("/payment-intents", content=body, headers=headers)
    assert first.status_code == 201
    replayed = await http.post("/payment-intents", content=body, headers=headers)
    assert replayed.status_code == 401
    assert replayed.json()["error"]["code"] == "replayed_nonce"
    assert await count(db, "payment_intent", merchant) == 1
