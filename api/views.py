"""Map table rows to response schemas (tables never leave the API as they are)."""

from __future__ import annotations

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from api.schemas.events import EventOut
from api.schemas.payment_intents import PaymentIntentOut
from api.schemas.transactions import CardOut, TransactionOut
from core.db.tables import Event, PaymentIntent, Transaction


def transaction_out(txn: Transaction) -> TransactionOut:
    card = None
    if txn.card_brand and txn.card_last4:
        card = CardOut(brand=txn.card_brand, last4=txn.card_last4,
                       exp_month=txn.card_exp_month or 0, exp_year=txn.card_exp_year or 0)
    return TransactionOut(
        id=txn.id, payment_intent_id=txn.payment_intent_id, type=txn.type,
        amount_in_cents=txn.amount_in_cents, currency=txn.currency, status=txn.status,
        network_reference=txn.network_reference, card=card, failure_code=txn.failure_code,
        decline_code=txn.decline_code, reconciled=txn.reconciled, created_at=txn.created_at,
        updated_at=txn.updated_at)


def payment_intent_out(intent: PaymentIntent, transactions: list[Transaction]) -> PaymentIntentOut:
    return PaymentIntentOut(
        id=intent.id, amount_in_cents=intent.amount_in_cents, currency=intent.currency,
        description=intent.description, status=intent.status,
        capture_method=intent.capture_method, amount_capturable=intent.amount_capturable,
        amount_received=intent.amount_received, amount_refunded=intent.amount_refunded,
        last_error=intent.last_error, metadata=intent.metadata_, created_at=intent.created_at,
        updated_at=intent.updated_at, transactions=[transaction_out(t) for t in transactions])


def event_out(event: Event) -> EventOut:
    return EventOut(id=event.id, type=event.type, created_at=event.created_at, data=event.data)


async def load_payment_intent_out(session: AsyncSession, intent_id: str) -> PaymentIntentOut:
    """Fresh read of an intent and its transactions (oldest first)."""
    intent = (await session.exec(select(PaymentIntent).where(PaymentIntent.id == intent_id)
                                 .execution_options(populate_existing=True))).one()
    transactions = (await session.exec(
        select(Transaction).where(Transaction.payment_intent_id == intent_id)
        .order_by(Transaction.created_at, Transaction.id)
        .execution_options(populate_existing=True))).all()
    return payment_intent_out(intent, list(transactions))
