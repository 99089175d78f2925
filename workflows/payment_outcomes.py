"""What a card network's answer proves, for PaymentIntentWorkflow: pure, no Temporal commands.

The rule of the whole payment core: only a proof that nothing happened may become `failed`;
everything else stays unknown until the network says what it decided.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.card_network import NetworkAnswer
    from core.domain import NetworkOutcome, TransactionType

from workflows.payment_messages import ReconcilePolicy, UnknownOutcome

# Outcomes in which no money moved: a decline, or a failure before the network acted.
NOTHING_MOVED = frozenset({NetworkOutcome.DECLINED, NetworkOutcome.FAILED})


def believed(
    answer: NetworkAnswer, *, waited_seconds: float, policy: ReconcilePolicy
) -> NetworkAnswer:
    """A status query's answer as the workflow may act on it. `not_found` means "never reached
    the network" only once the attempt is older than the network's status index can lag (and
    than it can hold a request); before that it is still unknown."""
    if answer.not_found and waited_seconds >= policy.not_found_safe_age_seconds:
        return NetworkAnswer(NetworkOutcome.FAILED)
    return answer


def same_outcome(a: NetworkOutcome, b: NetworkOutcome) -> bool:
    """Whether two known outcomes agree on the money: both moved it, or neither did."""
    return (a is NetworkOutcome.APPROVED) == (b is NetworkOutcome.APPROVED)


# The failure code of a charge settled by its reversal: nothing was charged (docs/api.md).
CHARGE_REVERSED = "charge_reversed"
# A reversal's declines that prove the original was approved and its money moved on.
ORIGINAL_MOVED_MONEY = frozenset({"already_captured", "already_refunded"})
# ... and the one that proves it was declined.
ORIGINAL_DECLINED = "original_declined"


def reversal_due(
    unknown: UnknownOutcome, answer: NetworkAnswer, *, policy: ReconcilePolicy
) -> bool:
    """Whether to reverse a charge instead of asking about it again: the network keeps not
    finding it (or not answering) past the bound, and no operator has been asked yet."""
    if not policy.reversals or unknown.operation is not TransactionType.CHARGE:
        return False
    if unknown.in_manual_review or unknown.reversal_reference is not None:
        return False
    unanswered = unknown.unanswered_queries >= policy.reversal_after_unanswered_queries
    return (answer.not_found or unanswered) and (
        unknown.waited_seconds >= policy.reversal_after_seconds
    )


def reversal_proves(answer: NetworkAnswer) -> NetworkAnswer:
    """What a reversal's answer proves about its original. Approved: voided, or refused for
    ever (a tombstone, or stopped while held): no money moved. Declined because the original
    was declined: none moved either; because it was captured or refunded: it moved. Anything
    else (unknown, or a decline that proves neither) leaves the original unknown."""
    if answer.outcome is NetworkOutcome.APPROVED:
        return NetworkAnswer(NetworkOutcome.FAILED)
    if answer.outcome is NetworkOutcome.DECLINED and answer.decline_code == ORIGINAL_DECLINED:
        return NetworkAnswer(NetworkOutcome.FAILED)
    if answer.outcome is NetworkOutcome.DECLINED and answer.decline_code in ORIGINAL_MOVED_MONEY:
        return NetworkAnswer(NetworkOutcome.APPROVED)
    return NetworkAnswer(NetworkOutcome.UNKNOWN)


def reversal_reference_for(transaction_id: str) -> str:
    """The reversal's own network reference: one per charge, so every retry reuses it."""
    return f"{transaction_id}:reversal"
