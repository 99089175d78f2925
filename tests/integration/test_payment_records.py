"""The payment record activities against the real database, called directly: a write the
database will never accept fails for good (not retried for ever under the workflow's lock), and
a late answer that contradicts a recorded outcome opens one discrepancy for operators."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.exceptions import ApplicationError

from activities.persistence import (
    OperationAttempt,
    Outcome,
    OutcomeDiscrepancy,
    PaymentRecordActivities,
)
from client import DurapayClient
from core.db.session import create_engine, session_factory
from core.domain import NetworkOutcome, TransactionType
from core.errors import ErrorType
from tests.integration.conftest import CARD_4242, create_intent
from tests.integration.helpers import charge
from tests.stack import RunningStack


@pytest.fixture(scope="module")
async def records(stack: RunningStack) -> AsyncIterator[PaymentRecordActivities]:
    engine = create_engine(
        stack.database_url.replace("postgresql://", "postgresql+asyncpg://"), pool_size=2
    )
    sessions: async_sessionmaker[AsyncSession] = session_factory(engine)
    yield PaymentRecordActivities(sessions)
    await engine.dispose()


async def test_an_outcome_for_a_transaction_never_recorded_is_refused_for_good(
    records: PaymentRecordActivities, durapay: DurapayClient
) -> None:
    intent = await create_intent(durapay)
    with pytest.raises(ApplicationError) as refused:
        await records.record_outcome(
            Outcome(intent["id"], "txn_never_recorded_000000", NetworkOutcome.APPROVED)
        )
    assert (refused.value.type, refused.value.non_retryable) == (ErrorType.RECORD_REFUSED, True)


async def test_an_illegal_state_change_is_refused_for_good(
    records: PaymentRecordActivities, durapay: DurapayClient
) -> None:
    intent = await create_intent(durapay)
    response = await charge(durapay, intent["id"], CARD_4242)
    assert response.status_code == 200, response.text
    txn = response.json()
    # A charge that succeeded cannot be declined afterwards: the state machine refuses.
    with pytest.raises(ApplicationError) as refused:
        await records.record_outcome(Outcome(intent["id"], txn["id"], NetworkOutcome.UNKNOWN))
    assert (refused.value.type, refused.value.non_retryable) == (ErrorType.RECORD_REFUSED, True)
    # A refund bigger than what was received is refused before anything is sent.
    with pytest.raises(ApplicationError) as too_much:
        await records.record_operation_attempt(
            OperationAttempt(
                intent["id"],
                "txn_refund_too_big_000000",
                TransactionType.REFUND,
                999_999,
                txn["id"],
            )
        )
    assert too_much.value.type == ErrorType.AMOUNT_INVALID


async def test_a_contradicting_late_answer_opens_one_discrepancy(
    records: PaymentRecordActivities, durapay: DurapayClient, db: asyncpg.Pool
) -> None:
    intent = await create_intent(durapay)
    response = await charge(durapay, intent["id"], card_declined())
    txn = response.json()["error"]["transaction"]
    late = OutcomeDiscrepancy(
        intent["id"], txn["id"], recorded=NetworkOutcome.FAILED, network=NetworkOutcome.APPROVED
    )
    await records.record_outcome_discrepancy(late)
    await records.record_outcome_discrepancy(late)  # a retried activity opens nothing new
    rows = await db.fetch(
        "SELECT kind, transaction_id, detail, resolved_at FROM reconciliation_discrepancy "
        "WHERE network_reference = $1",
        txn["networkReference"],
    )
    assert [(r["kind"], r["transaction_id"], r["resolved_at"]) for r in rows] == [
        ("network_contradicts_recorded_outcome", txn["id"], None)
    ]
    events = await db.fetchval(
        "SELECT count(*) FROM event WHERE type = 'reconciliation.discrepancy' "
        "AND transaction_id = $1",
        txn["id"],
    )
    assert events == 1


async def test_a_settled_payment_loads_as_the_database_knows_it(
    records: PaymentRecordActivities, durapay: DurapayClient
) -> None:
    """What a run opened for a refund reads first (`load_payment`)."""
    intent = await create_intent(durapay)
    txn = (await charge(durapay, intent["id"], CARD_4242)).json()
    snapshot = await records.load_payment(intent["id"])
    assert (snapshot.status, snapshot.amount_received, snapshot.amount_refunded) == (
        "succeeded",
        intent["amountInCents"],
        0,
    )
    assert snapshot.authorization_reference == snapshot.payment_reference == txn["id"]
    assert snapshot.succeeded_at is not None and snapshot.unsettled is None
    assert not snapshot.in_manual_review


def card_declined() -> dict[str, object]:
    return {**CARD_4242, "number": "4000000000000002"}
