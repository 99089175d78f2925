"""Map table rows to response schemas (tables never leave the API as they are)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import sqlalchemy
from sqlalchemy import BindParameter, Label, bindparam
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from api.schemas.events import EventOut
from api.schemas.payment_intents import PaymentIntentOut
from api.schemas.transactions import CardOut, TransactionOut
from api.schemas.webhook_endpoints import (
    DeliveryAttemptOut,
    WebhookDeliveryOut,
    WebhookEndpointOut,
)
from core.db.tables import (
    Event,
    PaymentIntent,
    Transaction,
    WebhookDelivery,
    WebhookDeliveryAttempt,
    WebhookEndpoint,
)


@dataclass(frozen=True, slots=True)
class TransactionView:
    """A charge or refund as its answer shows it, built by the API from what it sent and what
    the workflow reported (api/payment_workflow.py): plain values, no table model."""

    id: str
    merchant_id: str
    payment_intent_id: str
    type: str
    amount_in_cents: int
    currency: str
    status: str
    network_reference: str
    card_brand: str | None
    card_last4: str | None
    card_exp_month: int | None
    card_exp_year: int | None
    created_at: datetime
    updated_at: datetime
    failure_code: str | None = None
    decline_code: str | None = None
    reconciled: bool = False


def transaction_out(txn: Transaction | TransactionView | SimpleNamespace) -> TransactionOut:
    card = None
    if txn.card_brand and txn.card_last4:
        card = CardOut(
            brand=txn.card_brand,
            last4=txn.card_last4,
            exp_month=txn.card_exp_month or 0,
            exp_year=txn.card_exp_year or 0,
        )
    return TransactionOut(
        id=txn.id,
        payment_intent_id=txn.payment_intent_id,
        type=txn.type,
        amount_in_cents=txn.amount_in_cents,
        currency=txn.currency,
        status=txn.status,
        network_reference=txn.network_reference,
        card=card,
        failure_code=txn.failure_code,
        decline_code=txn.decline_code,
        reconciled=txn.reconciled,
        created_at=txn.created_at,
        updated_at=txn.updated_at,
    )


def payment_intent_out(
    intent: PaymentIntent | SimpleNamespace, transactions: Sequence[Transaction | SimpleNamespace]
) -> PaymentIntentOut:
    return PaymentIntentOut(
        id=intent.id,
        amount_in_cents=intent.amount_in_cents,
        currency=intent.currency,
        description=intent.description,
        status=intent.status,
        capture_method=intent.capture_method,
        amount_capturable=intent.amount_capturable,
        amount_received=intent.amount_received,
        amount_refunded=intent.amount_refunded,
        last_error=intent.last_error,
        cancellation_reason=intent.cancellation_reason,
        metadata=intent.metadata_,
        created_at=intent.created_at,
        updated_at=intent.updated_at,
        transactions=[transaction_out(t) for t in transactions],
    )


def event_out(event: Event) -> EventOut:
    return EventOut(
        id=event.id,
        type=event.type,
        created_at=event.created_at,
        sequence=event.seq,
        intent_sequence=event.intent_seq,
        data=event.data,
    )


def _labelled(model: type[SQLModel], prefix: str) -> dict[str, Label[Any]]:
    """The model's columns labelled `prefix + attribute name` (e.g. `metadata_`, whose column is
    `metadata`), so that one row of a join builds both models."""
    mapper = sqlalchemy.inspect(model)
    return {
        attribute.key: attribute.columns[0].label(prefix + attribute.key)
        for attribute in mapper.column_attrs
    }


_INTENT_COLUMNS = _labelled(PaymentIntent, "intent_")
_TRANSACTION_COLUMNS = _labelled(Transaction, "transaction_")
_INTENT_ID: BindParameter[str] = bindparam("intent_id")
# Built once: a statement object keeps its cache key, so each execution skips rebuilding it.
# An intent and its transactions, oldest first: one row per transaction (one row of NULLs for
# an intent without any), in one statement.
_INTENT_WITH_TRANSACTIONS = (
    sqlalchemy.select(*_INTENT_COLUMNS.values(), *_TRANSACTION_COLUMNS.values())
    # SQLModel does not declare the __table__ a table=True class has.
    .select_from(
        PaymentIntent.__table__.outerjoin(  # type: ignore[attr-defined]
            Transaction.__table__,  # type: ignore[attr-defined]
            col(Transaction.payment_intent_id) == PaymentIntent.id,
        )
    )
    .where(col(PaymentIntent.id) == _INTENT_ID)
    .order_by(col(Transaction.created_at), col(Transaction.id))
)
_OWNED_INTENT_WITH_TRANSACTIONS = _INTENT_WITH_TRANSACTIONS.where(
    col(PaymentIntent.merchant_id) == bindparam("merchant_id")
)


def _fields(columns: dict[str, Any], row: Any) -> dict[str, Any]:
    values = row._mapping
    return {key: values[column.key] for key, column in columns.items()}


async def load_payment_intent_out(
    database: AsyncSession | AsyncConnection, intent_id: str, *, merchant_id: str | None = None
) -> PaymentIntentOut | None:
    """Fresh read of an intent and its transactions (oldest first), in one statement; None if
    there is no such intent (of `merchant_id`, when given). The rows map straight to the
    answer: read-only views (SimpleNamespace), no table models to build."""
    if merchant_id is None:
        query, parameters = _INTENT_WITH_TRANSACTIONS, {"intent_id": intent_id}
    else:
        query = _OWNED_INTENT_WITH_TRANSACTIONS
        parameters = {"intent_id": intent_id, "merchant_id": merchant_id}
    if isinstance(database, AsyncSession):
        # sqlmodel types exec() for its own select() only, whose signature takes at most four
        # columns; this statement is SQLAlchemy's, which exec() runs the same way.
        rows = (await database.exec(query, params=parameters)).all()  # type: ignore[call-overload]
    else:
        rows = (await database.execute(query, parameters)).all()
    if not rows:
        return None
    intent = SimpleNamespace(**_fields(_INTENT_COLUMNS, rows[0]))
    transactions = [
        SimpleNamespace(**_fields(_TRANSACTION_COLUMNS, row))
        for row in rows
        if row._mapping[_TRANSACTION_COLUMNS["id"].key] is not None
    ]
    return payment_intent_out(intent, transactions)


def webhook_endpoint_out(endpoint: WebhookEndpoint) -> WebhookEndpointOut:
    return WebhookEndpointOut(
        id=endpoint.id,
        url=endpoint.url,
        description=endpoint.description,
        enabled_events=endpoint.enabled_events,
        status=endpoint.status,
        disabled_reason=endpoint.disabled_reason,
        created_at=endpoint.created_at,
        updated_at=endpoint.updated_at,
    )


async def load_webhook_deliveries_out(
    session: AsyncSession,
    deliveries: list[WebhookDelivery],
) -> list[WebhookDeliveryOut]:
    """Deliveries with their event type and every attempt (oldest attempt first)."""
    ids = [d.id for d in deliveries]
    attempts = (
        await session.exec(
            select(WebhookDeliveryAttempt)
            .where(col(WebhookDeliveryAttempt.delivery_id).in_(ids))
            .order_by(col(WebhookDeliveryAttempt.attempt_number))
        )
    ).all()
    types = dict(
        (
            await session.exec(
                select(Event.id, Event.type).where(
                    col(Event.id).in_({d.event_id for d in deliveries})
                )
            )
        ).all()
    )
    by_delivery: dict[str, list[DeliveryAttemptOut]] = {i: [] for i in ids}
    for a in attempts:
        by_delivery[a.delivery_id].append(
            DeliveryAttemptOut(
                attempt_number=a.attempt_number,
                attempted_at=a.attempted_at,
                status_code=a.status_code,
                error=a.error,
                duration_ms=a.duration_ms,
                response_body=a.response_body,
            )
        )
    return [
        WebhookDeliveryOut(
            id=d.id,
            event_id=d.event_id,
            event_type=types.get(d.event_id, ""),
            endpoint_id=d.endpoint_id,
            origin=d.origin,
            status=d.status,
            attempt_count=d.attempt_count,
            created_at=d.created_at,
            updated_at=d.updated_at,
            attempts=by_delivery[d.id],
        )
        for d in deliveries
    ]
