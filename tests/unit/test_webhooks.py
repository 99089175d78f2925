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

from core.settings import Settings
from core.webhooks import (
    RETRY_AFTER_MAX_SECONDS,
    UnsafeUrl,
    UrlPolicy,
    WebhookSchedule,
    WebhookTarget,
    block_reason,
    check_webhook_url,
    clean_text,
    delivery_id_for,
    embedded_ipv4,
    event_payload,
    is_subscribed,
    new_webhook_secret,
    parse_allowed_ports,
    parse_retry_after,
    parse_webhook_url,
    resolve_host,
    sign_webhook,
    signature_header,
)

STRICT = UrlPolicy()  # production defaults: public addresses, port 443
LOCAL = UrlPolicy(allow_private=True, allowed_ports=None)  # what `durapay dev` configures
BODY = event_payload(
    event_id="evt_1",
    event_type="payment.succeeded",
    created_at=datetime(2026, 11, 25, 12, 0, tzinfo=UTC),
    sequence=7,
    data={"paymentId": "pi_1", "amountInCents": 2499},
)


def _headers(signature: str, timestamp: int, msg_id: str = "evt_1") -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


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
    assert json.loads(BODY) == {
        "id": "evt_1",
        "object": "event",
        "type": "payment.succeeded",
        "createdAt": "2026-11-25T12:00:00.000Z",
        "sequence": 7,
        "data": {"paymentId": "pi_1", "amountInCents": 2499},
    }


def test_star_subscribes_to_every_payment_event_only() -> None:
    assert is_subscribed(["*"], "payment.refunded")
    assert not is_subscribed(["*"], "webhook_endpoint.disabled")
    assert is_subscribed(["payment.succeeded"], "payment.succeeded")
    assert not is_subscribed(["payment.succeeded"], "payment.failed")


def test_delivery_ids_are_stable_and_distinct() -> None:
    assert delivery_id_for("evt_1", "we_1") == delivery_id_for("evt_1", "we_1")
    assert delivery_id_for("evt_1", "we_1") != delivery_id_for("evt_1", "we_2")
    assert delivery_id_for("evt_1", "we_1").startswith("whd_")


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.9.9.9",
        "10.0.0.1",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "169.254.0.1",
        "169.254.169.254",
        "::1",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "::ffff:127.0.0.1",
        "::ffff:10.1.2.3",
        "::ffff:169.254.169.254",
        "0.0.0.0",
        "::",
        "100.64.0.1",
        "224.0.0.1",
    ],
)
def test_internal_addresses_are_refused(address: str) -> None:
    assert block_reason(ipaddress.ip_address(address), allow_private=False) is not None


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "172.32.0.1", "::ffff:8.8.8.8"]
)
def test_public_addresses_pass(address: str) -> None:
    assert block_reason(ipaddress.ip_address(address), allow_private=False) is None


def test_allowing_private_networks_still_refuses_metadata() -> None:
    for address in ("127.0.0.1", "10.0.0.1", "::1", "fe80::1"):
        assert block_reason(ipaddress.ip_address(address), allow_private=True) is None
    assert block_reason(ipaddress.ip_address("169.254.169.254"), allow_private=True) == "metadata"
    assert (
        block_reason(ipaddress.ip_address("::ffff:169.254.169.254"), allow_private=True)
        == "metadata"
    )


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


# IPv6 wrappers whose packets end at the IPv4 address inside them.
@pytest.mark.parametrize(
    ("address", "inner"),
    [
        ("64:ff9b::7f00:1", "127.0.0.1"),  # NAT64, well-known prefix
        ("64:ff9b::a9fe:a9fe", "169.254.169.254"),
        ("2002:7f00:1::", "127.0.0.1"),  # 6to4
        ("2002:a00:1:1::1", "10.0.0.1"),
        ("::127.0.0.1", "127.0.0.1"),  # IPv4-compatible (deprecated)
        ("::10.1.2.3", "10.1.2.3"),
        ("::ffff:192.168.0.1", "192.168.0.1"),  # IPv4-mapped
    ],
)
def test_ipv4_inside_ipv6_is_unwrapped_and_judged(address: str, inner: str) -> None:
    wrapped = ipaddress.ip_address(address)
    assert ipaddress.ip_address(inner) in embedded_ipv4(wrapped)
    assert (
        block_reason(wrapped, allow_private=False)
        == block_reason(ipaddress.ip_address(inner), allow_private=False)
        is not None
    )


def _teredo(server: str, client: str) -> ipaddress.IPv6Address:
    """2001:0:<server>:<flags>:<port>:<client>, the client obfuscated (XOR) as RFC 4380 says."""
    obfuscated = int(ipaddress.ip_address(client)) ^ 0xFFFF_FFFF
    return ipaddress.IPv6Address(
        (0x2001_0000 << 96) | (int(ipaddress.ip_address(server)) << 64) | obfuscated
    )


def test_teredo_is_judged_by_its_client_and_server() -> None:
    to_loopback = _teredo("65.54.227.120", "127.0.0.1")
    assert embedded_ipv4(to_loopback) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("65.54.227.120"),
    ]
    assert block_reason(to_loopback, allow_private=False) == "loopback"
    via_private_server = _teredo("10.0.0.1", "8.8.8.8")
    assert block_reason(via_private_server, allow_private=False) == "private"
    # Metadata stays refused even where private networks are allowed, whatever wraps it.
    assert (
        block_reason(_teredo("65.54.227.120", "169.254.169.254"), allow_private=True) == "metadata"
    )
    assert (
        block_reason(ipaddress.ip_address("64:ff9b::a9fe:a9fe"), allow_private=True) == "metadata"
    )
    assert block_reason(ipaddress.ip_address("2002:a9fe:a9fe::"), allow_private=True) == "metadata"
    assert block_reason(_teredo("65.54.227.120", "8.8.8.8"), allow_private=False) is None


@pytest.mark.parametrize("address", ["64:ff9b::808:808", "2002:808:808::1", "::8.8.8.8"])
def test_wrapped_public_ipv4_passes(address: str) -> None:
    # An IPv6-only host behind DNS64 reaches every IPv4 site through 64:ff9b::/96.
    assert block_reason(ipaddress.ip_address(address), allow_private=False) is None


@pytest.mark.parametrize("address", ["fec0::1", "fec0:1:2::3", "feff::1"])
def test_site_local_is_refused(address: str) -> None:
    assert block_reason(ipaddress.ip_address(address), allow_private=False) == "site_local"


@pytest.mark.parametrize("address", ["64:ff9b:1::a00:1", "100::1", "4000::1"])
def test_reserved_ipv6_space_is_refused(address: str) -> None:
    # Python 3.11 calls these global; no webhook receiver lives there.
    assert block_reason(ipaddress.ip_address(address), allow_private=False) == "private"


async def test_wrapped_loopback_answer_is_refused_at_resolution() -> None:
    target = WebhookTarget("https", "hooks.example.com", 443)
    for answer in ("64:ff9b::7f00:1", "2002:7f00:1::", "::127.0.0.1", "fec0::1"):
        with pytest.raises(UnsafeUrl) as refused:
            await resolve_host(target, allow_private=False, resolver=_resolver(answer))
        assert refused.value.code == "url_not_allowed"


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com:8443/h",
        "https://example.com:22/",
        "https://93.184.216.34:6379/",
        "https://example.com:80/h",
    ],
)
def test_ports_other_than_443_are_refused_by_default(url: str) -> None:
    with pytest.raises(UnsafeUrl) as refused:
        parse_webhook_url(url, STRICT)
    assert refused.value.code == "url_not_allowed"
    assert "port" in str(refused.value)


def test_default_and_configured_ports() -> None:
    assert parse_webhook_url("https://example.com/h", STRICT).port == 443
    assert parse_webhook_url("https://example.com:443/h", STRICT).port == 443
    with pytest.raises(UnsafeUrl):  # port 80 is not among the allowed ports by default
        parse_webhook_url("http://127.0.0.1/h", UrlPolicy(allow_private=True))
    http_too = UrlPolicy(allow_private=True, allowed_ports=frozenset({80, 443}))
    assert parse_webhook_url("http://127.0.0.1/h", http_too).port == 80
    with pytest.raises(UnsafeUrl):
        parse_webhook_url("http://127.0.0.1:8080/h", http_too)
    custom = UrlPolicy(allowed_ports=frozenset({8443}))
    assert parse_webhook_url("https://example.com:8443/h", custom).port == 8443
    with pytest.raises(UnsafeUrl):
        parse_webhook_url("https://example.com/h", custom)  # 443 is not in the list
    assert parse_webhook_url("https://example.com:65535/h", LOCAL).port == 65535


@pytest.mark.parametrize(
    ("value", "ports"),
    [
        ("80,443", frozenset({80, 443})),
        (" 443 ", frozenset({443})),
        ("443, 8443,8443", frozenset({443, 8443})),
        ("*", None),
        (" * ", None),
    ],
)
def test_allowed_ports_setting_is_parsed(value: str, ports: frozenset[int] | None) -> None:
    assert parse_allowed_ports(value) == ports


@pytest.mark.parametrize(
    "value", ["", "80,", "0", "65536", "http", "80;443", "8O", "*,443", "٤٤٣", "-1"]
)
def test_a_bad_allowed_ports_setting_stops_the_process(value: str) -> None:
    with pytest.raises(ValueError, match="DURAPAY_WEBHOOK_ALLOWED_PORTS"):
        parse_allowed_ports(value)


def test_policy_from_settings() -> None:
    assert UrlPolicy.from_settings(Settings()) == STRICT
    assert (
        UrlPolicy.from_settings(
            Settings(webhook_allow_private_networks=True, webhook_allowed_ports="*")
        )
        == LOCAL
    )


async def test_check_webhook_url_checks_port_then_every_address() -> None:
    with pytest.raises(UnsafeUrl):
        await check_webhook_url(
            "https://hooks.example.com:8080/h", STRICT, resolver=_resolver("93.184.216.34")
        )
    with pytest.raises(UnsafeUrl):
        await check_webhook_url(
            "https://hooks.example.com/h", STRICT, resolver=_resolver("64:ff9b::a00:1")
        )
    target, addresses = await check_webhook_url(
        "https://hooks.example.com/h", STRICT, resolver=_resolver("93.184.216.34")
    )
    assert (target.port, addresses) == (443, [ipaddress.ip_address("93.184.216.34")])


def _resolver(*answers: str):
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
        await resolve_host(
            target, allow_private=False, resolver=_resolver("93.184.216.34", "169.254.169.254")
        )
    with pytest.raises(UnsafeUrl):
        await resolve_host(target, allow_private=False, resolver=_resolver("::ffff:127.0.0.1"))
    good = await resolve_host(target, allow_private=False, resolver=_resolver("93.184.216.34"))
    assert good == [ipaddress.ip_address("93.184.216.34")]


async def test_localhost_is_refused_by_the_system_resolver() -> None:
    target = parse_webhook_url("https://localhost/hook", STRICT)
    with pytest.raises(UnsafeUrl):
        await resolve_host(target, allow_private=False)


async def test_unresolvable_host_is_refused() -> None:
    async def fail(host: str, port: int) -> list[str]:
        raise OSError("no such host")

    with pytest.raises(UnsafeUrl) as refused:
        await resolve_host(
            WebhookTarget("https", "nope.invalid", 443), allow_private=False, resolver=fail
        )
    assert refused.value.code == "url_unresolvable"


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/",
        "http://example.com/hook",
        "https://user:pw@example.com/",
        "https:///nohost",
        "https://example.com:99999/",
        "not a url",
    ],
)
def test_malformed_or_insecure_urls_are_refused(url: str) -> None:
    with pytest.raises(UnsafeUrl):
        parse_webhook_url(url, STRICT)


def test_http_is_allowed_only_with_private_networks() -> None:
    assert parse_webhook_url("http://127.0.0.1:8080/h", LOCAL) == WebhookTarget(
        "http", "127.0.0.1", 8080
    )
    assert parse_webhook_url("https://[::1]/h", LOCAL).host == "::1"


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
    assert (
        schedule.next_delay(
            1, elapsed_seconds=schedule.horizon_seconds - 10, retry_after_seconds=60
        )
        is None
    )


def test_retry_after_parses_seconds_and_dates() -> None:
    assert parse_retry_after("30", now_epoch=0) == 30
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:00 GMT", now_epoch=0) == 60
    assert parse_retry_after("soon", now_epoch=0) is None
    assert parse_retry_after(None, now_epoch=0) is None
    assert parse_retry_after(" 30\t", now_epoch=0) == 30
    assert parse_retry_after("0", now_epoch=0) == 0
    # Past dates mean "now"; a date without a zone (asctime, -0000) is GMT, as HTTP says.
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:00 GMT", now_epoch=120) == 0
    assert parse_retry_after("Thu Jan  1 00:02:00 1970", now_epoch=0) == 120
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:00 -0000", now_epoch=0) == 60


@pytest.mark.parametrize(
    "value",
    [
        "²",
        "³0",
        "٣",
        "３０",
        "30\x00",
        "\x00",
        "1.5",
        "-5",
        "+5",
        "1e3",
        "30 s",
        "0x1e",
        "Thu, 01 Jan 1970 00:01:00 GMT²",
        "Thu, 32 Jan 1970 00:01:00 GMT",
        "Jan 1970",
        "Thu, 01 Jan 1970 25:61:00 GMT",
        "   ",
    ],
)
def test_retry_after_anything_but_ascii_digits_or_an_http_date_is_ignored(value: str) -> None:
    """A receiver's header must never make recording the attempt fail."""
    assert parse_retry_after(value, now_epoch=0) is None


def test_retry_after_huge_values_are_capped_not_crashing() -> None:
    # int() refuses more than 4300 digits; a far date is past any horizon anyway.
    assert parse_retry_after("9" * 5000, now_epoch=0) == RETRY_AFTER_MAX_SECONDS
    assert parse_retry_after("10000000000", now_epoch=0) == RETRY_AFTER_MAX_SECONDS
    assert (
        parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now_epoch=0) == RETRY_AFTER_MAX_SECONDS
    )
    assert (
        WebhookSchedule().next_delay(
            1, elapsed_seconds=0, retry_after_seconds=RETRY_AFTER_MAX_SECONDS
        )
        is None
    )


def test_clean_text_drops_what_postgres_refuses_and_caps_the_length() -> None:
    assert clean_text("ok\x00\x00body", limit=100) == "okbody"
    assert clean_text("a\udcff b", limit=100) == "a? b"  # a lone surrogate cannot be UTF-8
    assert clean_text("é" * 2000, limit=1024) == "é" * 1024
    assert clean_text("tab\tnew\nline ✓", limit=100) == "tab\tnew\nline ✓"
    assert clean_text(None, limit=10) is None
    cleaned = clean_text("".join(chr(c) for c in range(0, 0x3000)), limit=10**6)
    assert cleaned is not None and "\x00" not in cleaned
    cleaned.encode("utf-8")  # storable as Postgres text
