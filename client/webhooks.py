"""Verify a webhook delivery (Standard Webhooks, https://www.standardwebhooks.com).

    event = client.webhooks.verify(request_body_bytes, request.headers, "whsec_…")

checks `webhook-signature` (`v1,<base64 HMAC-SHA256>` over `{webhook-id}.{webhook-timestamp}.
{body}`, keyed by the base64-decoded secret after `whsec_`; any one of several space-separated
signatures may match, as during a secret rotation) and that `webhook-timestamp` is within
5 minutes of now, then returns the Event. Pass the body exactly as received: parsed and
re-serialized JSON no longer matches its signature. Deliveries may repeat (`webhook-id` is the
event id) and arrive out of order (compare `event.sequence`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping

from client.errors import WebhookVerificationError
from client.models import Event

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE_SECONDS = 5 * 60


def _secret_key(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError("a webhook secret is `whsec_` followed by base64") from error


def sign(secret: str, *, msg_id: str, timestamp: int, payload: bytes) -> str:
    """One `v1,<base64>` signature (e.g. to test a webhook handler with a delivery of your own)."""
    signed = f"{msg_id}.{timestamp}.".encode() + payload
    digest = hmac.new(_secret_key(secret), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def verify(
    payload: bytes | str,
    headers: Mapping[str, str],
    secret: str,
    *,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> Event:
    """The Event of a genuine delivery; raises `WebhookVerificationError` otherwise."""
    body = payload.encode() if isinstance(payload, str) else bytes(payload)
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get("webhook-id")
    timestamp_text = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not msg_id or not timestamp_text or not signatures:
        raise WebhookVerificationError(
            "Missing webhook-id, webhook-timestamp or webhook-signature header"
        )
    try:
        timestamp = int(timestamp_text)
    except ValueError:
        raise WebhookVerificationError("Invalid webhook-timestamp header") from None
    current = time.time() if now is None else now
    # Both ways: an old timestamp is a replay, one from the future a forgery or a bad clock.
    if timestamp < current - tolerance_seconds:
        raise WebhookVerificationError("Message timestamp too old")
    if timestamp > current + tolerance_seconds:
        raise WebhookVerificationError("Message timestamp too new")
    expected = sign(secret, msg_id=msg_id, timestamp=timestamp, payload=body)
    expected_value = expected.partition(",")[2].encode()
    matched = False
    for candidate in signatures.split(" "):
        version, _, value = candidate.partition(",")
        if version != SIGNATURE_VERSION:
            continue  # another scheme (a future `v1a`): not ours to judge
        # Every candidate is compared, in constant time, whatever matched before.
        matched |= hmac.compare_digest(value.encode(), expected_value)
    if not matched:
        raise WebhookVerificationError("No matching signature found")
    try:
        return Event.model_validate_json(body)
    except ValueError as error:
        raise WebhookVerificationError("The signed payload is not an Event") from error
