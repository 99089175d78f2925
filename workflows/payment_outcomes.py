"""What a card network's answer proves, for PaymentIntentWorkflow: pure, no Temporal commands.

The rule of the whole payment core: only a proof that nothing happened may become `failed`;
everything else stays unknown until the network says what it decided.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.card_network import NetworkAnswer
    from core.domain import NetworkOutcome

from workflows.payment_messages import ReconcilePolicy

# Outcomes in which no money moved: a decline, or a failure before the network acted.
NOTHING_MOVED = frozenset({NetworkOutcome.DECLINED, NetworkOutcome.FAILED})


def believed(answer: NetworkAnswer, *, waited_seconds: float,
             policy: ReconcilePolicy) -> NetworkAnswer:
    """A status query's answer as the workflow may act on it. `not_found` means "never reached
    the network" only once the attempt is older than the network's status index can lag (and
    than it can hold a request); before that it is still unknown."""
    if answer.not_found and waited_seconds >= policy.not_found_safe_age_seconds:
        return NetworkAnswer(NetworkOutcome.FAILED)
    return answer


def same_outcome(a: NetworkOutcome, b: NetworkOutcome) -> bool:
    """Whether two known outcomes agree on the money: both moved it, or neither did."""
    return (a is NetworkOutcome.APPROVED) == (b is NetworkOutcome.APPROVED)
