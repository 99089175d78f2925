"""The SDK's webhook verifier against the Standard Webhooks reference library."""

from __future__ import annotations

import base64
import json
import os
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook
from standardwebhooks import WebhookVerificationError as ReferenceVerificationError

from client import Event, WebhookVerificationError, webhooks

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
EVENT = {
    "id": "evt_1",
    "object": "event",
    "type": "payment.succeeded",
    "createdAt": "2026-01-01T00:00:00Z",
    "sequence": 7,
    "data": {
        "paymentId": "pi_1",
        "amountInCents": 2499,
        "currency": "usd",
        "status": "succeeded",
        "transactionId": "txn_1",
        "note": "café ☕",
    },
}
BODY = json.dumps(EVENT, ensure_ascii=False, separators=(",", ":")).encode()


def reference_headers(
    body: bytes = BODY, *, secret: str = SECRET, msg_id: str = "evt_1", at: float | None = None
) -> dict[str, str]:
    """Signed by the reference library, not by our code."""
    timestamp = datetime.fromtimestamp(time.time() if at is None else at, tz=UTC)
    signature = Webhook(secret).sign(msg_id, timestamp, body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": signature,
    }


def test_a_delivery_signed_by_the_reference_library_verifies() -> None:
    event = webhooks.verify(BODY, reference_headers(), SECRET)
    assert isinstance(event, Event)
    assert (event.id, event.type, event.sequence) == ("evt_1", "payment.succeeded", 7)
    assert event.data["note"] == "café ☕"
    headers = {k.title(): v for k, v in reference_headers().items()}  # any header case
    assert webhooks.verify(BODY.decode(), headers, SECRET).id == "evt_1"


def test_our_signature_verifies_with_the_reference_library() -> None:
    timestamp = int(time.time())
    headers = {
        "webhook-id": "evt_1",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": webhooks.sign(
            SECRET, msg_id="evt_1", timestamp=timestamp, payload=BODY
        ),
    }
    assert Webhook(SECRET).verify(BODY, headers)["id"] == "evt_1"


def test_any_of_several_signatures_may_match_as_during_a_rotation() -> None:
    old = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    headers = reference_headers()
    other = reference_headers(secret=old)["webhook-signature"]
    headers["webhook-signature"] = f"v1a,whatever {other} {headers['webhook-signature']}"
    assert webhooks.verify(BODY, headers, SECRET).id == "evt_1"
    assert webhooks.verify(BODY, headers, old).id == "evt_1"


@pytest.mark.parametrize(
    "tamper",
    ["body", "id", "timestamp", "secret", "signature", "old", "future", "missing", "not_a_number"],
)
def test_anything_tampered_or_stale_is_refused(tamper: str) -> None:
    headers, body, secret = reference_headers(), BODY, SECRET
    if tamper == "body":
        body = BODY.replace(b"2499", b"2498")
    elif tamper == "id":
        headers["webhook-id"] = "evt_2"
    elif tamper == "timestamp":
        headers["webhook-timestamp"] = str(int(headers["webhook-timestamp"]) + 1)
    elif tamper == "secret":
        secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    elif tamper == "signature":
        headers["webhook-signature"] = "v1," + base64.b64encode(os.urandom(32)).decode()
    elif tamper == "old":
        headers = reference_headers(at=time.time() - 301)
    elif tamper == "future":
        headers = reference_headers(at=time.time() + 301)
    elif tamper == "missing":
        del headers["webhook-signature"]
    elif tamper == "not_a_number":
        headers["webhook-timestamp"] = "soon"
    with pytest.raises(WebhookVerificationError):
        webhooks.verify(body, headers, secret)
    with pytest.raises(ReferenceVerificationError):  # the reference library agrees
        Webhook(secret).verify(body, headers)


def test_the_tolerance_is_five_minutes_each_way() -> None:
    now = time.time()
    for offset in (-299, 299):
        headers = reference_headers(at=now + offset)
        assert webhooks.verify(BODY, headers, SECRET, now=now).id == "evt_1"
