"""`Durapay`: the typed, async SDK for the merchant API."""

from __future__ import annotations

from typing import Any

import httpx

from client.requestor import Requestor, Sleep
from client.resources import Events, PaymentIntents, Refunds, Transactions, WebhookEndpoints
from client.retry import RetryPolicy

DEFAULT_TIMEOUT = httpx.Timeout(
    # A charge waits up to ~10 s for the network's first answer: leave it room to answer.
    30.0,
    connect=5.0,
)


class Durapay:
    """
    >>> async with Durapay("http://127.0.0.1:8000", "pk_test_…", "sk_test_…") as durapay:
    ...     intent = await durapay.payment_intents.create(amount_in_cents=2499, currency="usd")
    ...     txn = await durapay.payment_intents.charge(intent.id, card={
    ...         "number": "4242424242424242", "expMonth": 12, "expYear": 2030, "cvc": "123"})
    ...     async for pi in durapay.payment_intents.list(limit=50):
    ...         ...

    Every request is signed (`DurapayAuth`). Every POST carries an Idempotency-Key (yours, or a
    new uuid4) that its retries reuse. Connection errors, timeouts, 5xx, 429 and the 409s of a
    request still running are retried up to `max_retries` times with exponential backoff and
    jitter, never sooner than a `Retry-After`. Errors raise `DurapayError` subclasses.
    """

    def __init__(
        self,
        api_url: str,
        public_key: str,
        secret_key: str,
        *,
        max_retries: int = 2,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep | None = None,
    ) -> None:
        """`retry` overrides `max_retries` with a whole policy; `transport` and `sleep` are for
        tests and custom networking."""
        policy = retry or RetryPolicy(max_retries=max_retries)
        extra: dict[str, Any] = {"sleep": sleep} if sleep is not None else {}
        self._requestor = Requestor(
            api_url,
            public_key,
            secret_key,
            retry=policy,
            timeout=timeout,
            transport=transport,
            **extra,
        )
        self.payment_intents = PaymentIntents(self._requestor)
        self.transactions = Transactions(self._requestor)
        self.refunds = Refunds(self._requestor)
        self.events = Events(self._requestor)
        self.webhook_endpoints = WebhookEndpoints(self._requestor)

    async def __aenter__(self) -> Durapay:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._requestor.aclose()

    async def request(
        self, method: str, path: str, body: Any = None, *, idempotency_key: str | None = None
    ) -> httpx.Response:
        """Any route, signed and retried like the others, answered as is (no exception for an
        error status): for routes this SDK does not wrap yet."""
        return await self._requestor.request_raw(
            method, path, body=body, idempotency_key=idempotency_key
        )
