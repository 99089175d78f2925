"""The composite keys (core/db/tables.py): a transaction, a payment event and a webhook delivery
name their parent *and* the parent's own merchant; a row naming another merchant is refused by
Postgres itself."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from tests.api.conftest import Merchant, insert_intent

pytestmark = pytest.mark.api


async def insert_transaction(db: asyncpg.Pool, *, intent_id: str, merchant_id: str) -> None:
    txn_id = f"txn_{uuid.uuid4().hex}"
    await db.execute(
        'INSERT INTO "transaction" (id, merchant_id, payment_intent_id, type, amount_in_cents, '
        "currency, status, network_reference, reconciled, created_at, updated_at) "
        "VALUES ($1, $2, $3, 'charge', 2499, 'usd', 'pending', $1, false, now(), now())",
        txn_id,
        merchant_id,
        intent_id,
    )


async def test_a_transaction_naming_another_merchant_than_its_intents_is_refused(
    db: asyncpg.Pool, merchant: Merchant, other_merchant: Merchant
) -> None:
    intent_id = await insert_intent(db, merchant, status="requires_payment_method")
    await insert_transaction(db, intent_id=intent_id, merchant_id=merchant.id)
    with pytest.raises(asyncpg.ForeignKeyViolationError) as refused:
        await insert_transaction(db, intent_id=intent_id, merchant_id=other_merchant.id)
    assert refused.value.constraint_name == "fk_transaction_payment_intent_id_payment_intent"
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await insert_transaction(db, intent_id=f"pi_{uuid.uuid4().hex}", merchant_id=merchant.id)


async def test_the_keys_to_the_merchant_are_implied_not_checked_twice(db: asyncpg.Pool) -> None:
    keys = await db.fetch(
        "SELECT conrelid::regclass::text AS child, conname, "
        "       (SELECT array_agg(attname ORDER BY attname) FROM pg_attribute "
        "        WHERE attrelid = conrelid AND attnum = ANY(conkey)) AS columns "
        "FROM pg_constraint WHERE contype = 'f' "
        "  AND conrelid::regclass::text IN ('transaction', 'event', 'webhook_delivery')"
    )
    by_child = {(row["child"], tuple(row["columns"])) for row in keys}
    assert ("transaction", ("merchant_id", "payment_intent_id")) in by_child
    assert ("event", ("merchant_id", "payment_intent_id")) in by_child
    assert ("webhook_delivery", ("endpoint_id", "merchant_id")) in by_child
    assert not {columns for child, columns in by_child if columns == ("merchant_id",)}


async def test_a_payment_event_without_its_merchant_is_refused(
    db: asyncpg.Pool, merchant: Merchant
) -> None:
    """Else its key, with a NULL column, would check nothing."""
    intent_id = await insert_intent(db, merchant, status="requires_payment_method")
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute(
            "INSERT INTO event (id, merchant_id, payment_intent_id, type, data, created_at, "
            "chain, chain_seq, prev_hash, hash) VALUES ($1, NULL, $2, 'payment_intent.created', "
            "'{}', now(), $2, 999, '', '')",
            f"evt_{uuid.uuid4().hex}",
            intent_id,
        )
