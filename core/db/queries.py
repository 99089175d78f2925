"""Queries and the one write path for state changes.

`transition_intent` and `transition_transaction` are the only code that changes a status: they
ask the state machine, update with `WHERE status = :expected`, and append the event in the
caller's database transaction. Event ids are derived from what caused them, so an activity that
is retried after its commit finds its own event and does nothing twice.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, text, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.audit_chain import GENESIS_HASH, chain_of, link_hash
from core.db.tables import AuditChainHead, Event, PaymentIntent, Transaction
from core.errors import IllegalTransition
from core.state_machine import (
    IntentAction,
    IntentMove,
    TransactionAction,
    move_intent,
    move_transaction,
)


def event_id_for(cause: str) -> str:
    """Deterministic event id: the same cause (e.g. `txn_…:succeed`) always names one event."""
    return "evt_" + hashlib.sha256(cause.encode()).hexdigest()[:24]


def intent_state(intent: PaymentIntent) -> dict[str, Any]:
    """What an event records of the intent, before and after its change."""
    return {
        "status": intent.status,
        "amountInCents": intent.amount_in_cents,
        "amountCapturable": intent.amount_capturable,
        "amountReceived": intent.amount_received,
        "amountRefunded": intent.amount_refunded,
    }


def event_data(intent: PaymentIntent, transaction: Transaction | None,
               previous: dict[str, Any] | None) -> dict[str, Any]:
    """API.md's event data (the intent after the change), plus the intent before it and the
    transaction it concerns: a payment's story can be rebuilt from its events alone."""
    return {
        "paymentId": intent.id,
        "currency": intent.currency,
        **intent_state(intent),
        "transactionId": transaction.id if transaction else None,
        "previous": previous,
        "transaction": None if transaction is None else {
            "id": transaction.id, "type": transaction.type, "status": transaction.status,
            "amountInCents": transaction.amount_in_cents},
    }


async def event_exists(session: AsyncSession, event_id: str) -> bool:
    found = await session.exec(select(Event.seq).where(Event.id == event_id))
    return found.first() is not None


# Takes the chain's head row lock (creating the row for a chain's first event) and reads, in
# the same round trip, what the new event's link needs: the head, the intent's last sequence
# number, and the time (clock_timestamp, not the transaction's start: events of one
# transaction keep their order).
_LOCK_CHAIN_HEAD = text("""
INSERT INTO audit_chain_head AS head (chain, chain_seq, hash) VALUES (:chain, 0, :genesis)
ON CONFLICT (chain) DO UPDATE SET chain = head.chain
RETURNING head.chain_seq, head.hash, clock_timestamp() AS now,
    (SELECT coalesce(max(intent_seq), 0) FROM event
     WHERE payment_intent_id = CAST(:payment_intent_id AS VARCHAR)) AS intent_seq
""")


async def append_chained_event(session: AsyncSession, *, event_id: str,
                               merchant_id: str | None, event_type: str,
                               data: dict[str, Any], payment_intent_id: str | None = None,
                               transaction_id: str | None = None, in_intent_story: bool = False,
                               unless_recorded: bool = False) -> Event | None:
    """The one way an event is written: at the end of its merchant's hash chain, in the caller's
    transaction. The head's row lock is held until the commit: one merchant's appends queue up
    there, other merchants' never meet it.

    `in_intent_story`: the event is one of the payment's own (numbered by `intent_seq`, shown to
    the merchant); operator and endpoint events are chained but not numbered.
    `unless_recorded`: an event with this id already written is left alone (None comes back);
    checked under the head's lock, so two concurrent writers of one event write it once.
    """
    chain = chain_of(merchant_id)
    head = (await session.exec(_LOCK_CHAIN_HEAD, params={  # type: ignore[call-overload]
        "chain": chain, "genesis": GENESIS_HASH,
        "payment_intent_id": payment_intent_id if in_intent_story else None})).one()
    if unless_recorded and await event_exists(session, event_id):
        return None
    event = Event(id=event_id, merchant_id=merchant_id, payment_intent_id=payment_intent_id,
                  transaction_id=transaction_id, type=event_type, data=data,
                  created_at=head.now, chain=chain, chain_seq=head.chain_seq + 1,
                  prev_hash=head.hash, hash="",
                  intent_seq=head.intent_seq + 1 if in_intent_story else None)
    event.hash = link_hash(head.hash, event.model_dump())
    session.add(event)
    await session.exec(update(AuditChainHead).where(  # type: ignore[call-overload]
        AuditChainHead.chain == chain).values(chain_seq=event.chain_seq, hash=event.hash))
    return event


async def append_event(session: AsyncSession, *, cause: str, event_type: str,
                       intent: PaymentIntent, transaction_id: str | None,
                       previous: dict[str, Any] | None = None) -> Event:
    """The payment's event for a change of `intent` (its callers write each cause once)."""
    transaction = (await session.get(Transaction, transaction_id)
                   if transaction_id is not None else None)
    event = await append_chained_event(
        session, event_id=event_id_for(cause), merchant_id=intent.merchant_id,
        event_type=event_type, data=event_data(intent, transaction, previous),
        payment_intent_id=intent.id, transaction_id=transaction_id, in_intent_story=True)
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


async def transition_intent(session: AsyncSession, intent: PaymentIntent, action: IntentAction,
                            *, cause: str, transaction_id: str | None,
                            changes: dict[str, Any] | None = None) -> IntentMove:
    """Move `intent` (loaded in this session) and append its event; raises IllegalTransition."""
    move = move_intent(intent.status, action)
    previous = intent_state(intent)
    values: dict[str, Any] = {"status": move.after.value, **(changes or {})}
    result = await session.exec(
        update(PaymentIntent)
        .where(PaymentIntent.id == intent.id, PaymentIntent.status == move.before.value)
        .values(**values, updated_at=_now_sql())
        .returning(PaymentIntent.updated_at)
        .execution_options(synchronize_session=False)  # the caller's objects are set below
    )
    row = result.first()
    if row is None:  # someone else moved it first
        raise IllegalTransition("payment intent", intent.status, action.value)
    for name, value in values.items():
        setattr(intent, name, value)
    intent.updated_at = row[0]
    await append_event(session, cause=cause, event_type=move.event_type, intent=intent,
                       transaction_id=transaction_id, previous=previous)
    return move


async def transition_transaction(session: AsyncSession, txn: Transaction,
                                 action: TransactionAction,
                                 changes: dict[str, Any] | None = None) -> None:
    after = move_transaction(txn.status, action)
    values: dict[str, Any] = {"status": after.value, **(changes or {})}
    result = await session.exec(
        update(Transaction)
        .where(Transaction.id == txn.id, Transaction.status == txn.status)
        .values(**values, updated_at=_now_sql())
        .returning(Transaction.updated_at)
        .execution_options(synchronize_session=False)  # the caller's objects are set below
    )
    row = result.first()
    if row is None:
        raise IllegalTransition("transaction", txn.status, action.value)
    for name, value in values.items():
        setattr(txn, name, value)
    txn.updated_at = row[0]


async def open_manual_review(session: AsyncSession, intent_id: str) -> bool:
    """Flag the intent for operators; False if a review is already open (idempotent)."""
    result = await session.exec(
        update(PaymentIntent)
        .where(PaymentIntent.id == intent_id,
               or_(PaymentIntent.manual_review_since.is_(None),  # type: ignore[union-attr]
                   PaymentIntent.manual_review_resolved_at.isnot(None)))  # type: ignore[union-attr]
        .values(manual_review_since=_now_sql(), manual_review_resolved_at=None)
        .returning(PaymentIntent.id)
        .execution_options(synchronize_session=False)
    )
    return result.first() is not None


async def close_manual_review(session: AsyncSession, intent: PaymentIntent) -> None:
    """The outcome is known now: an open review (if any) is resolved. `intent` is locked in
    this session, so its review columns are current: with no review open (nearly every
    payment) there is nothing to write."""
    if intent.manual_review_since is None or intent.manual_review_resolved_at is not None:
        return
    result = await session.exec(
        update(PaymentIntent)
        .where(PaymentIntent.id == intent.id,
               PaymentIntent.manual_review_since.isnot(None),  # type: ignore[union-attr]
               PaymentIntent.manual_review_resolved_at.is_(None))  # type: ignore[union-attr]
        .values(manual_review_resolved_at=_now_sql())
        .returning(PaymentIntent.manual_review_resolved_at)
        .execution_options(synchronize_session=False)
    )
    row = result.first()
    if row is not None:
        intent.manual_review_resolved_at = row[0]


def _now_sql() -> Any:
    # clock_timestamp, not now(): several moves in one DB transaction keep their real order.
    return func.clock_timestamp()


def newest_first_after(model: Any, cursor: tuple[datetime, str] | None) -> Any:
    """Keyset pagination condition: rows strictly older than the cursor row."""
    if cursor is None:
        return True
    created_at, row_id = cursor
    return or_(model.created_at < created_at,
               and_(model.created_at == created_at, model.id < row_id))


# Merchants see the `payment.*` events of the API contract and what happens to their own webhook
# endpoints (`webhook_endpoint.disabled`); operator events such as
# `reconciliation.discrepancy` share the table but never leave through the merchant API.
MERCHANT_EVENT_PREFIXES = ("payment.", "webhook_endpoint.")


def merchant_visible_event() -> Any:
    """Condition that keeps operator events out of every merchant-facing event query."""
    return or_(*(col(Event.type).startswith(prefix) for prefix in MERCHANT_EVENT_PREFIXES))
