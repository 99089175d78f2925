"""Queries and the one write path for state changes.

`transition_intent` here and the worker's hot records (core/db/payment_records.py, the same
guarantees in plain SQL) are the only code that changes a status: they ask the state machine,
update with `WHERE status = :expected`, and append the event in the caller's database
transaction. Event ids are derived from what caused them, so an activity that is retried after
its commit finds its own event and does nothing twice.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import and_, func, or_, text, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.audit_chain import GENESIS_HASH, link_hash
from core.db.tables import Event, PaymentIntent, Transaction
from core.errors import IllegalTransition
from core.state_machine import (
    IntentAction,
    IntentMove,
    move_intent,
)


def event_id_for(cause: str) -> str:
    """Deterministic event id: the same cause (e.g. `txn_…:succeed`) always names one event."""
    return "evt_" + hashlib.sha256(cause.encode()).hexdigest()[:24]


class IntentFacts(Protocol):
    """What an event tells of an intent: a `PaymentIntent` row, or the plain row the hot
    path reads (core/db/payment_records.py)."""

    id: str
    currency: str
    status: str
    amount_in_cents: int
    amount_capturable: int
    amount_received: int
    amount_refunded: int


class TransactionFacts(Protocol):
    id: str
    type: str
    status: str
    amount_in_cents: int


def intent_state(intent: IntentFacts) -> dict[str, Any]:
    """What an event records of the intent, before and after its change."""
    return {
        "status": intent.status,
        "amountInCents": intent.amount_in_cents,
        "amountCapturable": intent.amount_capturable,
        "amountReceived": intent.amount_received,
        "amountRefunded": intent.amount_refunded,
    }


def event_data(
    intent: IntentFacts, transaction: TransactionFacts | None, previous: dict[str, Any] | None
) -> dict[str, Any]:
    """The event data of docs/api.md (the intent after the change), plus the intent before it
    and the transaction it concerns: a payment's story can be rebuilt from its events alone."""
    return {
        "paymentId": intent.id,
        "currency": intent.currency,
        **intent_state(intent),
        "transactionId": transaction.id if transaction else None,
        "previous": previous,
        "transaction": None
        if transaction is None
        else {
            "id": transaction.id,
            "type": transaction.type,
            "status": transaction.status,
            "amountInCents": transaction.amount_in_cents,
        },
    }


async def event_exists(session: AsyncSession, event_id: str) -> bool:
    found = await session.exec(select(Event.seq).where(Event.id == event_id))
    return found.first() is not None


# What the new event's link needs, in one round trip: the chain's last event (none before a
# chain's first) and the time (clock_timestamp, not the transaction's start: events of one
# transaction keep their order). One index probe on (chain, chain_seq); nothing is locked.
_CHAIN_TAIL = text("""
SELECT clock_timestamp() AS now, tail.chain_seq, tail.hash
FROM (SELECT 1) AS one LEFT JOIN LATERAL (
    SELECT chain_seq, hash FROM event WHERE chain = :chain ORDER BY chain_seq DESC LIMIT 1
) AS tail ON true
""")


async def append_chained_event(
    session: AsyncSession,
    *,
    chain: str,
    event_id: str,
    merchant_id: str | None,
    event_type: str,
    data: dict[str, Any],
    payment_intent_id: str | None = None,
    transaction_id: str | None = None,
    in_intent_story: bool = False,
    unless_recorded: bool = False,
) -> Event | None:
    """The one way an event is written: at the end of its subject's hash chain (`chain`: the
    payment's id, the endpoint's, the discrepancy's), in the caller's transaction.

    The caller holds its subject's row lock (the payment's, the endpoint's; a discrepancy's
    row is new), so one subject's appends line up there and nowhere else: two payments of one
    merchant never wait for each other. Were a caller to skip it, the unique (chain, chain_seq)
    would refuse the second of two racing appends rather than let the chain fork.

    `in_intent_story`: the event is one of the payment's own, numbered by `intent_seq` (its
    position in the payment's chain) and shown to the merchant.
    `unless_recorded`: an event with this id already written is left alone (None comes back);
    checked under the subject's lock, so two concurrent writers of one event write it once.
    """
    # sqlmodel types exec() for its select() and DML only; it runs text() the same way.
    tail = (
        await session.exec(
            _CHAIN_TAIL,
            params={  # type: ignore[call-overload]
                "chain": chain
            },
        )
    ).one()
    if unless_recorded and await event_exists(session, event_id):
        return None
    event = Event(
        **chained_event_row(
            chain=chain,
            tail_seq=tail.chain_seq,
            tail_hash=tail.hash,
            now=tail.now,
            event_id=event_id,
            merchant_id=merchant_id,
            event_type=event_type,
            data=data,
            payment_intent_id=payment_intent_id,
            transaction_id=transaction_id,
            in_intent_story=in_intent_story,
        )
    )
    session.add(event)
    await session.flush()  # a second append to the chain in this transaction reads this one
    return event


def chained_event_row(
    *,
    chain: str,
    tail_seq: int | None,
    tail_hash: str | None,
    now: datetime,
    event_id: str,
    merchant_id: str | None,
    event_type: str,
    data: dict[str, Any],
    payment_intent_id: str | None,
    transaction_id: str | None,
    in_intent_story: bool,
) -> dict[str, Any]:
    """An event's row at the end of its chain (after `tail_seq`/`tail_hash`, none for a new
    chain), with its link: every writer of events builds it here, so the hash covers the
    same columns whichever path wrote it."""
    position = (tail_seq or 0) + 1
    previous = tail_hash or GENESIS_HASH
    row = {
        "id": event_id,
        "merchant_id": merchant_id,
        "payment_intent_id": payment_intent_id,
        "transaction_id": transaction_id,
        "type": event_type,
        "data": data,
        "created_at": now,
        "chain": chain,
        "chain_seq": position,
        "intent_seq": position if in_intent_story else None,
    }
    return {**row, "prev_hash": previous, "hash": link_hash(previous, row)}


async def append_event(
    session: AsyncSession,
    *,
    cause: str,
    event_type: str,
    intent: PaymentIntent,
    transaction_id: str | None,
    previous: dict[str, Any] | None = None,
) -> Event:
    """The payment's event for a change of `intent` (its callers write each cause once)."""
    transaction = (
        await session.get(Transaction, transaction_id) if transaction_id is not None else None
    )
    event = await append_chained_event(
        session,
        chain=intent.id,
        event_id=event_id_for(cause),
        merchant_id=intent.merchant_id,
        event_type=event_type,
        data=event_data(intent, transaction, previous),
        payment_intent_id=intent.id,
        transaction_id=transaction_id,
        in_intent_story=True,
    )
    assert event is not None
    return event


async def lock_intent(session: AsyncSession, intent_id: str) -> PaymentIntent:
    """Load the intent for update: concurrent moves of one intent queue up here."""
    result = await session.exec(
        select(PaymentIntent).where(PaymentIntent.id == intent_id).with_for_update()
    )
    return result.one()


async def lock_transaction(session: AsyncSession, transaction_id: str) -> Transaction | None:
    result = await session.exec(
        select(Transaction).where(Transaction.id == transaction_id).with_for_update()
    )
    return result.first()


async def transition_intent(
    session: AsyncSession,
    intent: PaymentIntent,
    action: IntentAction,
    *,
    cause: str,
    transaction_id: str | None,
    changes: dict[str, Any] | None = None,
) -> IntentMove:
    """Move `intent` (loaded in this session) and append its event; raises IllegalTransition."""
    move = move_intent(intent.status, action)
    previous = intent_state(intent)
    values = changed_columns(intent, {"status": move.after.value, **(changes or {})})
    result = await session.exec(
        update(PaymentIntent)
        .where(col(PaymentIntent.id) == intent.id, col(PaymentIntent.status) == move.before.value)
        .values(**values, updated_at=_now_sql())
        .returning(col(PaymentIntent.updated_at))
        .execution_options(synchronize_session=False)  # the caller's objects are set below
    )
    row = result.first()
    if row is None:  # someone else moved it first
        raise IllegalTransition("payment intent", intent.status, action.value)
    for name, value in values.items():
        setattr(intent, name, value)
    intent.updated_at = row[0]
    await append_event(
        session,
        cause=cause,
        event_type=move.event_type,
        intent=intent,
        transaction_id=transaction_id,
        previous=previous,
    )
    return move


async def open_manual_review(session: AsyncSession, intent_id: str) -> bool:
    """Flag the intent for operators; False if a review is already open (idempotent)."""
    result = await session.exec(
        update(PaymentIntent)
        .where(
            col(PaymentIntent.id) == intent_id,
            or_(
                col(PaymentIntent.manual_review_since).is_(None),
                col(PaymentIntent.manual_review_resolved_at).isnot(None),
            ),
        )
        .values(manual_review_since=_now_sql(), manual_review_resolved_at=None)
        .returning(col(PaymentIntent.id))
        .execution_options(synchronize_session=False)
    )
    return result.first() is not None


def changed_columns(row: Any, values: dict[str, Any]) -> dict[str, Any]:
    """The values that differ from what `row` holds: an UPDATE writes only what changes (an
    unchanged column rewritten costs WAL and index work for nothing). The status always
    stays, since a move is guarded by it even where it stays the same (a partial refund)."""
    return {
        name: value
        for name, value in values.items()
        if name == "status" or getattr(row, name) != value
    }


def _now_sql() -> Any:
    # clock_timestamp, not now(): several moves in one DB transaction keep their real order.
    return func.clock_timestamp()


def newest_first_after(model: Any, cursor: tuple[datetime, str] | None) -> Any:
    """Keyset pagination condition: rows strictly older than the cursor row."""
    if cursor is None:
        return True
    created_at, row_id = cursor
    return or_(
        model.created_at < created_at, and_(model.created_at == created_at, model.id < row_id)
    )


# Merchants see the `payment.*` events of the API contract and what happens to their own webhook
# endpoints (`webhook_endpoint.disabled`); operator events such as
# `reconciliation.discrepancy` share the table but never leave through the merchant API.
MERCHANT_EVENT_PREFIXES = ("payment.", "webhook_endpoint.")


def merchant_visible_event() -> Any:
    """Condition that keeps operator events out of every merchant-facing event query."""
    return or_(*(col(Event.type).startswith(prefix) for prefix in MERCHANT_EVENT_PREFIXES))
