"""A charge whose answer was lost and that the network does not know is reversed by reference
(the real stack): it settles `failed` within the reversal bound, not the not-found safe age, and
an original that arrives after its reversal is declined at the network. Only the intent is
polled; faults at the simulator lose the requests.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx

from client import DurapayClient
from tests.integration.conftest import CARD_4242, create_intent
from tests.integration.helpers import (
    FAST_TIMING_ENV,
    assert_eventually,
    charge,
    ledger_entries,
    settled_intent,
)
from tests.integration.test_reconciliation_sweep import _run_reconcile
from tests.ledger_audit import compare
from tests.stack import RunningStack

REVERSAL_AFTER = float(FAST_TIMING_ENV["DURAPAY_RECONCILE_REVERSAL_AFTER_SECONDS"])
# The adapter's timeout (1.5 s), one step of the status queries' backoff (2 s) and the
# reversal's round trip, with room for a machine shared by other sessions.
MARGIN = 10.0
# Every request waits this long before the network handles it: the adapter gives up (1.5 s)
# and hangs up first, which abandons the request before anything is committed.
ABANDONED = {"latencyMs": 3000, "latencyRate": 1.0}


async def _lost_charge(
    durapay: DurapayClient,
    cardnet: httpx.AsyncClient,
    faults: dict[str, Any],
    *,
    then: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], str]:
    """A charge sent under `faults` (its answer lost: 202), and the faults set `then`."""
    intent = await create_intent(durapay)
    assert (await cardnet.post("/faults", json=faults)).status_code == 200
    try:
        response = await charge(durapay, intent["id"], CARD_4242)
    finally:
        await cardnet.post("/faults", json=then or {})
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "timeout"
    return intent, response.json()["id"]


async def _settled_by_reversal(
    durapay: DurapayClient, db: asyncpg.Pool, intent_id: str, txn_id: str
) -> asyncpg.Record:
    settled = await settled_intent(durapay, intent_id, timeout=REVERSAL_AFTER + MARGIN)
    assert (settled["status"], settled["amountReceived"]) == ("failed", 0)
    row = await db.fetchrow(
        "SELECT status, failure_code, decline_code, reconciled, "
        'reversal_reference FROM "transaction" WHERE id = $1',
        txn_id,
    )
    assert row is not None
    # `charge_reversed` only comes from a reversal (the safe age would say processing_error).
    assert (
        row["status"],
        row["failure_code"],
        row["decline_code"],
        row["reconciled"],
        row["reversal_reference"],
    ) == ("failed", "charge_reversed", None, True, f"{txn_id}:reversal")
    return row


async def _void_of(cardnet: httpx.AsyncClient, reversal: str, original: str) -> None:
    [entry] = await ledger_entries(cardnet, reversal)
    assert (entry["type"], entry["status"], entry["parentReference"]) == (
        "void",
        "approved",
        original,
    )


async def _audit_of(db: asyncpg.Pool, cardnet: httpx.AsyncClient, intent_id: str) -> dict[str, int]:
    """The chaos audit's counts for this intent alone."""
    intents = await db.fetch(
        "SELECT id, status, capture_method, amount_in_cents, amount_received, amount_refunded "
        "FROM payment_intent WHERE id = $1",
        intent_id,
    )
    transactions = await db.fetch(
        "SELECT id, payment_intent_id, type, amount_in_cents, status, network_reference, "
        'reconciled, card_last4, reversal_reference FROM "transaction" '
        "WHERE payment_intent_id = $1",
        intent_id,
    )
    references = {t["network_reference"] for t in transactions} | {
        t["reversal_reference"] for t in transactions
    }
    ledger = [e for e in await ledger_entries(cardnet) if e["reference"] in references]
    return compare(intents, transactions, ledger).counts


async def test_a_charge_that_never_reached_the_network_is_reversed_and_fails(
    durapay: DurapayClient, cardnet: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    intent, txn_id = await _lost_charge(durapay, cardnet, ABANDONED)
    row = await _settled_by_reversal(durapay, db, intent["id"], txn_id)
    assert await ledger_entries(cardnet, txn_id) == []  # the charge never reached it
    await _void_of(cardnet, row["reversal_reference"], txn_id)  # a tombstone
    assert set((await _audit_of(db, cardnet, intent["id"])).values()) == {0}


async def test_an_original_arriving_after_its_reversal_is_declined(
    durapay: DurapayClient, cardnet: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    # The charge stays in transit past the adapter's timeout and past the reversal.
    in_transit_ms = int((REVERSAL_AFTER + MARGIN) * 1000)
    intent, txn_id = await _lost_charge(durapay, cardnet, {"transitDelayMs": in_transit_ms})
    row = await _settled_by_reversal(durapay, db, intent["id"], txn_id)
    await _void_of(cardnet, row["reversal_reference"], txn_id)

    async def original_committed() -> dict[str, Any]:
        entries = await ledger_entries(cardnet, txn_id)
        assert len(entries) == 1, f"{txn_id} still in transit"
        return entries[0]

    late = await assert_eventually(original_committed, timeout=in_transit_ms / 1000 + 5)
    assert (late["type"], late["status"], late["declineCode"]) == ("charge", "declined", "reversed")
    assert set((await _audit_of(db, cardnet, intent["id"])).values()) == {0}
    retrieved = (await durapay.get(f"/payment-intents/{intent['id']}")).json()
    assert (retrieved["status"], retrieved["amountReceived"]) == ("failed", 0)


async def test_a_reversal_whose_answer_is_lost_is_reconciled(
    durapay: DurapayClient, cardnet: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    # Every answer to a POST is dropped after its commit while the reversal is sent: only a
    # status query of the reversal's reference can settle the charge.
    try:
        intent, txn_id = await _lost_charge(durapay, cardnet, ABANDONED, then={"dropRate": 1.0})
        row = await _settled_by_reversal(durapay, db, intent["id"], txn_id)
    finally:
        await cardnet.delete("/faults")
    await _void_of(cardnet, row["reversal_reference"], txn_id)
    assert set((await _audit_of(db, cardnet, intent["id"])).values()) == {0}


async def test_an_approved_charge_its_reversal_voided_is_net_zero(
    stack: RunningStack, durapay: DurapayClient, cardnet: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    # The charge is approved but its answer dropped, and the status index lags far past the
    # reversal bound: the workflow cannot tell, reverses it, and the reversal voids it.
    lagging = {"statusLagMs": 600_000}
    try:
        intent, txn_id = await _lost_charge(
            durapay, cardnet, {**lagging, "dropRate": 1.0}, then=lagging
        )
        row = await _settled_by_reversal(durapay, db, intent["id"], txn_id)
    finally:
        await cardnet.delete("/faults")
    [original] = await ledger_entries(cardnet, txn_id)
    assert (original["type"], original["status"]) == ("charge", "approved")
    await _void_of(cardnet, row["reversal_reference"], txn_id)
    # Approved + void: no lost success, no phantom, nothing received.
    assert set((await _audit_of(db, cardnet, intent["id"])).values()) == {0}
    # ... and the reconciliation sweep agrees.
    sweep = await _run_reconcile(stack, "--window-seconds", "900")
    assert sweep.run_id, sweep.stdout + sweep.stderr
    found = await db.fetchval(
        "SELECT count(*) FROM reconciliation_discrepancy WHERE network_reference = ANY($1)",
        [txn_id, row["reversal_reference"]],
    )
    assert found == 0
