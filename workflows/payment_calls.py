"""The activities PaymentIntentWorkflow calls, each with its timeout and retry and the reason.

Not a workflow: coroutines that run in the caller's workflow context, so each schedules exactly
one activity in the caller's history (as `webhook_fanout.py` starts children). Call them only
from workflow code; they read no state of their own, so the workflow decides the order.

Database records are **local activities**: they run in the worker inside the workflow task and
leave one marker in history instead of a scheduled/started/completed trio and a workflow task
of their own. The record-before-call guarantee holds: a record's commit happens before the
workflow task that schedules the network call completes (its marker and that command go to
Temporal together). A worker lost before the task completes replays the record, which finds
its own row and answers the same (every record is idempotent). Only calls to the card network
are regular activities, so their retries and timeouts are the server's, across worker deaths.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.card_network import (
        AuthorizeInput,
        CardNetworkActivities,
        NetworkAnswer,
        OperationRequest,
    )
    from activities.persistence import (
        ChargeAttempt,
        IntentCancellation,
        ManualReviewFlag,
        OperationAttempt,
        Outcome,
        OutcomeDiscrepancy,
        PaymentRecordActivities,
        PaymentSnapshot,
        Recorded,
        ReversalAttempt,
    )
    from core.domain import NetworkOutcome, TransactionType
    from core.errors import ErrorType

# Database writes must eventually land: retry patiently (Postgres restarts, failovers). A state
# the database will never accept is not retried: it would hold the payment's lock for ever
# (`refusals_are_final`: illegal moves, missing rows, rejected constraints and values). The
# transient case has no bound on purpose, unlike every activity that sends something (the
# network's NETWORK_RETRY, the webhook activities): a record sends nothing and is idempotent,
# and giving up would either drop the network's answer or leave it unknown whether an attempt
# was committed; each try is still bounded by DB_TIMEOUT.
DB_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    non_retryable_error_types=[ErrorType.RECORD_REFUSED, "IllegalTransition", "LookupError"],
)
# A refused connection or the network's own 503 means "not charged": a few retries with the same
# reference, then the attempt fails. Everything else that is not an answer is unknown.
NETWORK_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=4),
    maximum_attempts=4,
    non_retryable_error_types=[ErrorType.NETWORK_REJECTED_REQUEST, ErrorType.VAULT_TOKEN_MISSING],
)
# A status query that keeps failing counts as "still unknown": the reconciliation loop's own
# backoff and horizon then apply, so a long network outage still ends in a manual review.
STATUS_QUERY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=4,
)
# Errors after which the network provably did nothing with the reference (see
# `_answer_after_failure`).
PROVES_NOTHING_HAPPENED = frozenset(
    {ErrorType.NETWORK_UNAVAILABLE, ErrorType.NETWORK_REJECTED_REQUEST}
)
DB_TIMEOUT = timedelta(seconds=30)
# How a record that failed for good reaches the workflow: a local activity's failure arrives as
# the activity's own ApplicationError, not wrapped in an ActivityError as a regular one's.
RECORD_FAILURES = (ActivityError, ApplicationError)
# The adapter gives up at its own HTTP timeout (5 s) and answers "unknown"; this bound only
# catches a worker that died mid-call.
NETWORK_TIMEOUT = timedelta(seconds=20)


Argument = TypeVar("Argument")
Result = TypeVar("Result")


# ---- card network -----------------------------------------------------------------------------
async def authorize_card(request: AuthorizeInput) -> NetworkAnswer:
    try:
        return await workflow.execute_activity_method(
            CardNetworkActivities.authorize_card,
            request,
            start_to_close_timeout=NETWORK_TIMEOUT,
            retry_policy=NETWORK_RETRY,
        )
    except ActivityError as error:
        return _answer_after_failure(error, request.network_reference)


async def send_operation(kind: TransactionType, request: OperationRequest) -> NetworkAnswer:
    """Capture, void or refund at the network; `kind` picks the activity."""
    method = {
        TransactionType.CAPTURE: CardNetworkActivities.capture_charge,
        TransactionType.VOID: CardNetworkActivities.void_authorization,
        TransactionType.REFUND: CardNetworkActivities.refund_charge,
    }[kind]
    try:
        return await workflow.execute_activity_method(
            method, request, start_to_close_timeout=NETWORK_TIMEOUT, retry_policy=NETWORK_RETRY
        )
    except ActivityError as error:
        return _answer_after_failure(error, request.network_reference)


def _answer_after_failure(error: ActivityError, reference: str) -> NetworkAnswer:
    """What a network call that never produced an answer tells us, after its retries.

    Only a proof that nothing was done may become `failed`: every try refused before a byte
    was sent or answered by the network's own "unavailable, nothing charged" (the network is
    idempotent by reference, so the last try saw no commit), or a request the network documents
    as not processed. Anything else (timeouts exhausted, a worker lost mid-call, an unexpected
    exception, a missing vault token) may have reached the network: unknown, and reconciled.
    """
    if _error_type(error) in PROVES_NOTHING_HAPPENED:
        return NetworkAnswer(NetworkOutcome.FAILED)
    workflow.logger.warning(
        "network call for %s ended without an answer (%s): outcome unknown, reconciling",
        reference,
        error.cause or error,
    )
    return NetworkAnswer(NetworkOutcome.UNKNOWN)


async def query_charge_status(transaction_id: str) -> NetworkAnswer:
    try:
        return await workflow.execute_activity_method(
            CardNetworkActivities.query_charge_status,
            transaction_id,
            start_to_close_timeout=NETWORK_TIMEOUT,
            retry_policy=STATUS_QUERY_RETRY,
        )
    except ActivityError:
        return NetworkAnswer(NetworkOutcome.UNKNOWN, unanswered=True)


async def reverse_charge(request: OperationRequest) -> NetworkAnswer:
    """The reversal's own answer. A reversal that never produced one, even one that provably
    did nothing (503s), is unknown: the reconciliation loop asks about it, and sends it again
    under the same reference, on its next turn."""
    try:
        return await workflow.execute_activity_method(
            CardNetworkActivities.reverse_charge,
            request,
            start_to_close_timeout=NETWORK_TIMEOUT,
            retry_policy=NETWORK_RETRY,
        )
    except ActivityError as error:
        workflow.logger.warning(
            "reversal %s ended without an answer (%s): asked again later",
            request.network_reference,
            error.cause or error,
        )
        return NetworkAnswer(NetworkOutcome.UNKNOWN)


# ---- payment records (local activities) ----------------------------------------------------
async def load_payment(payment_intent_id: str) -> PaymentSnapshot:
    return await _record(PaymentRecordActivities.load_payment, payment_intent_id)


async def record_charge_attempt(attempt: ChargeAttempt) -> Recorded:
    return await _record_before_sending(PaymentRecordActivities.record_charge_attempt, attempt)


async def record_operation_attempt(attempt: OperationAttempt) -> Recorded:
    return await _record_before_sending(PaymentRecordActivities.record_operation_attempt, attempt)


async def cancel_payment_intent(cancellation: IntentCancellation) -> Recorded:
    return await _record_before_sending(PaymentRecordActivities.cancel_payment_intent, cancellation)


async def record_outcome(outcome: Outcome) -> Recorded:
    return await _record(PaymentRecordActivities.record_outcome, outcome)


async def flag_for_manual_review(flag: ManualReviewFlag) -> None:
    await _record(PaymentRecordActivities.flag_for_manual_review, flag)


async def record_outcome_discrepancy(found: OutcomeDiscrepancy) -> None:
    await _record(PaymentRecordActivities.record_outcome_discrepancy, found)


async def record_reversal_attempt(attempt: ReversalAttempt) -> None:
    """Before the reversal is sent; a refusal reaches the caller (RECORD_FAILURES)."""
    await _record(PaymentRecordActivities.record_reversal_attempt, attempt)


async def _record(
    method: Callable[[PaymentRecordActivities, Argument], Awaitable[Result]], argument: Argument
) -> Result:
    return await workflow.execute_local_activity_method(
        method, argument, start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY
    )


async def _record_before_sending(
    method: Callable[[PaymentRecordActivities, Argument], Awaitable[Result]], argument: Argument
) -> Result:
    """A record written before anything is sent. If the database refuses it (the last line of
    defence for money), the Update fails with the reason: nothing is pending, nothing was sent.
    A refused state change is the API's 409, an amount beyond what is allowed its 400."""
    try:
        return await _record(method, argument)
    except RECORD_FAILURES as error:
        kind = _error_type(error)
        if kind not in (ErrorType.AMOUNT_INVALID, ErrorType.ILLEGAL_TRANSITION):
            kind = ErrorType.ILLEGAL_TRANSITION
        raise ApplicationError(str(_cause(error)), type=kind, non_retryable=True) from None


def _cause(error: ActivityError | ApplicationError) -> BaseException | None:
    """The activity's own failure, wrapped (a regular activity) or not (a local one)."""
    return error.cause if isinstance(error, ActivityError) else error


def _error_type(error: ActivityError | ApplicationError) -> str | None:
    cause = _cause(error)
    return cause.type if isinstance(cause, ApplicationError) else None
