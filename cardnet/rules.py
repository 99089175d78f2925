"""Rules for operations that act on an earlier operation: capture, void, refund and reversal."""

from __future__ import annotations

from cardnet.models import PRIMARY_TYPES, OperationType
from cardnet.records import Committed, Decision, Operation


def _approved(entries: list[Committed], type_: OperationType) -> list[Committed]:
    return [e for e in entries if e.op.type == type_ and e.decision.status == "approved"]


def decide_child(op: Operation, parent: Committed | None, siblings: list[Committed]) -> Decision:
    """Decide a capture/void/refund given its parent and the parent's other children.

    The caller must hold the ledger's write lock, so siblings cannot change underneath.
    """
    if op.type == OperationType.REVERSAL:
        return _decide_reversal(parent, siblings)
    if parent is None:
        return Decision.decline("parent_not_found")
    if _approved(siblings, OperationType.REVERSAL):
        return Decision.decline("already_reversed")
    if op.type == OperationType.CAPTURE:
        return _decide_capture(op, parent, siblings)
    if op.type == OperationType.VOID:
        return _decide_void(parent, siblings)
    if op.type == OperationType.REFUND:
        return _decide_refund(op, parent, siblings)
    raise ValueError(f"{op.type} is not a child operation")


def _is_approved_authorization(parent: Committed) -> bool:
    return parent.op.type == OperationType.AUTHORIZE and parent.decision.status == "approved"


def _decide_capture(op: Operation, parent: Committed, siblings: list[Committed]) -> Decision:
    if not _is_approved_authorization(parent):
        return Decision.decline("invalid_parent")
    if _approved(siblings, OperationType.VOID):
        return Decision.decline("authorization_voided")
    if _approved(siblings, OperationType.CAPTURE):
        return Decision.decline("already_captured")
    if op.currency != parent.op.currency:
        return Decision.decline("currency_mismatch")
    if op.amount_in_cents > parent.op.amount_in_cents:
        return Decision.decline("invalid_amount")
    return Decision.approve()


def _decide_void(parent: Committed, siblings: list[Committed]) -> Decision:
    if not _is_approved_authorization(parent):
        return Decision.decline("invalid_parent")
    if _approved(siblings, OperationType.CAPTURE):
        return Decision.decline("already_captured")
    if _approved(siblings, OperationType.VOID):
        return Decision.decline("already_voided")
    return Decision.approve()


def _decide_refund(op: Operation, parent: Committed, siblings: list[Committed]) -> Decision:
    refundable = parent.op.type in (OperationType.CHARGE, OperationType.CAPTURE)
    if not refundable or parent.decision.status != "approved":
        return Decision.decline("invalid_parent")
    if op.currency != parent.op.currency:
        return Decision.decline("currency_mismatch")
    refunded = sum(e.op.amount_in_cents for e in _approved(siblings, OperationType.REFUND))
    if refunded + op.amount_in_cents > parent.op.amount_in_cents:
        return Decision.decline("amount_exceeds_captured")
    return Decision.approve()


def _decide_reversal(parent: Committed | None, siblings: list[Committed]) -> Decision:
    """Approved: the original is voided, or (unknown or still held) can never be approved.
    Declined: it was declined anyway, or its money has moved on (captured, refunded, voided)."""
    if _approved(siblings, OperationType.REVERSAL):
        return Decision.decline("already_reversed")
    if parent is None:
        return Decision.approve()  # a tombstone: the original, arriving later, is declined
    if parent.op.type not in PRIMARY_TYPES:
        return Decision.decline("invalid_parent")
    if parent.decision.status != "approved":
        return Decision.decline("original_declined")
    if _approved(siblings, OperationType.CAPTURE):
        return Decision.decline("already_captured")
    if _approved(siblings, OperationType.REFUND):
        return Decision.decline("already_refunded")
    if _approved(siblings, OperationType.VOID):
        return Decision.decline("already_voided")
    return Decision.approve()
