"""The sweep's comparison: every discrepancy kind, the in-flight and stuck rules, the window
edges, the open-item triage (dedupe by reference and kind) and the CLI's parsing and report."""

from __future__ import annotations

import argparse
import io
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from cli import reconcile as reconcile_cli
from core.reconciliation import (
    DEFAULT_STUCK_AFTER_SECONDS,
    SWEEP_KINDS,
    Comparison,
    Discrepancy,
    DiscrepancyKind,
    LedgerEntry,
    OpenItem,
    OurTransaction,
    ReconciliationCounts,
    SweepTrigger,
    compare,
    triage,
)
from core.settings import Settings
from workflows.reconciliation import ReconciliationSweepResult

START = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
END = START + timedelta(hours=1)
INSIDE = START + timedelta(minutes=30)
# What the sweep activity passes: rows created at or before this are stuck (here: START).
STUCK_BEFORE = END - timedelta(seconds=DEFAULT_STUCK_AFTER_SECONDS)
OLD = STUCK_BEFORE - timedelta(minutes=1)


def ours(
    reference: str = "txn_1",
    status: str = "succeeded",
    *,
    amount: int = 2499,
    currency: str = "usd",
    created_at: datetime = INSIDE,
    in_manual_review: bool = False,
    type: str = "charge",
) -> OurTransaction:
    return OurTransaction(
        network_reference=reference,
        merchant_id="mer_1",
        payment_intent_id="pi_1",
        transaction_id=reference,
        type=type,
        status=status,
        amount_in_cents=amount,
        currency=currency,
        created_at=created_at,
        in_manual_review=in_manual_review,
    )


def entry(
    reference: str = "txn_1",
    status: str = "approved",
    *,
    amount: int = 2499,
    currency: str = "usd",
    created_at: datetime = INSIDE,
    type: str = "charge",
) -> LedgerEntry:
    return LedgerEntry(
        reference=reference,
        type=type,
        amount_in_cents=amount,
        currency=currency,
        status=status,
        created_at=created_at,
    )


def sweep(
    our_rows: list[OurTransaction], ledger: list[LedgerEntry], *, recheck: set[str] | None = None
) -> Comparison:
    """`compare` as the sweep activity calls it: the window [START, END], the default stuck age."""
    return compare(
        our_rows,
        ledger,
        window_start=START,
        window_end=END,
        stuck_before=STUCK_BEFORE,
        recheck=recheck or set(),
    )


def kinds(our_rows: list[OurTransaction], ledger: list[LedgerEntry]) -> list[str]:
    return [d.kind for d in sweep(our_rows, ledger).discrepancies]


def test_matching_approval_and_success_is_clean() -> None:
    result = sweep([ours()], [entry()])
    assert result.discrepancies == []
    assert (
        result.counts.transactions_checked,
        result.counts.ledger_entries_checked,
        result.counts.in_flight,
        result.counts.discrepancies,
    ) == (1, 1, 0, 0)


def test_matching_decline_and_failure_is_clean() -> None:
    assert kinds([ours(status="failed")], [entry(status="declined")]) == []


def test_failed_here_with_nothing_at_network_is_clean() -> None:
    # e.g. processing_error: every try answered 503 and nothing was committed.
    assert kinds([ours(status="failed")], []) == []


def test_unrecorded_decline_at_network_is_clean() -> None:
    assert kinds([], [entry(status="declined")]) == []


def test_approved_at_network_but_failed_here_is_reported() -> None:
    result = sweep([ours(status="failed")], [entry()])
    [found] = result.discrepancies
    assert found.kind == DiscrepancyKind.CHARGED_AT_NETWORK_NOT_SUCCEEDED_HERE
    assert (
        found.network_reference,
        found.payment_intent_id,
        found.transaction_id,
        found.merchant_id,
    ) == ("txn_1", "pi_1", "txn_1", "mer_1")
    assert (found.our_status, found.network_status) == ("failed", "approved")
    assert (found.our_amount_in_cents, found.network_amount_in_cents) == (2499, 2499)


def test_approved_at_network_and_unknown_here_is_reported() -> None:
    result = sweep([], [entry("ext_1", amount=500, currency="eur")])
    [found] = result.discrepancies
    assert found.kind == DiscrepancyKind.CHARGED_AT_NETWORK_NOT_SUCCEEDED_HERE
    assert (found.merchant_id, found.payment_intent_id, found.transaction_id) == (None,) * 3
    assert (found.our_status, found.our_amount_in_cents) == (None, None)
    assert (found.network_status, found.network_amount_in_cents, found.currency) == (
        "approved",
        500,
        "eur",
    )
    assert (result.counts.transactions_checked, result.counts.ledger_entries_checked) == (0, 1)


@pytest.mark.parametrize("status", ["pending", "timeout"])
def test_approved_at_network_while_in_manual_review_is_reported(status: str) -> None:
    assert kinds([ours(status=status, in_manual_review=True)], [entry()]) == [
        DiscrepancyKind.CHARGED_AT_NETWORK_NOT_SUCCEEDED_HERE
    ]


def test_manual_review_without_an_approval_is_in_flight_not_a_discrepancy() -> None:
    result = sweep([ours(status="timeout", in_manual_review=True)], [entry(status="declined")])
    assert (result.discrepancies, result.counts.in_flight) == ([], 1)


@pytest.mark.parametrize("ledger", [[], [entry(status="declined")]], ids=["absent", "declined"])
def test_succeeded_here_without_approval_at_network_is_reported(ledger: list[LedgerEntry]) -> None:
    result = sweep([ours()], ledger)
    [found] = result.discrepancies
    assert found.kind == DiscrepancyKind.SUCCEEDED_HERE_NOT_AT_NETWORK
    assert found.our_status == "succeeded"
    assert found.network_status == (ledger[0].status if ledger else None)


def test_different_amount_is_a_mismatch() -> None:
    result = sweep([ours(amount=2499)], [entry(amount=2500)])
    [found] = result.discrepancies
    assert found.kind == DiscrepancyKind.AMOUNT_MISMATCH
    assert (found.our_amount_in_cents, found.network_amount_in_cents) == (2499, 2500)


def test_different_currency_is_a_mismatch() -> None:
    result = sweep([ours(currency="usd")], [entry(currency="eur")])
    [found] = result.discrepancies
    assert found.kind == DiscrepancyKind.AMOUNT_MISMATCH
    assert (found.currency, found.network_currency) == ("usd", "eur")


def test_currency_case_is_not_a_mismatch() -> None:
    assert kinds([ours(currency="USD")], [entry(currency="usd")]) == []


def test_manual_capture_authorization_matches_our_charge() -> None:
    # Manual capture sends `authorize` under the charge transaction's reference.
    assert kinds([ours()], [replace(entry(), type="authorize")]) == []


def test_rows_outside_the_window_are_not_checked() -> None:
    before = START - timedelta(seconds=1)
    after = END + timedelta(seconds=1)
    result = sweep(
        [ours("txn_old", created_at=before), ours("txn_new", created_at=after)],
        [entry("ext_old", created_at=before), entry("ext_new", created_at=after)],
    )
    assert result.discrepancies == []
    assert result.counts.transactions_checked == result.counts.ledger_entries_checked == 0


def test_window_bounds_are_inclusive() -> None:
    assert kinds([ours("txn_a", created_at=START)], []) == [
        DiscrepancyKind.SUCCEEDED_HERE_NOT_AT_NETWORK
    ]
    assert kinds([], [entry("ext_b", created_at=END)]) == [
        DiscrepancyKind.CHARGED_AT_NETWORK_NOT_SUCCEEDED_HERE
    ]


def test_network_entry_just_after_the_window_still_matches() -> None:
    # Our row is written before the call; the network commits a moment later, past the end.
    result = sweep(
        [ours(created_at=END - timedelta(milliseconds=5))],
        [entry(created_at=END + timedelta(milliseconds=5))],
    )
    assert result.discrepancies == []
    assert (result.counts.transactions_checked, result.counts.ledger_entries_checked) == (1, 1)


def test_our_row_just_before_the_window_still_matches() -> None:
    result = sweep(
        [ours(created_at=START - timedelta(milliseconds=5))],
        [entry(created_at=START + timedelta(milliseconds=5))],
    )
    assert result.discrepancies == []
    assert result.counts.transactions_checked == 1


def test_discrepancies_are_ordered_by_kind_then_reference() -> None:
    result = sweep(
        [ours("txn_b"), ours("txn_a"), ours("txn_c", amount=1)], [entry("ext_z"), entry("txn_c")]
    )
    assert [(d.kind, d.network_reference) for d in result.discrepancies] == [
        (DiscrepancyKind.AMOUNT_MISMATCH, "txn_c"),
        (DiscrepancyKind.CHARGED_AT_NETWORK_NOT_SUCCEEDED_HERE, "ext_z"),
        (DiscrepancyKind.SUCCEEDED_HERE_NOT_AT_NETWORK, "txn_a"),
        (DiscrepancyKind.SUCCEEDED_HERE_NOT_AT_NETWORK, "txn_b"),
    ]
    assert result.counts.discrepancies == 4


def test_ledger_entry_is_parsed_from_the_simulator_json() -> None:
    parsed = LedgerEntry.from_json(
        {
            "reference": "txn_1",
            "type": "charge",
            "status": "approved",
            "declineCode": None,
            "amountInCents": 2499,
            "currency": "USD",
            "brand": "visa",
            "parentReference": None,
            "createdAt": "2026-11-25T12:30:00.123Z",
            "committedAt": "2026-11-25T12:30:00.200Z",
        }
    )
    assert parsed == LedgerEntry(
        "txn_1",
        "charge",
        2499,
        "usd",
        "approved",
        datetime(2026, 11, 25, 12, 30, 0, 123000, tzinfo=UTC),
    )


@pytest.mark.parametrize(
    ("ours_type", "ledger_type"),
    [
        ("charge", "charge"),
        ("charge", "authorize"),
        ("capture", "capture"),
        ("void", "void"),
        ("refund", "refund"),
    ],
)
def test_each_operation_matches_its_own_ledger_type(ours_type: str, ledger_type: str) -> None:
    assert kinds([ours(type=ours_type)], [entry(type=ledger_type)]) == []


def test_lifecycle_of_one_payment_reconciles_clean() -> None:
    # Authorize 2499, capture 2000 (the rest released), refund 500 then 1500.
    our_rows = [
        ours("txn_a", type="charge"),
        ours("txn_c", type="capture", amount=2000),
        ours("txn_r1", type="refund", amount=500),
        ours("txn_r2", type="refund", amount=1500),
    ]
    ledger = [
        entry("txn_a", type="authorize"),
        entry("txn_c", type="capture", amount=2000),
        entry("txn_r1", type="refund", amount=500),
        entry("txn_r2", type="refund", amount=1500),
    ]
    assert kinds(our_rows, ledger) == []


@pytest.mark.parametrize(
    ("ours_type", "ledger_type"),
    [("refund", "capture"), ("capture", "refund"), ("void", "refund"), ("charge", "refund")],
)
def test_one_reference_for_two_operations_is_reported(ours_type: str, ledger_type: str) -> None:
    assert kinds([ours(type=ours_type)], [entry(type=ledger_type)]) == ["operation_mismatch"]


def test_a_refund_succeeded_here_but_declined_at_the_network_is_reported() -> None:
    assert kinds(
        [ours(type="refund", amount=500)], [entry(type="refund", status="declined", amount=500)]
    ) == ["succeeded_here_not_at_network"]


# ---- stuck rows ------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["pending", "timeout"])
@pytest.mark.parametrize("network", ["approved", "declined", None])
def test_unknown_outcome_is_in_flight_until_the_stuck_age_then_reported(
    status: str, network: str | None
) -> None:
    # Younger than the stuck age, its workflow is still asking the network (which may have
    # answered a moment before the sweep read the ledger): not a discrepancy. A row that stays
    # pending/timeout past it is reported, even when the network has settled it.
    young = STUCK_BEFORE + timedelta(seconds=1)
    ledger = [entry(status=network, created_at=young)] if network else []
    in_flight = sweep([ours(status=status, created_at=young)], ledger)
    assert (in_flight.discrepancies, in_flight.counts.in_flight) == ([], 1)

    stale = sweep([ours(status=status, created_at=STUCK_BEFORE)], ledger)
    [found] = stale.discrepancies
    assert found.kind == DiscrepancyKind.STUCK_UNSETTLED
    assert (found.our_status, found.network_status) == (status, network)
    assert stale.counts.in_flight == 0


def test_stuck_age_bound_is_inclusive() -> None:
    assert kinds([ours(status="pending", created_at=STUCK_BEFORE)], []) == [
        DiscrepancyKind.STUCK_UNSETTLED
    ]


def test_stuck_row_older_than_the_window_is_still_reported() -> None:
    # The sweep's window is short, the row is days old: stuck rows are found whatever the window.
    ancient = START - timedelta(days=3)
    result = sweep([ours("txn_old", status="timeout", created_at=ancient)], [])
    assert [(d.kind, d.network_reference) for d in result.discrepancies] == [
        (DiscrepancyKind.STUCK_UNSETTLED, "txn_old")
    ]
    assert result.counts.transactions_checked == 1
    assert "txn_old" in result.checked_references


@pytest.mark.parametrize("status", ["succeeded", "failed"])
def test_settled_rows_are_never_stuck(status: str) -> None:
    network = "approved" if status == "succeeded" else "declined"
    assert (
        kinds([ours(status=status, created_at=OLD)], [entry(status=network, created_at=OLD)]) == []
    )


def test_settled_row_outside_the_window_is_not_checked() -> None:
    ancient = START - timedelta(days=3)
    result = sweep([ours("txn_old", status="succeeded", created_at=ancient)], [])
    assert result.discrepancies == [] and result.checked_references == frozenset()


def test_manual_review_with_an_approval_is_reported_as_a_charge_not_as_stuck() -> None:
    assert kinds(
        [ours(status="timeout", created_at=OLD, in_manual_review=True)], [entry(created_at=OLD)]
    ) == [DiscrepancyKind.CHARGED_AT_NETWORK_NOT_SUCCEEDED_HERE]


def test_manual_review_without_an_approval_past_the_stuck_age_is_stuck() -> None:
    assert kinds(
        [ours(status="timeout", created_at=OLD, in_manual_review=True)],
        [entry(status="declined", created_at=OLD)],
    ) == [DiscrepancyKind.STUCK_UNSETTLED]


def test_rechecked_reference_outside_the_window_is_checked() -> None:
    # An open stuck item whose row has settled since: checked again so the sweep can clear it.
    ancient = START - timedelta(days=3)
    result = sweep([ours("txn_old", status="failed", created_at=ancient)], [], recheck={"txn_old"})
    assert result.discrepancies == []
    assert result.checked_references == frozenset({"txn_old"})
    assert result.counts.transactions_checked == 1


def test_stuck_default_matches_the_setting_default() -> None:
    field = Settings.model_fields["reconcile_stuck_after_seconds"]
    assert field.default == DEFAULT_STUCK_AFTER_SECONDS == 3600


# ---- open items: one per (reference, kind) -----------------------------------------------------
def found(reference: str, kind: DiscrepancyKind) -> Discrepancy:
    return Discrepancy(kind=kind.value, network_reference=reference)


def comparison(*discrepancies: Discrepancy, checked: set[str] | None = None) -> Comparison:
    references = {d.network_reference for d in discrepancies} if checked is None else checked
    return Comparison(
        ReconciliationCounts(discrepancies=len(discrepancies)),
        list(discrepancies),
        frozenset(references),
    )


STUCK = DiscrepancyKind.STUCK_UNSETTLED
MISMATCH = DiscrepancyKind.AMOUNT_MISMATCH
CONTRADICTS = DiscrepancyKind.NETWORK_CONTRADICTS_RECORDED_OUTCOME


def test_dedupe_key_is_reference_and_kind() -> None:
    assert found("txn_1", STUCK).key == ("txn_1", "stuck_unsettled")
    assert OpenItem("rcd_1", "txn_1", "stuck_unsettled").key == found("txn_1", STUCK).key
    assert found("txn_1", STUCK).key != found("txn_1", MISMATCH).key


def test_a_new_problem_is_opened() -> None:
    plan = triage(comparison(found("txn_1", STUCK)), [])
    assert [d.key for d in plan.to_open] == [("txn_1", "stuck_unsettled")]
    assert (plan.still_open, plan.to_clear) == ([], [])


def test_a_problem_already_open_is_seen_again_not_reopened() -> None:
    problem = found("txn_1", STUCK)
    plan = triage(comparison(problem), [OpenItem("rcd_1", "txn_1", STUCK.value)])
    assert plan.to_open == []
    assert plan.still_open == [(problem, "rcd_1")]
    assert plan.to_clear == []


def test_same_reference_with_another_kind_opens_a_new_item_and_clears_the_old() -> None:
    old = OpenItem("rcd_1", "txn_1", STUCK.value)
    plan = triage(comparison(found("txn_1", MISMATCH)), [old])
    assert [d.key for d in plan.to_open] == [("txn_1", "amount_mismatch")]
    assert plan.to_clear == [old]


def test_an_open_item_checked_and_not_found_is_cleared() -> None:
    gone = OpenItem("rcd_1", "txn_1", STUCK.value)
    plan = triage(comparison(checked={"txn_1"}), [gone])
    assert plan.to_clear == [gone]


def test_an_open_item_the_sweep_did_not_check_stays_open() -> None:
    # e.g. a mismatch from last week, outside today's window: not judged, not cleared.
    plan = triage(comparison(checked={"txn_other"}), [OpenItem("rcd_1", "txn_1", MISMATCH.value)])
    assert plan.to_clear == []


def test_items_the_sweep_does_not_find_are_never_cleared_by_it() -> None:
    contradiction = OpenItem("rcd_1", "txn_1", CONTRADICTS.value)
    plan = triage(comparison(checked={"txn_1"}), [contradiction])
    assert plan.to_clear == []
    assert CONTRADICTS not in SWEEP_KINDS and STUCK in SWEEP_KINDS


# ---- the CLI: parsing and the report -----------------------------------------------------------
def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="durapay")
    reconcile_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(list(argv))


def test_reconcile_without_a_subcommand_is_a_sweep() -> None:
    args = parse("reconcile", "--window-seconds", "900")
    assert (args.reconcile_command, args.window_seconds) == (None, 900)


def test_reconcile_list_and_resolve_parse() -> None:
    assert parse("reconcile", "list").reconcile_command == "list"
    args = parse("reconcile", "resolve", "rcd_1", "--note", "refunded by hand")
    assert (args.reconcile_command, args.discrepancy_id, args.note) == (
        "resolve",
        "rcd_1",
        "refunded by hand",
    )


def test_reconcile_resolve_requires_a_note() -> None:
    with pytest.raises(SystemExit):
        parse("reconcile", "resolve", "rcd_1")


def test_report_tells_new_items_from_still_open_ones() -> None:
    new = replace(
        found("txn_new", STUCK),
        discrepancy_id="rcd_new",
        newly_opened=True,
        our_status="pending",
        our_amount_in_cents=2499,
        currency="usd",
    )
    still = replace(found("txn_old", MISMATCH), discrepancy_id="rcd_old")
    counts = ReconciliationCounts(
        transactions_checked=2, discrepancies=2, newly_opened=1, still_open=1, cleared=3
    )
    out = io.StringIO()
    reconcile_cli.print_report(
        ReconciliationSweepResult("recon_1", SweepTrigger.MANUAL, START, END, counts, [new, still]),
        out,
    )
    lines = out.getvalue().splitlines()
    assert "2 discrepancies (1 newly opened, 1 still open); 3 cleared" in lines[1]
    [new_line] = [line for line in lines if "txn_new" in line]
    assert new_line.split()[:4] == ["rcd_new", "new", "stuck_unsettled", "txn_new"]
    assert "pending 2499 usd" in new_line
    [still_line] = [line for line in lines if "txn_old" in line]
    assert still_line.split()[:3] == ["rcd_old", "open", "amount_mismatch"]
    assert "durapay reconcile resolve" in lines[-1]


def test_a_charge_its_reversal_voided_is_net_zero() -> None:
    reversed_charge = replace(ours(status="failed"), reversal_reference="txn_1:reversal")
    reversal = LedgerEntry(
        reference="txn_1:reversal",
        type="void",
        amount_in_cents=2499,
        currency="usd",
        status="approved",
        created_at=INSIDE,
        parent_reference="txn_1",
    )
    assert kinds([reversed_charge], [entry(), reversal]) == []
    # A tombstone: the charge never reached the network, or arrived later and was declined.
    assert kinds([reversed_charge], [reversal]) == []
    assert kinds([reversed_charge], [reversal, entry(status="declined")]) == []
    # Succeeded here although reversed there: no money moved.
    assert kinds([replace(reversed_charge, status="succeeded")], [entry(), reversal]) == [
        DiscrepancyKind.SUCCEEDED_HERE_NOT_AT_NETWORK
    ]
    # A reversal the network refused voided nothing: the approval stands.
    assert kinds([reversed_charge], [entry(), replace(reversal, status="declined")]) == [
        DiscrepancyKind.CHARGED_AT_NETWORK_NOT_SUCCEEDED_HERE
    ]
    # A void under a reference that is no reversal of ours is money we do not know of.
    assert kinds([ours(status="failed")], [entry(), reversal]) == [
        DiscrepancyKind.CHARGED_AT_NETWORK_NOT_SUCCEEDED_HERE,
        DiscrepancyKind.CHARGED_AT_NETWORK_NOT_SUCCEEDED_HERE,
    ]
