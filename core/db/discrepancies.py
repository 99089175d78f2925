"""Reconciliation discrepancies as open items: opened once, seen again, resolved once.

A problem is one row per (network reference, kind) while it is open; a partial unique index
(`WHERE resolved_at IS NULL`) makes `open_discrepancy` an idempotent insert, so the operator
event and the WARNING line come once, when the item opens. Once resolved (by an operator, or by
the sweep that no longer finds it) the same problem seen again opens a new item. A trigger
lets an open row change only its sighting and its resolution; a resolved row never changes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.db.queries import append_chained_event, event_id_for
from core.db.tables import ReconciliationDiscrepancy
from core.domain import new_id
from core.reconciliation import DISCREPANCY_EVENT_TYPE, SWEEP_KINDS, OpenItem

log = logging.getLogger("durapay.reconciliation")
# Short name for the column expressions below.
Discrepancies = ReconciliationDiscrepancy


async def open_discrepancy(
    session: AsyncSession,
    *,
    kind: str,
    network_reference: str,
    merchant_id: str | None,
    payment_intent_id: str | None,
    transaction_id: str | None,
    detail: dict[str, Any],
    run_id: str | None = None,
    our_status: str | None = None,
    network_status: str | None = None,
    our_amount_in_cents: int | None = None,
    network_amount_in_cents: int | None = None,
    currency: str | None = None,
    network_currency: str | None = None,
) -> bool:
    """Open an item for (network_reference, kind) in the caller's transaction; True if new.

    Already open: nothing is written and False comes back, so a retried caller is harmless.
    Newly opened: the operator event `reconciliation.discrepancy` is appended in the same
    transaction and a WARNING is logged. `detail` is free-form JSON for the operator (ids,
    statuses, amounts; never card data); `run_id` is the sweep's run, None for other callers.
    """
    discrepancy_id = new_id("rcd")
    row = {
        "id": discrepancy_id,
        "run_id": run_id,
        "kind": str(kind),
        "network_reference": network_reference,
        "merchant_id": merchant_id,
        "payment_intent_id": payment_intent_id,
        "transaction_id": transaction_id,
        "our_status": our_status,
        "network_status": network_status,
        "our_amount_in_cents": our_amount_in_cents,
        "network_amount_in_cents": network_amount_in_cents,
        "currency": currency,
        "network_currency": network_currency,
        "detail": detail,
        "last_seen_run_id": run_id,
        "last_seen_at": func.now() if run_id else None,
    }
    inserted = await session.exec(
        insert(ReconciliationDiscrepancy)
        .values(**row)
        # The partial unique index on open items: an open (reference, kind) is not opened again.
        .on_conflict_do_nothing(
            index_elements=["network_reference", "kind"], index_where=text("resolved_at IS NULL")
        )
        .returning(col(Discrepancies.id))
    )
    if inserted.first() is None:
        return False
    await append_chained_event(session, **_event_row(row), unless_recorded=True)
    log.warning(
        "reconciliation discrepancy %s reference=%s intent=%s transaction=%s "
        "merchant=%s ours=%s/%s network=%s/%s currency=%s run=%s id=%s",
        kind,
        network_reference,
        payment_intent_id,
        transaction_id,
        merchant_id,
        our_status,
        our_amount_in_cents,
        network_status,
        network_amount_in_cents,
        currency,
        run_id or "-",
        discrepancy_id,
    )
    return True


async def lock_open_sweep_items(session: AsyncSession) -> list[OpenItem]:
    """The open items of the kinds a sweep finds, locked until the caller's commit.

    The lock makes an operator's concurrent `resolve` wait for the sweep instead of racing it.
    """
    rows = (
        await session.exec(
            select(Discrepancies.id, Discrepancies.network_reference, Discrepancies.kind)
            .where(
                col(Discrepancies.resolved_at).is_(None),
                col(Discrepancies.kind).in_([k.value for k in SWEEP_KINDS]),
            )
            .with_for_update()
        )
    ).all()
    return [OpenItem(discrepancy_id=i, network_reference=ref, kind=kind) for i, ref, kind in rows]


async def mark_seen(session: AsyncSession, discrepancy_ids: Sequence[str], run_id: str) -> None:
    """A sweep found these open items again: remember the run, raise no new alarm."""
    if discrepancy_ids:
        await session.exec(
            update(Discrepancies)
            .where(
                col(Discrepancies.id).in_(discrepancy_ids), col(Discrepancies.resolved_at).is_(None)
            )
            .values(last_seen_run_id=run_id, last_seen_at=func.now())
        )


async def clear_by_sweep(session: AsyncSession, items: Iterable[OpenItem], run_id: str) -> int:
    """The sweep checked these again and found no such problem: resolve them, with a note."""
    ids = [item.discrepancy_id for item in items]
    if not ids:
        return 0
    cleared = (
        await session.exec(
            update(Discrepancies)
            .where(col(Discrepancies.id).in_(ids), col(Discrepancies.resolved_at).is_(None))
            .values(resolved_at=func.now(), resolution_note=f"cleared by sweep {run_id}")
            .returning(col(Discrepancies.id))
        )
    ).all()
    for discrepancy_id in cleared:
        log.info("reconciliation discrepancy %s cleared by sweep %s", discrepancy_id, run_id)
    return len(cleared)


async def list_open_discrepancies(session: AsyncSession) -> list[ReconciliationDiscrepancy]:
    """Every open item, oldest first."""
    return list(
        (
            await session.exec(
                select(ReconciliationDiscrepancy)
                .where(col(Discrepancies.resolved_at).is_(None))
                .order_by(col(Discrepancies.created_at), col(Discrepancies.id))
            )
        ).all()
    )


@dataclass(frozen=True)
class Resolution:
    resolved: bool  # False: no such item, or it was already resolved
    discrepancy: ReconciliationDiscrepancy | None


async def resolve_discrepancy(
    session: AsyncSession, discrepancy_id: str, *, note: str
) -> Resolution:
    """Resolve one open item with the operator's note; an item is resolved at most once."""
    resolved = (
        await session.exec(
            update(Discrepancies)
            .where(
                col(Discrepancies.id) == discrepancy_id, col(Discrepancies.resolved_at).is_(None)
            )
            .values(resolved_at=func.now(), resolution_note=note)
            .returning(col(Discrepancies.id))
        )
    ).first()
    session.expire_all()  # the row as updated, not a stale identity-map copy
    row = await session.get(ReconciliationDiscrepancy, discrepancy_id)
    return Resolution(resolved is not None, row)


def _event_row(row: dict[str, Any]) -> dict[str, Any]:
    # Ids, statuses and amounts only, like the ledger: no card data in operator events.
    data = {
        "discrepancyId": row["id"],
        "runId": row["run_id"],
        "kind": row["kind"],
        "networkReference": row["network_reference"],
        "merchantId": row["merchant_id"],
        "paymentIntentId": row["payment_intent_id"],
        "transactionId": row["transaction_id"],
        "ourStatus": row["our_status"],
        "networkStatus": row["network_status"],
        "ourAmountInCents": row["our_amount_in_cents"],
        "networkAmountInCents": row["network_amount_in_cents"],
        "currency": row["currency"],
        "networkCurrency": row["network_currency"],
        "detail": row["detail"],
    }
    # The discrepancy's own chain (its one event): never the payment's, whose row the sweep
    # does not lock and whose story (`intent_seq`) is the merchant's.
    return {
        "chain": row["id"],
        "event_id": event_id_for(f"{row['id']}:opened"),
        "merchant_id": row["merchant_id"],
        "payment_intent_id": row["payment_intent_id"],
        "transaction_id": row["transaction_id"],
        "event_type": DISCREPANCY_EVENT_TYPE,
        "data": data,
    }
