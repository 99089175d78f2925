"""The hash chain's rules (core/audit_chain.py), on rows built in memory."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from core.audit_chain import (
    GENESIS_HASH,
    ChainHead,
    canonical_event,
    chain_of,
    first_broken_link,
    link_hash,
)

CHAIN = chain_of("mer_1")
T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def _chain(length: int) -> list[dict[str, Any]]:
    rows, previous = [], GENESIS_HASH
    for position in range(1, length + 1):
        row: dict[str, Any] = {
            "seq": 10 * position, "id": f"evt_{position}", "chain": CHAIN,
            "chain_seq": position, "merchant_id": "mer_1", "payment_intent_id": "pi_1",
            "transaction_id": None, "intent_seq": position, "type": "payment.processing",
            "data": {"status": "processing", "amountInCents": 100 * position},
            "created_at": T0 + timedelta(seconds=position), "prev_hash": previous}
        row["hash"] = previous = link_hash(previous, row)
        rows.append(row)
    return rows


def test_an_intact_chain_holds_with_its_head_and_checkpoints() -> None:
    rows = _chain(5)
    walked, broken = first_broken_link(CHAIN, rows, head=ChainHead(5, rows[-1]["hash"]),
                                       checkpoints=[ChainHead(2, rows[1]["hash"])])
    assert (walked, broken) == (5, None)


def test_the_canonical_form_ignores_key_order_and_the_timestamps_zone() -> None:
    row = _chain(1)[0]
    shuffled = {**row, "data": dict(reversed(row["data"].items())),
                "created_at": row["created_at"].astimezone(
                    datetime.now().astimezone().tzinfo)}
    assert canonical_event(shuffled) == canonical_event(row)
    # The global `seq` is assigned by the database on insert: checked for order, not hashed.
    assert set(json.loads(canonical_event(row))) == {
        "id", "chain", "chainSeq", "merchantId", "paymentIntentId", "transactionId",
        "intentSeq", "type", "data", "createdAt"}


def test_each_kind_of_tampering_names_where_it_shows() -> None:
    rows = _chain(4)
    edited = [dict(r) for r in rows]
    edited[1]["data"] = {**edited[1]["data"], "amountInCents": 1}
    assert first_broken_link(CHAIN, edited)[1].event_id == "evt_2"  # type: ignore[union-attr]

    deleted = rows[:1] + rows[2:]
    broken = first_broken_link(CHAIN, deleted)[1]
    assert broken is not None and broken.event_id == "evt_3" and "missing link" in broken.reason

    swapped = [rows[0], {**rows[2], "chain_seq": 2}, {**rows[1], "chain_seq": 3}, rows[3]]
    assert first_broken_link(CHAIN, swapped)[1].event_id == "evt_3"  # type: ignore[union-attr]

    out_of_order = [rows[0], {**rows[1], "seq": 1}, *rows[2:]]
    broken = first_broken_link(CHAIN, out_of_order)[1]
    assert broken is not None and "recorded before" in broken.reason


def test_a_deleted_tail_is_caught_by_the_head_or_a_checkpoint() -> None:
    rows = _chain(4)
    broken = first_broken_link(CHAIN, rows[:3], head=ChainHead(4, rows[3]["hash"]))[1]
    assert broken is not None and "the chain's head names position 4" in broken.reason
    # The head rolled back too: the checkpoint still knows the chain reached position 4.
    broken = first_broken_link(CHAIN, rows[:3], head=ChainHead(3, rows[2]["hash"]),
                               checkpoints=[ChainHead(4, rows[3]["hash"])])[1]
    assert broken is not None and "checkpoint names position 4" in broken.reason
    # A rewritten chain (re-hashed from position 2 on) no longer matches a checkpoint inside it.
    rewritten = _chain(4)
    rewritten[1]["data"] = {"status": "x"}
    previous = rewritten[0]["hash"]
    for row in rewritten[1:]:
        row["prev_hash"] = previous
        row["hash"] = previous = link_hash(previous, row)
    broken = first_broken_link(CHAIN, rewritten, head=ChainHead(4, rewritten[3]["hash"]),
                               checkpoints=[ChainHead(2, rows[1]["hash"])])[1]
    assert broken is not None and "another hash" in broken.reason


def test_a_chain_without_a_head_row_is_reported() -> None:
    broken = first_broken_link(CHAIN, _chain(2))[1]
    assert broken is not None and "no head row" in broken.reason
