"""The PaymentIntentWorkflow's messages and the state it carries across continue-as-new.

Plain dataclasses, JSON on the wire (no type names), so their field names, order and defaults
are part of every saved history: add fields with defaults at the end, never rename.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from temporalio import workflow

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

with workflow.unsafe.imports_passed_through():
    from core.domain import (
        CancellationReason,
        CaptureMethod,
        CardSummary,
        IntentStatus,
        NetworkOutcome,
        RecordedTransaction,
        TransactionType,
    )
    from core.webhooks import WebhookSchedule


# ---- policies (part of PaymentIntentInput) ----------------------------------------------------
@dataclass
class ReconcilePolicy:
    """Status queries after 2 s, 4 s, 8 s … capped; past the horizon a person must look."""

    first_delay_seconds: float = 2.0
    max_delay_seconds: float = 300.0
    horizon_seconds: float = 86_400.0
    # A status query's `not_found` is believed ("never reached the network": failed) only once
    # the attempt is this old; before, the network's status index may simply lag. It must
    # exceed the network's longest hold plus its status lag.
    not_found_safe_age_seconds: float = 900.0
    # The network takes reversals (cardnet does): a charge it keeps not finding is reversed by
    # reference instead, once the attempt is this old (more than the network's status lag plus
    # its holds) or its status queries went unanswered this many times in a row.
    reversals: bool = True
    reversal_after_seconds: float = 60.0
    reversal_after_unanswered_queries: int = 10


@dataclass
class LifecyclePolicy:
    """How long an authorization may wait for its capture, and a payment for its refunds."""

    authorization_expiry_seconds: float = 604_800.0  # 7 days
    refund_window_seconds: float = 15_552_000.0  # 180 days


# ---- carried across continue-as-new -------------------------------------------------------------
@dataclass
class UnknownOutcome:
    """An operation whose outcome the network has not told us yet; carried across
    continue-as-new."""

    transaction_id: str
    waited_seconds: float = 0.0
    next_delay_seconds: float = 0.0  # 0: the policy's first delay
    in_manual_review: bool = False
    operation: TransactionType = TransactionType.CHARGE
    amount_in_cents: int = 0
    cancellation_reason: str | None = None  # of a void
    # How it was settled (by the network or an operator): a late answer that contradicts it
    # is a discrepancy for operators.
    settled_as: NetworkOutcome | None = None
    # The reversal sent for it (recorded first): from then on only its answer settles it.
    reversal_reference: str | None = None
    # Status queries in a row that got no answer at all.
    unanswered_queries: int = 0


@dataclass
class Money:
    """What the network holds for this payment, as the workflow learned it from its answers."""

    authorization_reference: str | None = None  # the approved authorize/charge
    payment_reference: str | None = None  # the approved charge/capture that refunds act on
    amount_capturable: int = 0
    amount_received: int = 0
    amount_refunded: int = 0
    authorization_expires_at: float | None = None  # unix seconds (workflow time)
    refund_window_ends_at: float | None = None
    # Expiry voids the network declined or failed in a row; past a bound, an operator decides.
    expiry_void_failures: int = 0


@dataclass
class CarriedState:
    status: IntentStatus
    unknown: UnknownOutcome | None = None
    money: Money | None = None
    # A manual review is open (search attribute DurapayManualReview is true).
    review_open: bool = False
    # Webhook deliveries planned but not started when the run continued as new (an operation
    # that finished while the run waited for its handlers): the next run starts them.
    deliveries: list[str] = field(default_factory=list)


# ---- updates -------------------------------------------------------------------------------------
@dataclass
class Address:
    """Where an operation's input was issued to: this payment, this Update name, this Update
    id. The API writes it (`api/payment_workflow.py`) and the workflow's validators refuse any
    other, so an input copied out of a history (it is encrypted, so it cannot be altered)
    cannot be sent again as another Update, under another id, or to another payment."""

    payment_intent_id: str
    update_name: str
    update_id: str


Addressable = TypeVar("Addressable", bound="DataclassInstance")


def addressed(
    argument: Addressable, update: Callable[..., Any], *, payment_intent_id: str, update_id: str
) -> Addressable:
    """`argument` (an operation's input) addressed to `update` of this payment, sent under
    `update_id`: what every sender (the API, `durapay review`) passes."""
    address = Address(payment_intent_id, update.__name__, update_id)
    return dataclasses.replace(argument, address=address)


@dataclass
class ChargeInput:
    card_token_id: str
    card: CardSummary
    address: Address | None = None


class TransactionShortcuts:
    """Read-only shortcuts to a result's transaction (properties, not fields: nothing changes
    on the wire)."""

    transaction: RecordedTransaction | None

    @property
    def transaction_id(self) -> str | None:
        return self.transaction.id if self.transaction is not None else None

    @property
    def transaction_status(self) -> str | None:
        return self.transaction.status if self.transaction is not None else None

    @property
    def decline_code(self) -> str | None:
        return self.transaction.decline_code if self.transaction is not None else None


@dataclass
class ChargeResult(TransactionShortcuts):
    """The charge as recorded: the API answers with it without reading it again."""

    intent_status: IntentStatus
    transaction: RecordedTransaction


@dataclass
class CaptureInput:
    amount_in_cents: int | None = None  # None: everything authorized
    address: Address | None = None


@dataclass
class CancelInput:
    reason: str = CancellationReason.REQUESTED_BY_CUSTOMER.value
    address: Address | None = None


@dataclass
class RefundInput:
    amount_in_cents: int | None = None  # None: everything not refunded yet
    address: Address | None = None


@dataclass
class OperationResult(TransactionShortcuts):
    """The answer to a capture, cancel or refund; no transaction for a cancel without a void."""

    intent_status: IntentStatus
    transaction: RecordedTransaction | None = None


@dataclass
class ManualReviewResolution:
    """An operator's verdict after checking with the network out of band."""

    outcome: NetworkOutcome  # APPROVED (the network charged) or FAILED (it did not)
    note: str
    address: Address | None = None


# ---- the workflow's input and result -----------------------------------------------------------
@dataclass
class PaymentIntentInput:
    payment_intent_id: str
    merchant_id: str
    amount_in_cents: int
    currency: str
    capture_method: CaptureMethod
    reconcile: ReconcilePolicy = field(default_factory=ReconcilePolicy)
    lifecycle: LifecyclePolicy = field(default_factory=LifecyclePolicy)
    webhooks: WebhookSchedule = field(default_factory=WebhookSchedule)
    # Past this many history events the run continues as new, carrying its state, so a payment
    # reconciled for days never grows an unbounded history.
    max_history_events: int = 10_000
    carried: CarriedState | None = None


@dataclass
class PaymentIntentResult:
    status: IntentStatus
