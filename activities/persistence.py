"""Database side effects of a payment: record before acting, record what happened after.

Every method is idempotent: a retry after a commit finds the row or event it already wrote and
returns the same answer without writing again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity

from core.db.queries import (
    close_manual_review,
    event_exists,
    event_id_for,
    lock_intent,
    lock_transaction,
    open_manual_review,
    transition_intent,
    transition_transaction,
)
from core.db.tables import Transaction
from core.domain import (
    CaptureMethod,
    CardSummary,
    NetworkOutcome,
    TransactionStatus,
    TransactionType,
)
from core.state_machine import IntentAction, TransactionAction

log = logging.getLogger("durapay.payments")


@dataclass
class ChargeAttempt:
    payment_intent_id: str
    transaction_id: str
    card_token_id: str
    card: CardSummary


@dataclass
class ChargeOutcome:
    payment_intent_id: str
    transaction_id: str
    outcome: NetworkOutcome
    decline_code: str | None = None
    failure_code: str | None = None
    # True when the network's truth was learned by a status query after an unknown answer.
    reconciled: bool = False


@dataclass
class IntentState:
    status: str
    transaction_status: str


@dataclass
class ManualReviewFlag:
    payment_intent_id: str
    transaction_id: str
    waited_seconds: float


class PaymentRecordActivities:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    @activity.defn
    async def record_charge_attempt(self, attempt: ChargeAttempt) -> IntentState:
        """Write the pending transaction and `payment.processing` before the network is called.

        The transaction id is the network reference, so whatever happens next, every call to the
        network for this attempt carries the same idempotency key.
        """
        async with self._sessions() as session, session.begin():
            intent = await lock_intent(session, attempt.payment_intent_id)
            existing = await lock_transaction(session, attempt.transaction_id)
            if existing is not None:
                return IntentState(intent.status, existing.status)
            session.add(Transaction(
                id=attempt.transaction_id, merchant_id=intent.merchant_id,
                payment_intent_id=intent.id, type=TransactionType.CHARGE.value,
                amount_in_cents=intent.amount_in_cents, currency=intent.currency,
                status=TransactionStatus.PENDING.value, network_reference=attempt.transaction_id,
                card_token_id=attempt.card_token_id, card_brand=attempt.card.brand,
                card_last4=attempt.card.last4, card_exp_month=attempt.card.exp_month,
                card_exp_year=attempt.card.exp_year,
            ))
            await session.flush()
            await transition_intent(session, intent, IntentAction.START_ATTEMPT,
                                    cause=f"{attempt.transaction_id}:start",
                                    transaction_id=attempt.transaction_id)
            return IntentState(intent.status, TransactionStatus.PENDING.value)

    @activity.defn
    async def record_charge_outcome(self, result: ChargeOutcome) -> IntentState:
        """Apply the network's answer to the transaction and the intent, with their events."""
        async with self._sessions() as session, session.begin():
            intent = await lock_intent(session, result.payment_intent_id)
            txn = await lock_transaction(session, result.transaction_id)
            if txn is None:
                raise LookupError(f"transaction {result.transaction_id} was never recorded")
            cause = f"{txn.id}:{result.outcome.value}"
            if await event_exists(session, event_id_for(cause)) or _already_applied(txn, result):
                return IntentState(intent.status, txn.status)
            if result.outcome is NetworkOutcome.APPROVED:
                await transition_transaction(session, txn, TransactionAction.SUCCEED,
                                             {"reconciled": result.reconciled})
                if intent.capture_method == CaptureMethod.MANUAL.value:
                    await transition_intent(
                        session, intent, IntentAction.AUTHORIZATION_SUCCEEDED, cause=cause,
                        transaction_id=txn.id,
                        changes={"amount_capturable": txn.amount_in_cents, "last_error": None})
                else:
                    await transition_intent(
                        session, intent, IntentAction.CHARGE_SUCCEEDED, cause=cause,
                        transaction_id=txn.id,
                        changes={"amount_received": txn.amount_in_cents, "last_error": None})
            elif result.outcome is NetworkOutcome.UNKNOWN:
                # The intent stays `processing`: an unknown outcome is never turned into a guess.
                await transition_transaction(session, txn, TransactionAction.LOSE_ANSWER)
            else:
                await transition_transaction(session, txn, TransactionAction.FAIL, {
                    "decline_code": result.decline_code, "failure_code": result.failure_code,
                    "reconciled": result.reconciled})
                await transition_intent(
                    session, intent, IntentAction.ATTEMPT_FAILED, cause=cause,
                    transaction_id=txn.id, changes={"last_error": _last_error(result)})
            if result.outcome is not NetworkOutcome.UNKNOWN:
                await close_manual_review(session, intent.id)
            return IntentState(intent.status, txn.status)

    @activity.defn
    async def flag_for_manual_review(self, flag: ManualReviewFlag) -> None:
        """Mark the intent for operators (`durapay review list`); its status stays `processing`.

        Not a state change of the payment, so no merchant event: the merchant keeps seeing
        `processing`, which is the truth, until the network or an operator settles it.
        """
        async with self._sessions() as session, session.begin():
            opened = await open_manual_review(session, flag.payment_intent_id)
        if opened:
            log.error("payment %s needs manual review: the outcome of %s is still unknown after "
                      "%.0f s of status queries", flag.payment_intent_id, flag.transaction_id,
                      flag.waited_seconds)


def _already_applied(txn: Transaction, result: ChargeOutcome) -> bool:
    expected = {
        NetworkOutcome.APPROVED: TransactionStatus.SUCCEEDED,
        NetworkOutcome.DECLINED: TransactionStatus.FAILED,
        NetworkOutcome.FAILED: TransactionStatus.FAILED,
        NetworkOutcome.UNKNOWN: TransactionStatus.TIMEOUT,
    }[result.outcome]
    return txn.status == expected.value


def _last_error(result: ChargeOutcome) -> dict[str, str | None]:
    if result.outcome is NetworkOutcome.DECLINED:
        return {"type": "card_error", "code": "card_declined", "declineCode": result.decline_code,
                "message": f"The card was declined ({result.decline_code})."}
    return {"type": "card_error", "code": result.failure_code or "processing_error",
            "declineCode": None,
            "message": "The card network could not process the charge; nothing was charged."}
