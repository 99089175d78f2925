"""Our database against the card network's ledger, reference by reference (our transaction id
is the network reference): the verdict of the chaos run (tests/integration/test_chaos.py) and
of `make bench`'s burst step (bench/burst.py), which both start a stack of their own.

Every count in `Audit.counts` must be 0; `Audit.findings` says, under the same name, which
intents or references made it move.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx

# Ledger entry types that move the customer's money to the merchant, and the one that moves
# it back; an approved authorize only holds it.
RECEIVED_TYPES = frozenset({"charge", "capture"})
PAYMENT_TYPES = frozenset({"charge", "authorize"})
UNSETTLED_TRANSACTION_STATUSES = ("pending", "timeout")


@dataclass
class Audit:
    counts: dict[str, int]
    findings: dict[str, list[str]] = field(default_factory=dict)
    intent_statuses: Counter[str] = field(default_factory=Counter)
    transaction_statuses: Counter[str] = field(default_factory=Counter)
    reconciled: int = 0
    ledger_entries: int = 0


async def count_unsettled(pool: asyncpg.Pool) -> tuple[int, int]:
    """(intents `processing`, transactions `pending`/`timeout`)."""
    row = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM payment_intent WHERE status = 'processing') AS intents, "
        '(SELECT count(*) FROM "transaction" WHERE status = ANY($1::text[])) AS transactions',
        list(UNSETTLED_TRANSACTION_STATUSES),
    )
    assert row is not None
    return int(row["intents"]), int(row["transactions"])


async def read_ledger(cardnet: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await cardnet.get("/ledger")
    assert response.status_code == 200, response.text
    entries: list[dict[str, Any]] = response.json()["data"]
    return entries


async def audit_against_ledger(pool: asyncpg.Pool, cardnet: httpx.AsyncClient) -> Audit:
    intents = await pool.fetch(
        "SELECT id, status, capture_method, amount_in_cents, amount_received, amount_refunded "
        "FROM payment_intent"
    )
    transactions = await pool.fetch(
        "SELECT id, payment_intent_id, type, amount_in_cents, status, network_reference, "
        'reconciled, card_last4, reversal_reference, parent_reference FROM "transaction"'
    )
    return compare(intents, transactions, await read_ledger(cardnet))


def compare(
    intents: Iterable[asyncpg.Record | dict[str, Any]],
    transactions: Iterable[asyncpg.Record | dict[str, Any]],
    ledger: list[dict[str, Any]],
) -> Audit:
    intents = list(intents)
    transactions = list(transactions)
    ledger = _net_of_reversals(ledger, {t.get("reversal_reference") for t in transactions})
    by_reference = {t["network_reference"]: t for t in transactions}
    entries: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in ledger:
        entries[entry["reference"]].append(entry)
    txns_of: dict[str, list[Any]] = defaultdict(list)
    for txn in transactions:
        txns_of[txn["payment_intent_id"]].append(txn)

    audit = Audit(
        counts={},
        ledger_entries=len(ledger),
        intent_statuses=Counter(i["status"] for i in intents),
        transaction_statuses=Counter(f"{t['type']} {t['status']}" for t in transactions),
        reconciled=sum(1 for t in transactions if t["reconciled"]),
    )
    f = audit.findings
    f["double_charges"] = _double_charges(intents, txns_of, entries)
    f["lost_successes"] = _lost_successes(by_reference, entries)
    f["phantom_successes"] = _phantom_successes(transactions, entries)
    f["stuck"] = _stuck(intents, transactions)
    f["amount_mismatches"] = _amount_mismatches(intents, txns_of, entries)
    f["unknown_network_operations"] = _unknown_operations(by_reference, entries)
    f["status_mismatches"] = _status_mismatches(intents, txns_of, entries)
    f.update(child_operation_findings(transactions, ledger))
    audit.counts = {name: len(found) for name, found in f.items()}
    return audit


def _net_of_reversals(ledger: list[dict[str, Any]], ours: set[str | None]) -> list[dict[str, Any]]:
    """The ledger without our reversals (recorded on their charge's row) and without the
    approvals they voided: a reversed charge is net zero (approved + void), nothing moved."""
    voided = {
        e["parentReference"] for e in ledger if e["reference"] in ours and e["status"] == "approved"
    }
    return [
        e
        for e in ledger
        if e["reference"] not in ours
        and not (e["reference"] in voided and e["status"] == "approved")
    ]


def _approved(entries: list[dict[str, Any]], types: frozenset[str] | None = None) -> list[Any]:
    return [
        e for e in entries if e["status"] == "approved" and (types is None or e["type"] in types)
    ]


def _card(txn: Any) -> str:
    return f" (card …{txn['card_last4']})" if txn["card_last4"] else ""


def _reconciled(txn: Any) -> str:
    return " by reconciliation" if txn["reconciled"] else ""


def _double_charges(
    intents: list[Any], txns_of: dict[str, list[Any]], entries: dict[str, list[dict[str, Any]]]
) -> list[str]:
    """An intent paid more than once, or one reference the network committed twice."""
    found = []
    for intent in intents:
        paid = [
            f"{t['id']}{_card(t)}"
            for t in txns_of[intent["id"]]
            if _approved(entries[t["network_reference"]], PAYMENT_TYPES)
        ]
        if len(paid) > 1:
            found.append(f"{intent['id']} paid by {', '.join(paid)}")
    found.extend(
        f"reference {reference} committed {len(committed)} times"
        for reference, committed in entries.items()
        if len(committed) > 1
    )
    return found


def _lost_successes(
    by_reference: dict[str, Any], entries: dict[str, list[dict[str, Any]]]
) -> list[str]:
    """Approved at the network, not succeeded here."""
    found = []
    for reference, committed in entries.items():
        txn = by_reference.get(reference)
        if txn is not None and _approved(committed) and txn["status"] != "succeeded":
            found.append(
                f"{txn['payment_intent_id']} {txn['id']} {txn['type']} approved there, "
                f"{txn['status']} here{_reconciled(txn)}{_card(txn)}"
            )
    return found


def _phantom_successes(
    transactions: list[Any], entries: dict[str, list[dict[str, Any]]]
) -> list[str]:
    """Succeeded here, not approved at the network."""
    found = []
    for txn in transactions:
        committed = entries[txn["network_reference"]]
        if txn["status"] == "succeeded" and not _approved(committed):
            there = "/".join(e["status"] for e in committed) or "no entry"
            found.append(
                f"{txn['payment_intent_id']} {txn['id']} {txn['type']} succeeded here, "
                f"{there} there{_reconciled(txn)}{_card(txn)}"
            )
    return found


def _stuck(intents: list[Any], transactions: list[Any]) -> list[str]:
    return [f"{i['id']} still processing" for i in intents if i["status"] == "processing"] + [
        f"{t['payment_intent_id']} {t['id']} {t['type']} still {t['status']}{_card(t)}"
        for t in transactions
        if t["status"] in UNSETTLED_TRANSACTION_STATUSES
    ]


def _amount_mismatches(
    intents: list[Any], txns_of: dict[str, list[Any]], entries: dict[str, list[dict[str, Any]]]
) -> list[str]:
    """amountReceived / amountRefunded against the sums of the approved ledger entries of the
    intent's references, and each transaction's amount against its ledger entry."""
    found = []
    for intent in intents:
        committed = [e for t in txns_of[intent["id"]] for e in entries[t["network_reference"]]]
        received = sum(e["amountInCents"] for e in _approved(committed, RECEIVED_TYPES))
        refunded = sum(e["amountInCents"] for e in _approved(committed, frozenset({"refund"})))
        differing = [
            f"{t['id']} {t['amount_in_cents']} here, {e['amountInCents']} there"
            for t in txns_of[intent["id"]]
            for e in entries[t["network_reference"]]
            if e["amountInCents"] != t["amount_in_cents"]
        ]
        if (intent["amount_received"], intent["amount_refunded"]) != (
            received,
            refunded,
        ) or differing:
            found.append(
                f"{intent['id']} received {intent['amount_received']} here, {received} there; "
                f"refunded {intent['amount_refunded']} here, {refunded} there"
                + "".join(f"; {d}" for d in differing)
            )
    return found


def _unknown_operations(
    by_reference: dict[str, Any], entries: dict[str, list[dict[str, Any]]]
) -> list[str]:
    """Network operations under a reference that is no transaction of ours."""
    return [
        f"{r} {'/'.join(e['type'] + ' ' + e['status'] for e in committed)}"
        for r, committed in entries.items()
        if r not in by_reference
    ]


def _status_mismatches(
    intents: list[Any], txns_of: dict[str, list[Any]], entries: dict[str, list[dict[str, Any]]]
) -> list[str]:
    """The intent's status against what its approved ledger entries imply (a `processing`
    one is counted as stuck instead)."""
    found = []
    for intent in intents:
        if intent["status"] == "processing":
            continue
        committed = [e for t in txns_of[intent["id"]] for e in entries[t["network_reference"]]]
        expected = _status_implied(committed)
        if intent["status"] not in expected:
            found.append(
                f"{intent['id']} is {intent['status']}, the ledger says "
                f"{' or '.join(sorted(expected))}"
            )
    return found


def _status_implied(committed: list[dict[str, Any]]) -> frozenset[str]:
    approved = Counter(e["type"] for e in _approved(committed))
    received = sum(e["amountInCents"] for e in _approved(committed, RECEIVED_TYPES))
    refunded = sum(e["amountInCents"] for e in _approved(committed, frozenset({"refund"})))
    if approved["void"]:
        return frozenset({"canceled"})
    if received:
        if refunded >= received:
            return frozenset({"refunded"})
        return frozenset({"partially_refunded" if refunded else "succeeded"})
    if approved["authorize"]:
        return frozenset({"requires_capture"})
    # Never paid: not charged yet, declined, or canceled before any charge.
    return frozenset({"created", "failed", "canceled"})


# ---- child operations at the network: captures and refunds against what we recorded -----------
CHILD_TYPES = frozenset({"capture", "refund"})


def child_operation_findings(
    transactions: Iterable[asyncpg.Record | dict[str, Any]], ledger: list[dict[str, Any]]
) -> dict[str, list[str]]:
    """`orphan_captures_and_refunds`: a capture or refund at the network under a reference we do
    not hold, or naming another parent than the one we recorded for it.
    `duplicate_refunds`: one refund transaction of ours approved twice there, or the refunds
    approved against one of our payments adding up to more than we recorded as refunded."""
    transactions = list(transactions)
    by_reference = {t["network_reference"]: t for t in transactions}
    return {
        "orphan_captures_and_refunds": _orphan_children(by_reference, ledger),
        "duplicate_refunds": _duplicate_refunds(transactions, ledger),
    }


def _orphan_children(by_reference: dict[str, Any], ledger: list[dict[str, Any]]) -> list[str]:
    found = []
    for entry in ledger:
        if entry["type"] not in CHILD_TYPES:
            continue
        txn = by_reference.get(entry["reference"])
        what = f"{entry['type']} {entry['reference']} ({entry['status']})"
        if txn is None:
            found.append(f"{what} of parent {entry['parentReference']} is no transaction of ours")
        elif entry["parentReference"] != txn["parent_reference"]:
            found.append(
                f"{what} names parent {entry['parentReference']} there, "
                f"{txn['parent_reference']} here ({txn['payment_intent_id']})"
            )
    return found


def _duplicate_refunds(transactions: list[Any], ledger: list[dict[str, Any]]) -> list[str]:
    approved = [e for e in ledger if e["type"] == "refund" and e["status"] == "approved"]
    found = [
        f"refund {reference} approved {times} times at the network"
        for reference, times in Counter(e["reference"] for e in approved).items()
        if times > 1
    ]
    at_network: Counter[str] = Counter()
    for entry in approved:
        at_network[entry["parentReference"]] += entry["amountInCents"]
    recorded: Counter[str] = Counter()
    for txn in transactions:
        if txn["type"] == "refund" and txn["status"] == "succeeded":
            recorded[txn["parent_reference"]] += txn["amount_in_cents"]
    found.extend(
        f"{parent}: {refunded} refunded at the network, {recorded[parent]} recorded"
        for parent, refunded in at_network.items()
        if refunded > recorded[parent]
    )
    return found


# ---- what the merchant's systems received: webhooks, the event stream, the audit trail ---------
def webhook_findings(
    events: Iterable[str], deliveries: Iterable[tuple[str, str]], received: Iterable[str]
) -> dict[str, list[str]]:
    """For one endpoint that was up the whole time, subscribed to every event: `events` are the
    ids of the events it was owed, `deliveries` its (event id, status) delivery rows, `received`
    the `webhook-id` of every request that reached it (the event's id: a send retried after a
    crash repeats it). Every event delivered and received; no event planned twice."""
    events = list(events)
    deliveries = list(deliveries)
    received_ids = set(received)
    planned = Counter(event_id for event_id, _ in deliveries)
    succeeded = {event_id for event_id, status in deliveries if status == "succeeded"}
    known = set(events)
    return {
        "undelivered_webhooks": [
            f"{e} {'not received' if e not in received_ids else 'received'}"
            f"{'' if e in succeeded else ', its delivery not succeeded'}"
            for e in events
            if e not in received_ids or e not in succeeded
        ],
        "duplicate_webhook_deliveries": [
            f"{e} planned {n} times" for e, n in planned.items() if n > 1
        ]
        + [f"{e} received, no event of ours" for e in sorted(received_ids - known)],
    }


def event_stream_findings(events: Iterable[str], streamed: Iterable[str]) -> dict[str, list[str]]:
    """Every event row on the WAL-fed event stream (`durapay events stream`), none it does not
    hold. At least once: an event streamed twice (after a consumer's restart) is no finding."""
    events = list(events)
    streamed_ids = set(streamed)
    known = set(events)
    return {
        "events_missing_from_stream": [e for e in events if e not in streamed_ids]
        + [f"{e} streamed, no event row" for e in sorted(streamed_ids - known)]
    }


def audit_verify_findings(exit_code: int, output: str) -> dict[str, list[str]]:
    """`durapay audit verify` over the whole database: exit 0, or its last lines."""
    return {
        "audit_verify_failures": []
        if exit_code == 0
        else [f"exit {exit_code}: " + " | ".join(output.strip().splitlines()[-3:])]
    }
