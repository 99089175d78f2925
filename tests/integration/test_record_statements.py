"""The worker's two records of a charge on a real PostgreSQL, counted as pg_stat_statements
counts them (`track = all`: BEGIN, COMMIT and the foreign keys' checks), and a retry that
waits for the payment's lock while its first try commits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from activities.persistence import ChargeAttempt, Outcome, PaymentRecordActivities
from core.db.audit import verify_chains
from core.db.intent_writes import insert_payment_intent
from core.db.queries import event_id_for
from core.db.session import session_factory
from core.domain import CardSummary, NetworkOutcome, new_id
from core.settings import to_asyncpg_url
from tests.scratch_postgres import scratch_postgres

CARD = CardSummary(brand="visa", last4="4242", exp_month=12, exp_year=2030)


@dataclass
class Database:
    admin: asyncpg.Connection
    engine: AsyncEngine
    records: PaymentRecordActivities
    merchant: str


@pytest.fixture(scope="module")
async def database() -> AsyncIterator[Database]:
    async with scratch_postgres(
        settings={
            "shared_preload_libraries": "pg_stat_statements",
            "pg_stat_statements.track": "all",
        }
    ) as url:
        admin = await asyncpg.connect(url)
        await admin.execute("CREATE EXTENSION pg_stat_statements")
        merchant = new_id("acct")
        await admin.execute("INSERT INTO merchant (id, name) VALUES ($1, 'records')", merchant)
        # No pre-ping: what is counted is what the records send, not how the pool checks.
        engine = create_async_engine(to_asyncpg_url(url), pool_size=2, pool_pre_ping=False)
        yield Database(admin, engine, PaymentRecordActivities(session_factory(engine)), merchant)
        await engine.dispose()
        await admin.close()


async def _new_payment(database: Database) -> tuple[str, str]:
    """A created intent with its `payment.created` (written by the API's path) and a card."""
    intent, token = new_id("pi"), new_id("tok")
    await database.admin.execute(
        "INSERT INTO card_token (id, merchant_id, pan_ciphertext, brand, last4, exp_month, "
        "exp_year) VALUES ($1, $2, '\\x01', 'visa', '4242', 12, 2030)",
        token,
        database.merchant,
    )
    async with database.engine.begin() as connection:  # as the API's create writes it
        await insert_payment_intent(
            connection,
            intent_id=intent,
            merchant_id=database.merchant,
            amount_in_cents=1000,
            currency="usd",
            description=None,
            capture_method="automatic",
            metadata={},
        )
    return intent, token


async def test_a_charge_records_in_eight_statements_and_its_foreign_key_checks(
    database: Database,
) -> None:
    intent, token = await _new_payment(database)
    await database.admin.execute("SELECT pg_stat_statements_reset()")
    txn = new_id("txn")
    await database.records.record_charge_attempt(ChargeAttempt(intent, txn, token, CARD))
    recorded = await database.records.record_outcome(Outcome(intent, txn, NetworkOutcome.APPROVED))
    assert recorded.status == "succeeded"
    rows = await database.admin.fetch(
        "SELECT toplevel, query, calls FROM pg_stat_statements WHERE query NOT LIKE "
        "'%pg_stat_statements%'"
    )
    top = {r["query"]: r["calls"] for r in rows if r["toplevel"]}
    nested = sum(r["calls"] for r in rows if not r["toplevel"])
    # Each record: BEGIN, the locking read, the one write, COMMIT.
    assert sum(top.values()) == 8, top
    assert (top["BEGIN"], top["COMMIT"]) == (2, 2)
    # The foreign keys' checks of the rows inserted: the transaction's (merchant, intent,
    # card token) and each event's (merchant, intent); none for the updates, whose keys stay.
    assert nested <= 7, [(r["toplevel"], r["query"][:90], r["calls"]) for r in rows]
    report = await verify_chains(database.engine, database.merchant)
    assert report.first_broken is None and report.events >= 3


async def test_a_retry_waiting_on_the_lock_returns_what_its_first_try_committed(
    database: Database,
) -> None:
    """The retry's read began before the first try committed; it must not act on that."""
    intent, token = await _new_payment(database)
    txn = new_id("txn")
    attempt = ChargeAttempt(intent, txn, token, CARD)
    holder = await database.engine.raw_connection()
    blocker = holder.driver_connection
    assert blocker is not None
    transaction = blocker.transaction()
    await transaction.start()
    await blocker.execute("SELECT 1 FROM payment_intent WHERE id = $1 FOR UPDATE", intent)
    first = asyncio.create_task(database.records.record_charge_attempt(attempt))
    await _wait_for_lock_waiters(database.admin, 1)
    retry = asyncio.create_task(database.records.record_charge_attempt(attempt))
    await _wait_for_lock_waiters(database.admin, 2)
    await transaction.rollback()
    holder.close()
    answers = await asyncio.gather(first, retry)
    assert answers[0] == answers[1] and answers[0].status == "processing"
    rows = await database.admin.fetchval("SELECT count(*) FROM transaction WHERE id = $1", txn)
    events = await database.admin.fetch(
        "SELECT id FROM event WHERE chain = $1 ORDER BY chain_seq", intent
    )
    assert rows == 1
    assert [e["id"] for e in events] == [
        event_id_for(f"{intent}:created"),
        event_id_for(f"{txn}:start"),
    ]


async def _wait_for_lock_waiters(admin: asyncpg.Connection, count: int) -> None:
    for _ in range(500):
        waiting = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        )
        if waiting >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{count} sessions never waited for the payment's lock")
