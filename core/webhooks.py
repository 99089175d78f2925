"""Webhooks, the pure parts: Standard Webhooks signing, URL safety, the retry schedule, payloads.

No I/O except `resolve_host`, which takes its resolver as an argument so tests can feed it any
answer. Activities (delivery) and the API (endpoint creation) both ask these functions, so the
same URL is judged the same way at creation and at every delivery attempt.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import os
import re
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from core.domain import rfc3339

if TYPE_CHECKING:
    from core.settings import Settings

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # Standard Webhooks asks for 24 to 64 random bytes.
ALL_EVENTS = "*"
PAYMENT_EVENT_TYPES = (
    "payment.created",
    "payment.processing",
    "payment.requires_capture",
    "payment.succeeded",
    "payment.failed",
    "payment.canceled",
    "payment.refunded",
    "payment.partially_refunded",
)
# Appended to the audit trail (not delivered: the endpoint in question no longer listens).
ENDPOINT_DISABLED_EVENT = "webhook_endpoint.disabled"

# Addresses no webhook may reach, whatever the configuration: cloud metadata services.
METADATA_ADDRESSES = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack
        ipaddress.ip_address("169.254.170.2"),  # AWS ECS task metadata
        ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    }
)
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# ---- signing (https://www.standardwebhooks.com) ------------------------------------------------
def new_webhook_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(os.urandom(SECRET_BYTES)).decode()


def sign_webhook(secret: str, *, msg_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<base64>` signature over `{msg_id}.{timestamp}.{body}`."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(secrets: Iterable[str], *, msg_id: str, timestamp: int, body: bytes) -> str:
    """`webhook-signature`: one signature per live secret (a rotated secret signs during grace)."""
    return " ".join(sign_webhook(s, msg_id=msg_id, timestamp=timestamp, body=body) for s in secrets)


def event_payload(
    *, event_id: str, event_type: str, created_at: Any, sequence: int, data: dict[str, Any]
) -> bytes:
    """The delivered body: the Event exactly as `GET /events` shows it."""
    body = {
        "id": event_id,
        "object": "event",
        "type": event_type,
        "createdAt": rfc3339(created_at),
        "sequence": sequence,
        "data": data,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def is_subscribed(enabled_events: Iterable[str], event_type: str) -> bool:
    """`*` means every payment event; other types must be listed by name."""
    events = set(enabled_events)
    return event_type in events or (ALL_EVENTS in events and event_type in PAYMENT_EVENT_TYPES)


def delivery_id_for(*parts: str) -> str:
    """Stable delivery id: a retried planning step names the same delivery, never a second."""
    return "whd_" + hashlib.sha256(":".join(parts).encode()).hexdigest()[:24]


# ---- URL safety ---------------------------------------------------------------------------------
class UnsafeUrl(ValueError):
    """The URL is malformed or reaches an address that webhooks may not reach."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class WebhookTarget:
    scheme: str
    host: str
    port: int


# https on its own port: http is refused anyway outside `allow_private` (the local stack).
DEFAULT_ALLOWED_PORTS = frozenset({443})


@dataclass(frozen=True)
class UrlPolicy:
    """What the operator lets webhook URLs reach; the API and every delivery attempt ask it."""

    allow_private: bool = False
    # None: any port (the local stack, whose receivers listen on free ports).
    allowed_ports: frozenset[int] | None = DEFAULT_ALLOWED_PORTS

    @classmethod
    def from_settings(cls, settings: Settings) -> UrlPolicy:
        return cls(
            allow_private=settings.webhook_allow_private_networks,
            allowed_ports=parse_allowed_ports(settings.webhook_allowed_ports),
        )


def parse_allowed_ports(value: str) -> frozenset[int] | None:
    """`DURAPAY_WEBHOOK_ALLOWED_PORTS`: comma-separated ports, or `*` for any port (None).

    Anything else raises: a typo must stop the process at start-up, not silently open (or
    close) every port.
    """
    if value.strip() == "*":
        return None
    ports: set[int] = set()
    for item in value.split(","):
        item = item.strip()
        if not re.fullmatch(r"[0-9]{1,5}", item) or not 1 <= int(item) <= 65535:
            raise ValueError(
                "DURAPAY_WEBHOOK_ALLOWED_PORTS must be ports (1-65535) separated "
                f"by commas, or *; got {value!r}"
            )
        ports.add(int(item))
    return frozenset(ports)


def parse_webhook_url(url: str, policy: UrlPolicy) -> WebhookTarget:
    """Syntax and port: https (http only where private networks are allowed), a host, no
    userinfo, and a port the operator allows (443 unless configured)."""
    parts = urlsplit(url)
    allowed_schemes = ("https", "http") if policy.allow_private else ("https",)
    if parts.scheme not in allowed_schemes:
        raise UnsafeUrl("url_invalid", "The webhook URL must use https.")
    if not parts.hostname or parts.username or parts.password or parts.fragment:
        raise UnsafeUrl(
            "url_invalid", "The webhook URL needs a host and no credentials or fragment."
        )
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as error:
        raise UnsafeUrl("url_invalid", "The webhook URL has an invalid port.") from error
    if policy.allowed_ports is not None and port not in policy.allowed_ports:
        allowed = ", ".join(str(p) for p in sorted(policy.allowed_ports))
        raise UnsafeUrl(
            "url_not_allowed", f"The webhook URL's port {port} is not allowed (allowed: {allowed})."
        )
    return WebhookTarget(parts.scheme, parts.hostname, port)


# IPv6 forms whose last 32 bits are an IPv4 destination (the ipaddress module reads 6to4 and
# Teredo itself).
NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # RFC 4291, deprecated: ::a.b.c.d


def embedded_ipv4(address: IpAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses a packet to `address` ends up at, when it is an IPv6 wrapper.

    NAT64 gateways, 6to4 relays, Teredo and IPv4-compatible tunnels forward to the IPv4 address
    inside: unjudged, 64:ff9b::7f00:1 or 2002:7f00:1:: would reach 127.0.0.1.
    """
    if isinstance(address, ipaddress.IPv4Address):
        return []
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address.teredo is not None:
        server, client = address.teredo
        return [client, server]  # the client behind its NAT, reached through the server
    if address.sixtofour is not None:
        return [address.sixtofour]
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    if address in NAT64_WELL_KNOWN:
        return [low32]
    if address in IPV4_COMPATIBLE and int(address) > 1:  # neither :: nor ::1
        return [low32]
    return []


def block_reason(address: IpAddress, *, allow_private: bool) -> str | None:
    """Why a webhook may not reach `address`, or None when it may.

    An IPv6 address that wraps IPv4 ones is judged by where it leads: those IPv4 addresses.
    """
    carried = embedded_ipv4(address)
    if carried:
        reasons = (block_reason(inner, allow_private=allow_private) for inner in carried)
        return next((r for r in reasons if r is not None), None)
    if address in METADATA_ADDRESSES:
        return "metadata"
    if address.is_unspecified or address.is_multicast:
        return "reserved"
    if address.is_loopback:
        kind = "loopback"
    elif address.is_link_local:
        kind = "link_local"
    elif isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        kind = "site_local"  # fec0::/10: deprecated, still routed inside some networks
    elif address.is_private or address.is_reserved or not address.is_global:
        # 10/8, 172.16/12, 192.168/16, fc00::/7, 100.64/10, …, and reserved space (::/8,
        # 64:ff9b:1::/48 local-use NAT64, …), which some Python versions call global.
        kind = "private"
    else:
        return None
    return None if allow_private else kind


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def resolve_host(
    target: WebhookTarget, *, allow_private: bool, resolver: Resolver = system_resolver
) -> list[IpAddress]:
    """Every address the host resolves to; refuses if any one of them is not allowed.

    Refusing on *any* bad address (not just the first) means a name that answers both a public
    and a private address cannot be used to reach the private one.
    """
    try:
        answers = [
            ipaddress.ip_address(a.split("%")[0]) for a in await resolver(target.host, target.port)
        ]
    except (OSError, ValueError) as error:
        raise UnsafeUrl(
            "url_unresolvable", f"The webhook host '{target.host}' does not resolve."
        ) from error
    if not answers:
        raise UnsafeUrl("url_unresolvable", f"The webhook host '{target.host}' does not resolve.")
    for address in answers:
        reason = block_reason(address, allow_private=allow_private)
        if reason is not None:
            raise UnsafeUrl(
                "url_not_allowed",
                f"The webhook URL resolves to a {reason.replace('_', '-')} address, "
                "which webhooks may not reach.",
            )
    return answers


async def check_webhook_url(
    url: str,
    policy: UrlPolicy,
    *,
    resolver: Resolver = system_resolver,
) -> tuple[WebhookTarget, list[IpAddress]]:
    """The whole check, at endpoint creation and again at every attempt: syntax, port, and
    every address the host resolves to now (a DNS answer can change in between)."""
    target = parse_webhook_url(url, policy)
    return target, await resolve_host(target, allow_private=policy.allow_private, resolver=resolver)


# ---- retry schedule -----------------------------------------------------------------------------
@dataclass(frozen=True)
class WebhookSchedule:
    """Exponential backoff for one delivery: about 5 s, 25 s, 125 s … capped, for a horizon."""

    first_delay_seconds: float = 5.0
    factor: float = 5.0
    max_delay_seconds: float = 3600.0
    horizon_seconds: float = 3 * 86_400.0

    def backoff(self, failed_attempts: int) -> float:
        """Delay after the n-th failed attempt (n >= 1)."""
        exponent = min(failed_attempts - 1, 64)  # bounded: 5.0 ** big overflows a float
        return min(self.first_delay_seconds * self.factor**exponent, self.max_delay_seconds)

    def next_delay(
        self,
        failed_attempts: int,
        *,
        elapsed_seconds: float,
        retry_after_seconds: float | None = None,
    ) -> float | None:
        """Seconds until the next attempt, or None when the horizon is reached (give up).

        The last attempt lands exactly on the horizon, so "failing for 3 days" is measured
        from the first attempt to the last. A Retry-After the horizon cannot honour ends it.
        """
        remaining = self.horizon_seconds - elapsed_seconds
        if remaining <= 0:
            return None
        delay = self.backoff(failed_attempts)
        if retry_after_seconds is not None:
            if retry_after_seconds > remaining:
                return None
            delay = max(delay, retry_after_seconds)
        return min(delay, remaining)


# A Retry-After past the horizon already ends the delivery at the horizon; the cap only keeps
# the number finite (and its digits within what int() reads).
RETRY_AFTER_MAX_SECONDS = 10**9


def parse_retry_after(value: str | None, *, now_epoch: float) -> float | None:
    """`Retry-After` as seconds from now: ASCII delta-seconds or an HTTP date; anything else is
    None, as if absent.

    The receiver writes it, so nothing in it may raise: `str.isdigit` accepts "²", which
    `int()` refuses, and a 5,000-digit number is too long for `int()`.
    """
    if not value:
        return None
    value = value.strip(" \t")
    if re.fullmatch(r"[0-9]+", value):
        if len(value) > len(str(RETRY_AFTER_MAX_SECONDS)):
            return float(RETRY_AFTER_MAX_SECONDS)
        return float(min(int(value), RETRY_AFTER_MAX_SECONDS))
    if not value.isascii():
        return None
    try:
        when = parsedate_to_datetime(value)
        if when.tzinfo is None:  # "-0000" or the asctime form: HTTP dates are always GMT
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now_epoch
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
        return None
    return min(max(seconds, 0.0), float(RETRY_AFTER_MAX_SECONDS))


def clean_text(text: str | None, *, limit: int) -> str | None:
    """Text a receiver controls (its answer, an error about it) made storable, at most `limit`
    characters: Postgres `text` refuses NUL, and UTF-8 cannot encode a lone surrogate."""
    if text is None:
        return None
    text = text.replace("\x00", "").encode("utf-8", errors="replace").decode("utf-8")
    return text[:limit]


def schedule_from(settings: Settings) -> WebhookSchedule:
    return WebhookSchedule(
        first_delay_seconds=settings.webhook_first_delay_seconds,
        factor=settings.webhook_backoff_factor,
        max_delay_seconds=settings.webhook_max_delay_seconds,
        horizon_seconds=settings.webhook_horizon_seconds,
    )
