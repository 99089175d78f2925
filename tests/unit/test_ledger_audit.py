"""The chaos run's verdict (tests/ledger_audit.py) on hand-made rows and ledgers: a run in
agreement counts 0 everywhere, and each kind of disagreement moves its own count."""

from __future__ import annotations

from typing import Any

from tests.ledger_audit import (
    audit_verify_findings,
    child_operation_findings,
    compare,
    event_stream_findings,
    webhook_findings,
)

INTENT = {
    "id": "pi_1",
    "status": "partially_refunded",
    "capture_method": "automatic",
    "amount_in_cents": 1000,
    "amount_received": 1000,
    "amount_refunded": 300,
}


def _txn(
    txn_id: str, kind: str, amount: int, parent: str | None = None, status: str = "succeeded"
) -> dict[str, Any]:
    return {
        "id": txn_id,
        "payment_intent_id": "pi_1",
        "type": kind,
        "amount_in_cents": amount,
        "status": status,
        "network_reference": txn_id,
        "reconciled": False,
        "card_last4": None,
        "parent_reference": parent,
    }


def _entry(
    reference: str, kind: str, amount: int, parent: str | None = None, status: str = "approved"
) -> dict[str, Any]:
    return {
        "reference": reference,
        "type": kind,
        "status": status,
        "amountInCents": amount,
        "parentReference": parent,
    }


CHARGE = _txn("txn_charge", "charge", 1000)
REFUND = _txn("txn_refund", "refund", 300, parent="txn_charge")
LEDGER = [_entry("txn_charge", "charge", 1000), _entry("txn_refund", "refund", 300, "txn_charge")]


def test_a_run_in_agreement_counts_nothing() -> None:
    audit = compare([INTENT], [CHARGE, REFUND], LEDGER)
    assert audit.counts["orphan_captures_and_refunds"] == 0
    assert audit.counts["duplicate_refunds"] == 0
    assert set(audit.counts.values()) == {0}


def test_a_refund_under_a_reference_we_do_not_hold_is_an_orphan() -> None:
    ledger = [*LEDGER, _entry("txn_unknown", "refund", 100, "txn_charge")]
    found = child_operation_findings([CHARGE, REFUND], ledger)
    assert found["orphan_captures_and_refunds"] == [
        "refund txn_unknown (approved) of parent txn_charge is no transaction of ours"
    ]


def test_a_capture_naming_another_parent_than_ours_is_an_orphan() -> None:
    authorize = _txn("txn_auth", "authorize", 1000)
    capture = _txn("txn_capture", "capture", 1000, parent="txn_auth")
    ledger = [
        _entry("txn_auth", "authorize", 1000),
        _entry("txn_capture", "capture", 1000, "txn_other"),
    ]
    found = child_operation_findings([authorize, capture], ledger)
    assert len(found["orphan_captures_and_refunds"]) == 1
    assert "names parent txn_other there, txn_auth here" in found["orphan_captures_and_refunds"][0]


def test_one_refund_approved_twice_is_a_duplicate() -> None:
    ledger = [*LEDGER, _entry("txn_refund", "refund", 300, "txn_charge")]
    found = child_operation_findings([CHARGE, REFUND], ledger)["duplicate_refunds"]
    assert "refund txn_refund approved 2 times at the network" in found


def test_refunds_at_the_network_beyond_what_we_recorded_are_duplicates() -> None:
    failed_here = _txn("txn_refund", "refund", 300, parent="txn_charge", status="failed")
    found = child_operation_findings([CHARGE, failed_here], LEDGER)["duplicate_refunds"]
    assert found == ["txn_charge: 300 refunded at the network, 0 recorded"]


def test_a_declined_refund_at_the_network_is_no_duplicate() -> None:
    ledger = [*LEDGER, _entry("txn_refund_2", "refund", 900, "txn_charge", status="declined")]
    declined = _txn("txn_refund_2", "refund", 900, parent="txn_charge", status="failed")
    found = child_operation_findings([CHARGE, REFUND, declined], ledger)
    assert found == {"orphan_captures_and_refunds": [], "duplicate_refunds": []}


def test_every_event_delivered_once_counts_nothing() -> None:
    found = webhook_findings(
        ["evt_1", "evt_2"],
        [("evt_1", "succeeded"), ("evt_2", "succeeded")],
        ["evt_1", "evt_2", "evt_2"],
    )  # evt_2's send retried: one message
    assert found == {"undelivered_webhooks": [], "duplicate_webhook_deliveries": []}


def test_an_event_never_received_is_undelivered() -> None:
    found = webhook_findings(
        ["evt_1", "evt_2"], [("evt_1", "succeeded"), ("evt_2", "pending")], ["evt_1"]
    )
    assert found["undelivered_webhooks"] == ["evt_2 not received, its delivery not succeeded"]


def test_an_event_planned_twice_or_received_unknown_is_a_duplicate_delivery() -> None:
    found = webhook_findings(
        ["evt_1"], [("evt_1", "succeeded"), ("evt_1", "succeeded")], ["evt_1", "evt_9"]
    )
    assert found["duplicate_webhook_deliveries"] == [
        "evt_1 planned 2 times",
        "evt_9 received, no event of ours",
    ]


def test_every_event_on_the_stream_counts_nothing_even_twice() -> None:
    assert event_stream_findings(["evt_1", "evt_2"], ["evt_1", "evt_2", "evt_2"]) == {
        "events_missing_from_stream": []
    }


def test_an_event_row_missing_from_the_stream_is_counted() -> None:
    found = event_stream_findings(["evt_1", "evt_2"], ["evt_1", "evt_3"])
    assert found["events_missing_from_stream"] == ["evt_2", "evt_3 streamed, no event row"]


def test_a_failed_audit_verify_is_counted_with_its_last_lines() -> None:
    assert audit_verify_findings(0, "ok") == {"audit_verify_failures": []}
    assert audit_verify_findings(1, "a\nb\nchain pi_1 broken at seq 3\n") == {
        "audit_verify_failures": ["exit 1: a | b | chain pi_1 broken at seq 3"]
    }
