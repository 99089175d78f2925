"""Webhook side effects: send one signed attempt of a delivery, record what happened.

Sending and recording are two activities: a record that fails (the database is down) is retried
on its own and never sends the webhook again; only the delivery's durable backoff sends again.
What the receiver answered is cleaned before anything stores it (`core.webhooks.clean_text`,
`parse_retry_after`), so no answer can make a record fail.

Every method is idempotent. Deliveries are planned with their event (`core/db/deliveries.py`),
attempts recorded under (delivery, attempt number), and a delivery that is no longer pending
is never sent again. A send retried after a crash repeats the same `webhook-id`, so the receiver can
tell it already has the message.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from sqlalchemy import func, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity

from core.crypto import Cipher
from core.db.queries import append_chained_event, event_id_for
from core.db.tables import Event, WebhookDelivery, WebhookDeliveryAttempt, WebhookEndpoint
from core.domain import utcnow
from core.keyring import Purpose
from core.metrics import WEBHOOK_ATTEMPTS
from core.settings import Settings
from core.webhooks import (
    ENDPOINT_DISABLED_EVENT,
    UnsafeUrl,
    UrlPolicy,
    check_webhook_url,
    clean_text,
    event_payload,
    parse_retry_after,
    signature_header,
)

# Only the start of an answer is kept for the merchant to read; the rest is never read at all.
RESPONSE_KEEP_BYTES = 1024
# Our own error texts are short; the cap guards the few that quote the URL's host.
ERROR_KEEP_CHARS = 500
USER_AGENT = "Durapay-Webhooks/1.0"
log = logging.getLogger("durapay.webhooks")


@dataclass
class AttemptInput:
    delivery_id: str
    attempt_number: int


class AttemptResult(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    # The endpoint answered 410, was disabled or deleted, or the delivery is already closed.
    STOP = "stop"


@dataclass
class AttemptOutcome:
    result: AttemptResult
    retry_after_seconds: float | None = None


@dataclass
class SentAttempt:
    """One attempt as sent (what the receiver answered), or why nothing was sent; the input of
    `record_webhook_attempt`. Text fields are already cleaned and capped."""

    delivery_id: str
    attempt_number: int
    # Set when nothing was sent: the delivery is closed already, or its endpoint is off.
    closed: AttemptResult | None = None
    endpoint_id: str | None = None
    attempted_at: datetime | None = None
    duration_ms: int = 0
    status_code: int | None = None
    error: str | None = None
    body: str | None = None
    retry_after_seconds: float | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass
class FailInput:
    delivery_id: str


@dataclass
class _Response:
    status_code: int | None = None
    error: str | None = None
    body: str | None = None
    retry_after_seconds: float | None = None


def new_http_client() -> httpx.AsyncClient:
    """The client for webhooks only: no redirects, no proxies from the environment, no pooling.

    Pooling is off because requests go to a pinned IP with the host in SNI/Host: a pooled
    connection to one IP could otherwise be reused for another host's TLS name.
    """
    return httpx.AsyncClient(
        follow_redirects=False, trust_env=False, limits=httpx.Limits(max_keepalive_connections=0)
    )


class WebhookActivities:
    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        sessions: async_sessionmaker[AsyncSession],
        webhook_secrets: Cipher,
        settings: Settings,
    ) -> None:
        if webhook_secrets.purpose is not Purpose.WEBHOOK_SECRETS:  # miswired: fail at start
            raise ValueError(
                f"webhook signing needs the webhook secrets' cipher, not "
                f"{webhook_secrets.purpose}'s"
            )
        self._http = http
        self._sessions = sessions
        self._secrets = webhook_secrets
        self._settings = settings
        # Parsed once: a bad DURAPAY_WEBHOOK_ALLOWED_PORTS stops the worker at start-up.
        self._url_policy = UrlPolicy.from_settings(settings)

    @activity.defn
    async def send_webhook(self, attempt: AttemptInput) -> SentAttempt:
        """Send one signed attempt of the delivery; returns what the receiver answered.

        Writes nothing about the attempt: `record_webhook_attempt` does, so a record that fails
        can be retried without sending again. Every answer (non-2xx, timeout, refused URL) is a
        result, not an exception.
        """
        async with self._sessions() as session, session.begin():
            loaded = await _load(session, attempt.delivery_id)
            if loaded is None:
                return SentAttempt(
                    attempt.delivery_id, attempt.attempt_number, closed=AttemptResult.STOP
                )
            delivery, endpoint, event = loaded
            if delivery.status != "pending":
                delivered = delivery.status == "succeeded"
                return SentAttempt(
                    attempt.delivery_id,
                    attempt.attempt_number,
                    closed=(AttemptResult.DELIVERED if delivered else AttemptResult.STOP),
                )
            if endpoint.deleted_at is not None or endpoint.status != "enabled":
                await _close_delivery(session, delivery.id, "canceled")
                return SentAttempt(
                    attempt.delivery_id, attempt.attempt_number, closed=AttemptResult.STOP
                )
            secrets = self._live_secrets(endpoint)
            assert event.seq is not None  # a stored event has its sequence
            body = event_payload(
                event_id=event.id,
                event_type=event.type,
                created_at=event.created_at,
                sequence=event.seq,
                data=event.data,
            )
            url, endpoint_id = endpoint.url, endpoint.id
        # No database connection is held while the merchant's server takes its time.
        started_at, started = utcnow(), time.monotonic()
        answer = await self._send(url, msg_id=event.id, secrets=secrets, body=body)
        return SentAttempt(
            attempt.delivery_id,
            attempt.attempt_number,
            endpoint_id=endpoint_id,
            attempted_at=started_at,
            duration_ms=int((time.monotonic() - started) * 1000),
            status_code=answer.status_code,
            error=clean_text(answer.error, limit=ERROR_KEEP_CHARS),
            body=clean_text(answer.body, limit=RESPONSE_KEEP_BYTES),
            retry_after_seconds=answer.retry_after_seconds,
        )

    @activity.defn
    async def record_webhook_attempt(self, sent: SentAttempt) -> AttemptOutcome:
        """Record a sent attempt (time, status, duration, start of the answer) and what it means
        for the delivery and its endpoint. Idempotent: the attempt is an upsert, every other
        write is conditional."""
        assert sent.endpoint_id is not None and sent.attempted_at is not None, "not sent"
        async with self._sessions() as session, session.begin():
            first_record = await _record_attempt(session, sent)
            outcome = await _settle_delivery(session, sent)
        if first_record:  # committed now; a retry after the commit counts nothing
            WEBHOOK_ATTEMPTS.labels(result=attempt_result(sent)).inc()
        return outcome

    @activity.defn
    async def fail_webhook_delivery(self, failed: FailInput) -> None:
        """Past the horizon: the delivery failed; an endpoint failing everything since is disabled.

        "Everything" means no success anywhere on the endpoint since this delivery's first
        attempt, which is a whole horizon ago.
        """
        async with self._sessions() as session, session.begin():
            delivery = await session.get(WebhookDelivery, failed.delivery_id, with_for_update=True)
            if delivery is None or delivery.status != "pending":
                return
            await _close_delivery(session, delivery.id, "failed")
            endpoint = await session.get(WebhookEndpoint, delivery.endpoint_id)
            first_attempt = (
                await session.exec(
                    select(func.min(WebhookDeliveryAttempt.attempted_at)).where(
                        WebhookDeliveryAttempt.delivery_id == delivery.id
                    )
                )
            ).one()
            if (
                endpoint is not None
                and endpoint.failing_since is not None
                and first_attempt is not None
                and endpoint.failing_since <= first_attempt
            ):
                await disable_endpoint(session, endpoint.id, reason="failing", cause=delivery.id)

    # ---- helpers -------------------------------------------------------------------------------
    def _live_secrets(self, endpoint: WebhookEndpoint) -> list[str]:
        secrets = [self._secrets.decrypt(endpoint.secret_ciphertext, context=endpoint.id).decode()]
        if (
            endpoint.previous_secret_ciphertext is not None
            and endpoint.previous_secret_expires_at is not None
            and endpoint.previous_secret_expires_at > utcnow()
        ):
            secrets.append(
                self._secrets.decrypt(
                    endpoint.previous_secret_ciphertext, context=endpoint.id
                ).decode()
            )
        return secrets

    async def _send(self, url: str, *, msg_id: str, secrets: list[str], body: bytes) -> _Response:
        try:
            # Checked again at every attempt (an operator may have narrowed the ports since),
            # and the request goes to the very address that passed: a DNS answer that changes
            # in between (rebinding) is never followed.
            target, addresses = await check_webhook_url(url, self._url_policy)
            address = addresses[0]
        except UnsafeUrl as error:
            return _Response(error=f"{error.code}: {error}")
        parts = urlsplit(url)
        pinned = f"[{address}]" if isinstance(address, ipaddress.IPv6Address) else str(address)
        request_url = urlunsplit(
            (parts.scheme, f"{pinned}:{target.port}", parts.path or "/", parts.query, "")
        )
        timestamp = int(time.time())
        headers = {
            "host": parts.netloc,
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "accept-encoding": "identity",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature_header(
                secrets, msg_id=msg_id, timestamp=timestamp, body=body
            ),
        }
        extensions: dict[str, Any] = (
            {"sni_hostname": target.host} if target.scheme == "https" else {}
        )
        budget = self._settings.webhook_timeout_seconds
        try:
            async with asyncio.timeout(budget):
                async with self._http.stream(
                    "POST",
                    request_url,
                    content=body,
                    headers=headers,
                    extensions=extensions,
                    timeout=budget,
                ) as response:
                    kept = await _read_start(response)
        except (TimeoutError, httpx.TimeoutException):
            return _Response(error=f"timeout: no answer within {budget:g} s")
        except (httpx.HTTPError, httpx.InvalidURL, OSError) as error:
            # Never the message: it may quote the merchant's URL or TLS details at length.
            return _Response(error=f"connection_error: {type(error).__name__}")
        answer = _Response(status_code=response.status_code, body=kept)
        if response.is_redirect:
            answer.error = "redirect_not_followed"
        if response.status_code in (429, 503):
            answer.retry_after_seconds = parse_retry_after(
                response.headers.get("retry-after"), now_epoch=time.time()
            )
        return answer


async def _read_start(response: httpx.Response) -> str:
    """Up to RESPONSE_KEEP_BYTES of the raw body; closing the stream drops the rest unread."""
    kept = b""
    async for chunk in response.aiter_raw():
        kept += chunk
        if len(kept) >= RESPONSE_KEEP_BYTES:
            break
    return kept[:RESPONSE_KEEP_BYTES].decode(errors="replace")


async def _load(
    session: AsyncSession, delivery_id: str
) -> tuple[WebhookDelivery, WebhookEndpoint, Event] | None:
    row = (
        await session.exec(
            select(WebhookDelivery, WebhookEndpoint, Event)
            .join(WebhookEndpoint, col(WebhookEndpoint.id) == col(WebhookDelivery.endpoint_id))
            .join(Event, col(Event.id) == col(WebhookDelivery.event_id))
            .where(WebhookDelivery.id == delivery_id)
        )
    ).first()
    return None if row is None else (row[0], row[1], row[2])


def attempt_result(sent: SentAttempt) -> str:
    """The result label of a sent attempt (core/metrics.py WEBHOOK_RESULTS), from the answer
    and the error texts `_send` writes."""
    if sent.ok:
        return "delivered"
    if sent.status_code == 410:
        return "gone"
    if sent.status_code is not None:
        return "http_error"
    error = sent.error or ""
    if error.startswith("timeout:"):
        return "timeout"
    if error.startswith("connection_error:"):
        return "network_error"
    return "url_refused"  # the URL failed its check at this attempt: nothing was sent


async def _settle_delivery(session: AsyncSession, sent: SentAttempt) -> AttemptOutcome:
    """What a recorded attempt means for its delivery and endpoint."""
    assert sent.endpoint_id is not None
    if sent.ok:
        await _close_delivery(session, sent.delivery_id, "succeeded")
        await session.exec(
            update(WebhookEndpoint)
            .where(col(WebhookEndpoint.id) == sent.endpoint_id)
            .values(failing_since=None)
        )
        return AttemptOutcome(AttemptResult.DELIVERED)
    await session.exec(
        update(WebhookEndpoint)
        .where(col(WebhookEndpoint.id) == sent.endpoint_id)
        .values(failing_since=func.coalesce(WebhookEndpoint.failing_since, sent.attempted_at))
    )
    if sent.status_code == 410:
        # The merchant told us the URL is gone for good: stop sending there at once.
        await _close_delivery(session, sent.delivery_id, "failed")
        await disable_endpoint(session, sent.endpoint_id, reason="gone", cause=sent.delivery_id)
        return AttemptOutcome(AttemptResult.STOP)
    return AttemptOutcome(AttemptResult.RETRY, sent.retry_after_seconds)


async def _record_attempt(session: AsyncSession, sent: SentAttempt) -> bool:
    """Upsert the attempt; True if it was not recorded before (not a retry of this record)."""
    recorded_before = (
        await session.exec(
            select(WebhookDeliveryAttempt.attempt_number).where(
                WebhookDeliveryAttempt.delivery_id == sent.delivery_id,
                WebhookDeliveryAttempt.attempt_number == sent.attempt_number,
            )
        )
    ).first() is not None
    # Cleaned again here, where it is stored: whatever built `sent`, Postgres takes it.
    values = {
        "attempted_at": sent.attempted_at,
        "status_code": sent.status_code,
        "error": clean_text(sent.error, limit=ERROR_KEEP_CHARS),
        "duration_ms": sent.duration_ms,
        "response_body": clean_text(sent.body, limit=RESPONSE_KEEP_BYTES),
    }
    await session.exec(
        insert(WebhookDeliveryAttempt)
        .values(delivery_id=sent.delivery_id, attempt_number=sent.attempt_number, **values)
        .on_conflict_do_update(index_elements=["delivery_id", "attempt_number"], set_=values)
    )
    await session.exec(
        update(WebhookDelivery)
        .where(col(WebhookDelivery.id) == sent.delivery_id)
        .values(
            attempt_count=func.greatest(WebhookDelivery.attempt_count, sent.attempt_number),
            updated_at=func.now(),
        )
    )
    return not recorded_before


async def _close_delivery(session: AsyncSession, delivery_id: str, status: str) -> None:
    await session.exec(
        update(WebhookDelivery)
        .where(
            col(WebhookDelivery.id) == delivery_id,
            col(WebhookDelivery.status) == "pending",
        )
        .values(status=status, updated_at=func.now())
    )


async def disable_endpoint(
    session: AsyncSession, endpoint_id: str, *, reason: str, cause: str
) -> bool:
    """Disable an enabled endpoint and append the event that says so (once, even on retry)."""
    disabled = (
        await session.exec(
            update(WebhookEndpoint)
            .where(col(WebhookEndpoint.id) == endpoint_id, col(WebhookEndpoint.status) == "enabled")
            .values(status="disabled", disabled_reason=reason, updated_at=func.now())
            .returning(col(WebhookEndpoint.merchant_id), col(WebhookEndpoint.url))
        )
    ).first()
    if disabled is None:
        return False
    merchant_id, url = disabled
    # The endpoint's own chain: its row, locked by the update above, orders its appends.
    await append_chained_event(
        session,
        chain=endpoint_id,
        event_id=event_id_for(f"{endpoint_id}:disabled:{cause}"),
        merchant_id=merchant_id,
        event_type=ENDPOINT_DISABLED_EVENT,
        data={"endpointId": endpoint_id, "url": url, "reason": reason},
        unless_recorded=True,
    )
    return True
