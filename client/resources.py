"""The API's resources, one class each, with the routes of docs/api.md.

(`builtins.list` in annotations: the classes name a method `list`, as merchants expect.)
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from typing import Any, Literal, TypeVar
from urllib.parse import quote

from client.models import (
    DeletedWebhookEndpoint,
    DurapayObject,
    Event,
    Page,
    PaymentIntent,
    Transaction,
    WebhookDelivery,
    WebhookEndpoint,
)
from client.pagination import AutoPager
from client.requestor import Requestor

Model = TypeVar("Model", bound=DurapayObject)
CaptureMethod = Literal["automatic", "manual"]
CancellationReason = Literal["requested_by_customer", "duplicate", "fraudulent", "abandoned"]


def _segment(object_id: str) -> str:
    """An id as one path segment: escaped, so that no id can point the request elsewhere."""
    return quote(object_id, safe="")


def _body(**params: Any) -> dict[str, Any] | None:
    """The parameters given (None means "not sent"), or no body at all."""
    given = {k: v for k, v in params.items() if v is not None}
    return given or None


class Resource:
    def __init__(self, requestor: Requestor) -> None:
        self._requestor = requestor

    async def _call(
        self,
        model: type[Model],
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Model:
        answer = await self._requestor.request_json(
            method, path, body=body, params=params, idempotency_key=idempotency_key
        )
        return model.model_validate(answer)

    def _pager(
        self, model: type[Model], path: str, params: Mapping[str, Any], starting_after: str | None
    ) -> AutoPager[Model]:
        async def fetch(cursor: str | None) -> Page[Model]:
            answer = await self._requestor.request_json(
                "GET", path, params={**params, "startingAfter": cursor}
            )
            # A page of the class given at run time, which mypy cannot use as a type argument.
            return Page[model].model_validate(answer)  # type: ignore[valid-type]

        return AutoPager(fetch, starting_after=starting_after)


class PaymentIntents(Resource):
    async def create(
        self,
        *,
        amount_in_cents: int,
        currency: str,
        description: str | None = None,
        capture_method: CaptureMethod | None = None,
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> PaymentIntent:
        return await self._call(
            PaymentIntent,
            "POST",
            "/payment-intents",
            body=_body(
                amountInCents=amount_in_cents,
                currency=currency,
                description=description,
                captureMethod=capture_method,
                metadata=dict(metadata) if metadata else None,
            ),
            idempotency_key=idempotency_key,
        )

    async def retrieve(self, payment_intent_id: str) -> PaymentIntent:
        return await self._call(
            PaymentIntent, "GET", f"/payment-intents/{_segment(payment_intent_id)}"
        )

    def list(
        self,
        *,
        limit: int | None = None,
        status: str | None = None,
        starting_after: str | None = None,
    ) -> AutoPager[PaymentIntent]:
        """Newest first; iterate with `async for` to follow every page."""
        return self._pager(
            PaymentIntent, "/payment-intents", {"limit": limit, "status": status}, starting_after
        )

    async def charge(
        self, payment_intent_id: str, *, card: Mapping[str, Any], idempotency_key: str | None = None
    ) -> Transaction:
        """POST /payment-intents/{id}/transactions with `type: charge`. The Transaction comes
        back `succeeded`, or `timeout`/`pending` (HTTP 202: reconciliation settles it);
        a decline raises `CardError` holding the failed Transaction."""
        return await Transactions(self._requestor).create(
            payment_intent_id, card=card, idempotency_key=idempotency_key
        )

    async def capture(
        self,
        payment_intent_id: str,
        *,
        amount_in_cents: int | None = None,
        idempotency_key: str | None = None,
    ) -> PaymentIntent:
        return await self._call(
            PaymentIntent,
            "POST",
            f"/payment-intents/{_segment(payment_intent_id)}/capture",
            body=_body(amountInCents=amount_in_cents),
            idempotency_key=idempotency_key,
        )

    async def cancel(
        self,
        payment_intent_id: str,
        *,
        cancellation_reason: CancellationReason | None = None,
        idempotency_key: str | None = None,
    ) -> PaymentIntent:
        return await self._call(
            PaymentIntent,
            "POST",
            f"/payment-intents/{_segment(payment_intent_id)}/cancel",
            body=_body(cancellationReason=cancellation_reason),
            idempotency_key=idempotency_key,
        )

    async def list_events(self, payment_intent_id: str) -> builtins.list[Event]:
        """The intent's audit trail, oldest first (one page: the whole trail)."""
        answer = await self._requestor.request_json(
            "GET", f"/payment-intents/{_segment(payment_intent_id)}/events"
        )
        return Page[Event].model_validate(answer).data


class Transactions(Resource):
    async def create(
        self,
        payment_intent_id: str,
        *,
        card: Mapping[str, Any],
        type: Literal["charge"] = "charge",
        idempotency_key: str | None = None,
    ) -> Transaction:
        """`card`: `{"number", "expMonth", "expYear", "cvc"}` (sent once, never kept here)."""
        return await self._call(
            Transaction,
            "POST",
            f"/payment-intents/{_segment(payment_intent_id)}/transactions",
            body={"type": type, "card": dict(card)},
            idempotency_key=idempotency_key,
        )

    async def list(self, payment_intent_id: str) -> builtins.list[Transaction]:
        """An intent's transactions, oldest first (they come with the intent)."""
        return (await PaymentIntents(self._requestor).retrieve(payment_intent_id)).transactions


class Refunds(Resource):
    async def create(
        self,
        payment_intent_id: str,
        *,
        amount_in_cents: int | None = None,
        idempotency_key: str | None = None,
    ) -> Transaction:
        """Refunds `amount_in_cents` (default: everything captured and not refunded yet)."""
        return await self._call(
            Transaction,
            "POST",
            f"/payment-intents/{_segment(payment_intent_id)}/refunds",
            body=_body(amountInCents=amount_in_cents),
            idempotency_key=idempotency_key,
        )


class Events(Resource):
    def list(
        self,
        *,
        type: str | None = None,
        limit: int | None = None,
        starting_after: str | None = None,
    ) -> AutoPager[Event]:
        """The merchant's events, newest first."""
        return self._pager(Event, "/events", {"type": type, "limit": limit}, starting_after)

    async def redeliver(
        self, event_id: str, *, endpoint_id: str | None = None, idempotency_key: str | None = None
    ) -> builtins.list[WebhookDelivery]:
        """Send the event again to every subscribed endpoint, or to `endpoint_id`."""
        answer = await self._requestor.request_json(
            "POST",
            f"/events/{_segment(event_id)}/redeliver",
            body=_body(endpointId=endpoint_id),
            idempotency_key=idempotency_key,
        )
        return Page[WebhookDelivery].model_validate(answer).data


class WebhookEndpoints(Resource):
    # The API does not take an Idempotency-Key on creating an endpoint or rotating its secret:
    # those are retried only when the request cannot have arrived (client.retry).
    async def create(
        self, *, url: str, enabled_events: builtins.list[str], description: str | None = None
    ) -> WebhookEndpoint:
        """The answer holds the endpoint's `secret` (`whsec_…`); it is never shown again."""
        return await self._call(
            WebhookEndpoint,
            "POST",
            "/webhook-endpoints",
            body=_body(url=url, enabledEvents=list(enabled_events), description=description),
        )

    async def retrieve(self, endpoint_id: str) -> WebhookEndpoint:
        return await self._call(
            WebhookEndpoint, "GET", f"/webhook-endpoints/{_segment(endpoint_id)}"
        )

    def list(
        self, *, limit: int | None = None, starting_after: str | None = None
    ) -> AutoPager[WebhookEndpoint]:
        return self._pager(WebhookEndpoint, "/webhook-endpoints", {"limit": limit}, starting_after)

    async def update(
        self,
        endpoint_id: str,
        *,
        url: str | None = None,
        enabled_events: builtins.list[str] | None = None,
        description: str | None = None,
        status: Literal["enabled", "disabled"] | None = None,
    ) -> WebhookEndpoint:
        return await self._call(
            WebhookEndpoint,
            "POST",
            f"/webhook-endpoints/{_segment(endpoint_id)}",
            body=_body(
                url=url, enabledEvents=enabled_events, description=description, status=status
            )
            or {},
        )

    async def delete(self, endpoint_id: str) -> DeletedWebhookEndpoint:
        return await self._call(
            DeletedWebhookEndpoint, "DELETE", f"/webhook-endpoints/{_segment(endpoint_id)}"
        )

    async def rotate_secret(
        self, endpoint_id: str, *, grace_period_seconds: int | None = None
    ) -> WebhookEndpoint:
        """A new secret (in the answer); the old one also signs for the grace period."""
        return await self._call(
            WebhookEndpoint,
            "POST",
            f"/webhook-endpoints/{_segment(endpoint_id)}/rotate-secret",
            body=_body(gracePeriodSeconds=grace_period_seconds),
        )

    def list_deliveries(
        self, endpoint_id: str, *, limit: int | None = None, starting_after: str | None = None
    ) -> AutoPager[WebhookDelivery]:
        return self._pager(
            WebhookDelivery,
            f"/webhook-endpoints/{_segment(endpoint_id)}/deliveries",
            {"limit": limit},
            starting_after,
        )
