from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

import httpx
import pytest
from cryptography.exceptions import InvalidTag

from client import DurapayClient, signed_headers
from core.crypto import (
    Cipher,
    canonical_path_and_query,
    canonical_request,
    new_key_pair,
    sign_request,
)
from core.keyring import KeyRing, Purpose


def test_canonical_string_matches_the_contract() -> None:
    body = b'{"amountInCents":2499}'
    canonical = canonical_request("post", "/payment-intents?limit=10", "1700000000", "n" * 16, body)
    assert canonical == "\n".join(
        [
            "POST",
            "/payment-intents?limit=10",
            "1700000000",
            "n" * 16,
            hashlib.sha256(body).hexdigest(),
        ]
    )


def test_signature_is_hex_hmac_sha256_of_the_canonical_string() -> None:
    secret = "sk_test_abc"
    signature = sign_request(
        secret,
        method="GET",
        path_and_query="/payment-intents",
        timestamp="1700000000",
        nonce="abcdefghijklmnop",
        body=b"",
    )
    canonical = (
        "GET\n/payment-intents\n1700000000\nabcdefghijklmnop\n" + hashlib.sha256(b"").hexdigest()
    )
    expected = hmac.new(secret.encode(), canonical.encode(), hashlib.sha256).hexdigest()
    assert signature == f"v1={expected}"


def test_any_change_changes_the_signature() -> None:
    base: dict[str, Any] = {
        "method": "POST",
        "path_and_query": "/p",
        "timestamp": "1",
        "nonce": "n" * 16,
        "body": b"{}",
    }
    reference = sign_request("sk", **base)
    for field, value in [
        ("method", "GET"),
        ("path_and_query", "/q"),
        ("timestamp", "2"),
        ("nonce", "m" * 16),
        ("body", b"{ }"),
    ]:
        assert sign_request("sk", **{**base, field: value}) != reference
    assert sign_request("sk2", **base) != reference


def test_client_headers_carry_key_timestamp_nonce_and_signature() -> None:
    headers = signed_headers(
        public_key="pk_test_x",
        secret_key="sk_test_y",
        method="GET",
        path_and_query="/events",
        body=b"",
        timestamp=5,
        nonce="a" * 20,
    )
    assert headers["Authorization"] == "Bearer pk_test_x"
    assert headers["X-Timestamp"] == "5"
    assert headers["X-Nonce"] == "a" * 20
    assert headers["X-Signature"].startswith("v1=") and len(headers["X-Signature"]) == 67


def test_cipher_round_trips_and_is_bound_to_its_context() -> None:
    cipher = Cipher(KeyRing(os.urandom(32)), Purpose.VAULT)
    blob = cipher.encrypt(b"4242424242424242", context="card_1")
    assert b"4242424242424242" not in blob
    assert cipher.decrypt(blob, context="card_1") == b"4242424242424242"
    assert cipher.encrypt(b"x", context="a") != cipher.encrypt(b"x", context="a")  # fresh nonce
    with pytest.raises(InvalidTag):
        cipher.decrypt(blob, context="card_2")


def test_key_pairs_have_the_contract_prefixes() -> None:
    public, secret = new_key_pair()
    assert public.startswith("pk_test_") and secret.startswith("sk_test_")
    assert new_key_pair() != (public, secret)


@pytest.mark.parametrize(
    ("raw_path", "query", "expected"),
    [
        (b"/payment-intents", b"", "/payment-intents"),
        (b"/payment-intents", b"limit=10", "/payment-intents?limit=10"),
        (b"/payment-intents/pi_a%2Db", b"x=%7E&y=a%20b", "/payment-intents/pi_a%2Db?x=%7E&y=a%20b"),
        (b"/p%2fq", b"", "/p%2fq"),  # escapes kept exactly, case included
    ],
)
def test_path_and_query_are_signed_exactly_as_sent(
    raw_path: bytes, query: bytes, expected: str
) -> None:
    assert canonical_path_and_query(raw_path, query) == expected


async def test_the_client_signs_the_target_that_httpx_sends() -> None:
    """httpx escapes a space (`%20`) and keeps given escapes (`%2D`): the signature covers the
    request line as it goes out, which is what the API verifies."""
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={})

    async with DurapayClient(
        "http://durapay.test", "pk_test_x", "sk_test_y", transport=httpx.MockTransport(answer)
    ) as durapay:
        await durapay.post("/payment-intents/pi_a%2Db?type=payment.succeeded&q=a b", {"a": 1})
    [request] = sent
    assert request.url.raw_path == b"/payment-intents/pi_a%2Db?type=payment.succeeded&q=a%20b"
    expected = sign_request(
        "sk_test_y",
        method="POST",
        path_and_query="/payment-intents/pi_a%2Db?type=payment.succeeded&q=a%20b",
        timestamp=request.headers["X-Timestamp"],
        nonce=request.headers["X-Nonce"],
        body=request.content,
    )
    assert request.headers["X-Signature"] == expected
