from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Response, status
from sqlalchemy.ext.asyncio import AsyncConnection

from api.deps import OwnedPaymentIntentDep, SessionDep, StateDep, TemporalDep
from api.errors import InvalidRequestError
from api.idempotency import IdempotentRoute, idempotent
from api.openapi import errors
from api.payment_workflow import (
    pending_transaction,
    send_operation,
    settled_by_key,
    transaction_answer,
    transaction_status_and_out,
    unexpected_state,
)
from api.schemas.transactions import TransactionCreate, TransactionOut
from core.cards import card_brand, card_problem
from core.crypto import VaultCipher
from core.db.intent_operations import IntentSnapshot, insert_card_token
from core.domain import (
    CardSummary,
    TransactionType,
    new_id,
)
from core.state_machine import can_start_charge
from workflows.payment_intent import PaymentIntentWorkflow
from workflows.payment_messages import ChargeInput

router = APIRouter(prefix="/payment-intents", tags=["transactions"], route_class=IdempotentRoute)

CHARGE_RESPONSES = errors(
    202,
    400,
    401,
    402,
    404,
    409,
    429,
    503,
    card_error_holds="transaction",
    described={
        202: "The network's answer is not known yet (transaction `timeout`), or the wait ran "
        "out first (`pending`): always this request's own transaction, never an earlier "
        "one; reconciliation settles it without any client action.",
        400: "The card is invalid (Luhn, length, expiry, CVC: `param` names the field), or "
        "the body is.",
        402: "Declined: `card_error` with `declineCode`; the error object also holds the "
        "failed Transaction under `transaction`.",
        409: "An attempt is in flight, the intent takes no new charge, or a request with "
        "this Idempotency-Key is still running.",
    },
)


async def checked_charge(body: TransactionCreate) -> TransactionCreate:
    """The card checked (Luhn, length, expiry, CVC) before anything is stored or sent, and
    before the Idempotency-Key is claimed: a refused card is not an answer to store."""
    card = body.card
    problem = card_problem(
        number=card.number,
        exp_month=card.exp_month,
        exp_year=card.exp_year,
        cvc=card.cvc,
        today=datetime.now(UTC).date(),
    )
    if problem is not None:
        raise InvalidRequestError(problem.code, problem.message, problem.param)
    return body


@router.post(
    "/{id}/transactions",
    response_model=TransactionOut,
    status_code=status.HTTP_200_OK,
    operation_id="payment-intents-transactions-create",
    responses=CHARGE_RESPONSES,
    summary="Charge a card on the PaymentIntent",
)
async def create_transaction(
    intent: OwnedPaymentIntentDep,
    body: Annotated[TransactionCreate, Depends(checked_charge)],
    session: SessionDep,
    state: StateDep,
    response: Response,
    idempotency_key: Annotated[str | None, idempotent(TransactionCreate, commit_claim=False)],
    temporal: TemporalDep,
) -> TransactionOut:
    """Waits (about 10 s at most) for the card network's first answer.

    The card is validated (Luhn, length, expiry, CVC) before anything is stored or sent; the
    number is then kept only encrypted in the vault, and the workflow sees a token and last4.
    """
    # After the claim: a retry of an answered charge replays its answer.
    if not can_start_charge(intent.status):
        settled = await settled_by_key(session, intent.id, "charge", idempotency_key)
        if settled is None:
            raise unexpected_state("charge", intent.status)
        # This key's own charge ran and settled, but its answer was never stored: the first
        # request answered 503 (Temporal had not confirmed the Update in time) and the Update
        # ran all the same. The retry gets that charge's outcome, not a 409 for the payment
        # it moved.
        response.status_code, answer = transaction_status_and_out(settled)
        return answer
    card = await _tokenize(await session.connection(), body, intent, state.vault)
    # The only transaction before the Update: the vault token (the workflow reads it) and the
    # Idempotency-Key's claim (`commit_claim=False`) commit together. Before the Update, which
    # can take the whole wait: a request with the same key meanwhile sees the claim and gets
    # 409 at once instead of waiting on its row lock.
    await session.commit()
    sent = await send_operation(
        temporal,
        session,
        intent,
        state.settings,
        PaymentIntentWorkflow.confirm_charge,
        ChargeInput(card_token_id=card.token_id, card=card.summary),
        verb="charge",
        idempotency_key=idempotency_key,
    )
    response.status_code, answer = transaction_answer(
        sent,
        not_recorded_yet=pending_transaction(
            sent.transaction_id,
            intent,
            TransactionType.CHARGE,
            intent.amount_in_cents,
            card=card.summary,
        ),
    )
    return answer


@dataclass(frozen=True, slots=True)
class VaultedCard:
    token_id: str
    summary: CardSummary  # what may travel beyond the vault


async def _tokenize(
    connection: AsyncConnection,
    body: TransactionCreate,
    intent: IntentSnapshot,
    cipher: VaultCipher,
) -> VaultedCard:
    """The card's number into the vault, encrypted and bound to a new token id."""
    token_id = new_id("card")
    number = body.card.number
    summary = CardSummary(
        brand=card_brand(number),
        last4=number[-4:],
        exp_month=body.card.exp_month,
        exp_year=body.card.exp_year,
    )
    await insert_card_token(
        connection,
        token_id=token_id,
        merchant_id=intent.merchant_id,
        pan_ciphertext=cipher.encrypt(number.encode(), context=token_id),
        brand=summary.brand,
        last4=summary.last4,
        exp_month=summary.exp_month,
        exp_year=summary.exp_year,
    )
    return VaultedCard(token_id, summary)
