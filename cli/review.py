"""`durapay review`: the payments whose outcome outlived the reconciliation horizon.

    durapay review list                          open reviews, oldest first (exit 2 if any)
    durapay review resolve PI --outcome approved|failed --note TEXT

While a review is open the intent stays `processing` and its workflow keeps asking the network
(every DURAPAY_RECONCILE_MAX_DELAY_SECONDS); the network's answer closes the review by itself.
`resolve` is for when the network will never answer: the operator has confirmed out of band
whether the card was charged, and the workflow records that verdict (`failureCode:
manual_review` on a failed transaction). The workflow asks the network once more first: if it
answers, its answer is recorded and a verdict that contradicts it is refused; a later answer
that contradicts a recorded verdict opens a reconciliation discrepancy
(`durapay reconcile list`). Reviews are also opened for an outcome the database refused to
record and for an expired authorization the network would not void (void or capture it through
the API). In the Temporal Web UI the same payments match
`DurapayManualReview = true`.
"""

from __future__ import annotations

import argparse
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlmodel import col
from temporalio.client import WorkflowUpdateFailedError
from temporalio.service import RPCError, RPCStatusCode

from core.db.session import create_engine, session_factory
from core.db.tables import PaymentIntent, Transaction
from core.domain import NetworkOutcome, rfc3339
from core.errors import ErrorType
from core.reconciliation import UNKNOWN_STATUSES
from core.settings import Settings
from core.temporal_client import connect_temporal
from workflows.payment_intent import PaymentIntentResult, PaymentIntentWorkflow
from workflows.payment_messages import ManualReviewResolution, addressed

OUTCOMES = {"approved": NetworkOutcome.APPROVED, "failed": NetworkOutcome.FAILED}


def add_parser(commands: Any) -> None:
    review = commands.add_parser("review", help="operator: payments waiting for manual review")
    review_commands = review.add_subparsers(dest="review_command", required=True)
    review_commands.add_parser("list", help="open manual reviews, oldest first")
    resolve = review_commands.add_parser("resolve", help="record the network's verdict")
    resolve.add_argument("payment_intent_id")
    resolve.add_argument(
        "--outcome",
        choices=sorted(OUTCOMES),
        required=True,
        help="approved: the network charged the card; failed: it did not",
    )
    resolve.add_argument("--note", required=True, help="how the verdict was confirmed")


async def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.review_command == "list":
        return await list_reviews(settings)
    return await resolve_review(settings, args.payment_intent_id, OUTCOMES[args.outcome], args.note)


async def open_reviews(settings: Settings) -> list[dict[str, Any]]:
    """Intents with an open review, each with the transaction to look at: the one whose outcome
    is unknown (or could not be recorded), else the newest (e.g. an expiry void the network
    kept declining)."""
    engine = create_engine(settings.effective_database_url, pool_size=1)
    try:
        async with session_factory(engine)() as session:
            intents = (
                (
                    await session.execute(
                        select(PaymentIntent)
                        .where(
                            col(PaymentIntent.manual_review_since).isnot(None),
                            col(PaymentIntent.manual_review_resolved_at).is_(None),
                        )
                        .order_by(col(PaymentIntent.manual_review_since))
                    )
                )
                .scalars()
                .all()
            )
            transactions = (
                (
                    await session.execute(
                        select(Transaction)
                        .where(col(Transaction.payment_intent_id).in_([i.id for i in intents]))
                        .order_by(col(Transaction.created_at), col(Transaction.id))
                    )
                )
                .scalars()
                .all()
            )
    finally:
        await engine.dispose()
    reviews = []
    for intent in intents:
        own = [t for t in transactions if t.payment_intent_id == intent.id]
        unsettled = [t for t in own if t.status in UNKNOWN_STATUSES]
        txn = (unsettled or own or [None])[-1]
        reviews.append(
            {
                "paymentIntentId": intent.id,
                "merchantId": intent.merchant_id,
                "amountInCents": txn.amount_in_cents if txn else intent.amount_in_cents,
                "currency": intent.currency,
                "transactionId": txn.id if txn else None,
                "transactionStatus": txn.status if txn else None,
                "networkReference": txn.network_reference if txn else "-",
                "since": intent.manual_review_since,
            }
        )
    return reviews


async def list_reviews(settings: Settings) -> int:
    reviews = await open_reviews(settings)
    if not reviews:
        print("no open manual reviews")
        return 0
    now = datetime.now(UTC)
    print(
        f"{'payment intent':<28} {'merchant':<28} {'amount':>12} {'network reference':<30} open for"
    )
    for review in reviews:
        hours = (now - review["since"]).total_seconds() / 3600
        amount = f"{review['amountInCents']} {review['currency']}"
        print(
            f"{review['paymentIntentId']:<28} {review['merchantId']:<28} {amount:>12} "
            f"{review['networkReference']:<30} {hours:.1f} h (since "
            f"{rfc3339(review['since'])})"
        )
    print(
        f"{len(reviews)} open; resolve with: durapay review resolve PI --outcome "
        "approved|failed --note '…'"
    )
    return 2  # like `durapay reconcile`: non-zero so a cron job or alert can notice


async def resolve_review(
    settings: Settings, payment_intent_id: str, outcome: NetworkOutcome, note: str
) -> int:
    client = await connect_temporal(settings)
    # get_workflow_handle_for() takes the result type from `run`, but mypy infers nothing from
    # temporalio's union of two generic protocols there; the same handle, its type named.
    handle = client.get_workflow_handle(payment_intent_id, result_type=PaymentIntentResult)
    try:
        update_id = f"review:{uuid.uuid4().hex}"
        status = await handle.execute_update(
            PaymentIntentWorkflow.resolve_manual_review,
            addressed(
                ManualReviewResolution(outcome, note),
                PaymentIntentWorkflow.resolve_manual_review,
                payment_intent_id=payment_intent_id,
                update_id=update_id,
            ),
            id=update_id,
        )
    except WorkflowUpdateFailedError as error:
        print(f"durapay review: refused: {error.cause}")
        return 1
    except RPCError as error:
        if error.status is not RPCStatusCode.NOT_FOUND:
            raise
        # No open run: the payment is at rest (its runs end once nothing is left to watch) or
        # was never operated on. Either way nothing waits for a verdict.
        print(
            f"durapay review: refused: {ErrorType.ILLEGAL_TRANSITION}: this payment is not "
            "waiting for a manual review"
        )
        return 1
    print(f"{payment_intent_id}: review resolved as {outcome.value}; payment is now {status}")
    return 0
