"""Webhook signing (checked by the reference library), URL safety, and the retry schedule."""

from __future__ import annotations

import base64
import ipaddress
import json
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from core.webhooks import (
    UnsafeUrl,
    WebhookSchedule,
    WebhookTarget,
    block_reason,
    delivery_id_for,
    event_payload,
    is_subscribed,
    new_webhook_secret,
    parse_retry_after,
    parse_webhook_url,
    resolve_host,
    sign_webhook,
    signature_header,
)

BODY = event_payload(event_id="evt_1", event_type="payment.succeeded",
                     created_at=datetime(2026, 11, 25, 12, 0, tzinfo=UTC), sequence=7,
                     data={"paymentId": "pi_1", "amountInCents": 2499})


def _headers(signature: str, timestamp: int, msg_id: str = "evt_1") -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": signature}


def test_signature_is_verified_by_the_reference_library() -> None:
    secret = new_webhook_secret()
    now = int(time.time())
    header = signature_header([secret], msg_id="evt_1", timestamp=now, body=BODY)
    assert header.startswith("v1,")
    assert Webhook(secret).verify(BODY, _headers(header, now))["type"] == "payment.succeeded"


def test_signature_with_another_secret_or_body_is_refused() -> None:
    secret, other = new_webhook_secret(), new_webhook_secret()
    now = int(time.time())
    header = signature_header([secret], msg_id="evt_1", timestamp=now, body=BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(BODY, _headers(header, now))
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY + b" ", _headers(header, now))
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, _headers(header, now, msg_id="evt_2"))


def test_rotated_secrets_both_verify_during_grace() -> None:
    new, old = new_webhook_secret(), new_webhook_secret()
    now = int(time.time())
    header = signature_header([new, old], msg_id="evt_1", timestamp=now, body=BODY)
    assert len(header.split(" ")) == 2
    for secret in (new, old):
        Webhook(secret).verify(BODY, _headers(header, now))


def test_secret_is_whsec_base64_of_32_bytes() -> None:
    secret = new_webhook_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert sign_webhook(secret, msg_id="m", timestamp=1, body=b"{}").startswith("v1,")


def test_payload_is_the_event_object() -> None:
    assert json.loads(BODY) == {"id": "evt_1", "object": "event", "type": "payment.succeeded",
                                "createdAt": "2026-11-25T12:00:00.000Z", "sequence": 7,
                                "data": {"paymentId": "pi_1", "amountInCents": 2499}}


def test_star_subscribes_to_every_payment_event_only() -> None:
    assert is_subscribed(["*"], "payment.refunded")
    assert not is_subscribed(["*"], "webhook_endpoint.disabled")
    assert is_subscribed(["payment.succeeded"], "payment.succeeded")
    assert not is_subscribed(["payment.succeeded"], "payment.failed")


def test_delivery_ids_are_stable_and_distinct() -> None:
    assert delivery_id_for("evt_1", "we_1") == delivery_id_for("evt_1", "we_1")
    assert delivery_id_for("evt_1", "we_1") != delivery_id_for("evt_1", "we_2")
    assert delivery_id_for("evt_1", "we_1").startswith("whd_")


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.9.9.9", "10.0.0.1", "172.16.0.1", "172.31.255.255", "192.168.1.1",
    "169.254.0.1", "169.254.169.254", "::1", "fc00::1", "fd12:3456::1", "fe80::1",
    "::ffff:127.0.0.1", "::ffff:10.1.2.3", "::ffff:169.254.169.254", "0.0.0.0", "::",
    "100.64.0.1", "224.0.0.1",
])
def test_internal_addresses_are_refused(address: str) -> None:
    assert block_reason(ipaddress.ip_address(address), allow_private=False) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700::1111",
                                     "172.32.0.1", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert block_reason(ipaddress.ip_address(address), allow_private=False) is None


def test_allowing_private_networks_still_refuses_metadata() -> None:
    for address in ("127.0.0.1", "10.0.0.1", "::1", "fe80::1"):
        assert block_reason(ipaddress.ip_address(address), allow_private=True) is None
    assert block_reason(ipaddress.ip_address("169.254.169.254"), allow_private=True) == "metadata"
    assert block_reason(ipaddress.ip_address("::ffff:169.254.169.254"),
                        allow_private=True) == "metadata"


def test_reasons_name_the_kind_of_address() -> None:
    def reason(a: str) -> str | None:
        return block_reason(ipaddress.ip_address(a), allow_private=False)

    assert reason("127.0.0.1") == "loopback"
    assert reason("::1") == "loopback"
    assert reason("192.168.0.1") == "private"
    assert reason("fc00::1") == "private"
    assert reason("169.254.1.1") == "link_local"
    assert reason("fe80::1") == "link_local"
    assert reason("169.254.169.254") == "metadata"


def _resolver(*answers: str):  # type: ignore[no-untyped-def]
    async def resolve(host: str, port: int) -> list[str]:
        return list(answers)
    return resolve


async def test_hostname_resolving_to_private_is_refused() -> None:
    target = WebhookTarget("https", "hooks.example.com", 443)
    with pytest.raises(UnsafeUrl) as refused:
        await resolve_host(target, allow_private=False, resolver=_resolver("10.0.0.7"))
    assert refused.value.code == "url_not_allowed"
    # One bad answer among good ones is enough: the request could go to either.
    with pytest.raises(UnsafeUrl):
        await resolve_host(target, allow_private=False,
                           resolver=_resolver("93.184.216.34", "169.254.169.254"))
    with pytest.raises(UnsafeUrl):
        await resolve_host(target, allow_private=False, resolver=_resolver("::ffff:127.0.0.1"))
    good = await resolve_host(target, allow_private=False, resolver=_resolver("93.184.216.34"))
    assert good == [ipaddress.ip_address("93.184.216.34")]


async def test_localhost_is_refused_by_the_system_resolver() -> None:
    target = parse_webhook_url("https://localhost:9999/hook", allow_private=False)
    with pytest.raises(UnsafeUrl):
        await resolve_host(target, allow_private=False)


async def test_unresolvable_host_is_refused() -> None:
    async def fail(host: str, port: int) -> list[str]:
        raise OSError("no such host")

    with pytest.raises(UnsafeUrl) as refused:
        await resolve_host(WebhookTarget("https", "nope.invalid", 443), allow_private=False,
                           resolver=fail)
    assert refused.value.code == "url_unresolvable"


@pytest.mark.parametrize("url", ["ftp://example.com/", "http://example.com/hook",
                                 "https://user:pw@example.com/", "https:///nohost",
                                 "https://example.com:99999/", "not a url"])
def test_malformed_or_insecure_urls_are_refused(url: str) -> None:
    with pytest.raises(UnsafeUrl):
        parse_webhook_url(url, allow_private=False)


def test_http_is_allowed_only_with_private_networks() -> None:
    assert parse_webhook_url("http://127.0.0.1:8080/h", allow_private=True) == \
        WebhookTarget("http", "127.0.0.1", 8080)
    assert parse_webhook_url("https://[::1]/h", allow_private=True).host == "::1"


def test_backoff_is_5_25_125_capped_at_an_hour() -> None:
    schedule = WebhookSchedule()
    assert [schedule.backoff(n) for n in range(1, 7)] == [5, 25, 125, 625, 3125, 3600]
    assert schedule.backoff(500) == 3600


def test_last_attempt_lands_on_the_horizon_then_gives_up() -> None:
    schedule = WebhookSchedule()
    elapsed, attempts = 0.0, 1
    while (delay := schedule.next_delay(attempts, elapsed_seconds=elapsed)) is not None:
        elapsed += delay
        attempts += 1
    assert elapsed == schedule.horizon_seconds
    # The first attempt, 5 after 5+25+125+625+3125 s, then 71 more hourly (the last shorter).
    assert attempts == 1 + 5 + 71


def test_retry_after_is_honoured_but_not_past_the_horizon() -> None:
    schedule = WebhookSchedule()
    assert schedule.next_delay(1, elapsed_seconds=0, retry_after_seconds=120) == 120
    assert schedule.next_delay(3, elapsed_seconds=0, retry_after_seconds=1) == 125
    assert schedule.next_delay(1, elapsed_seconds=schedule.horizon_seconds - 10,
                               retry_after_seconds=60) is None


def test_retry_after_parses_seconds_and_dates() -> None:
    assert parse_retry_after("30", now_epoch=0) == 30
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:00 GMT", now_epoch=0) == 60
    assert parse_retry_after("soon", now_epoch=0) is None
    assert parse_retry_after(None, now_epoch=0) is None
