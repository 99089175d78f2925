"""The hash chains' and checkpoints' rules (core/audit_chain.py), on rows built in memory."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from core.audit_chain import (
    GENESIS_HASH,
    ChainHead,
    CheckpointWalk,
    Mark,
    canonical_event,
    checkpoint_hash,
    first_broken_link,
    link_hash,
    merkle_root,
    scope_of,
)

CHAIN = "pi_1"
T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def _chain(length: int) -> list[dict[str, Any]]:
    rows, previous = [], GENESIS_HASH
    for position in range(1, length + 1):
        row: dict[str, Any] = {
            "seq": 10 * position,
            "id": f"evt_{position}",
            "chain": CHAIN,
            "chain_seq": position,
            "merchant_id": "mer_1",
            "payment_intent_id": "pi_1",
            "transaction_id": None,
            "intent_seq": position,
            "type": "payment.processing",
            "data": {"status": "processing", "amountInCents": 100 * position},
            "created_at": T0 + timedelta(seconds=position),
            "prev_hash": previous,
        }
        row["hash"] = previous = link_hash(previous, row)
        rows.append(row)
    return rows


def test_an_intact_chain_holds_with_its_checkpointed_heads() -> None:
    rows = _chain(5)
    marks = [Mark(1, 2, rows[1]["hash"]), Mark(2, 5, rows[4]["hash"])]
    assert first_broken_link(CHAIN, rows, marks) == (5, None)


def test_the_canonical_form_ignores_key_order_and_the_timestamps_zone() -> None:
    row = _chain(1)[0]
    shuffled = {
        **row,
        "data": dict(reversed(row["data"].items())),
        "created_at": row["created_at"].astimezone(datetime.now().astimezone().tzinfo),
    }
    assert canonical_event(shuffled) == canonical_event(row)
    # The global `seq` is assigned by the database on insert: checked for order, not hashed.
    assert set(json.loads(canonical_event(row))) == {
        "id",
        "chain",
        "chainSeq",
        "merchantId",
        "paymentIntentId",
        "transactionId",
        "intentSeq",
        "type",
        "data",
        "createdAt",
    }


def test_each_kind_of_tampering_names_where_it_shows() -> None:
    rows = _chain(4)
    edited = [dict(r) for r in rows]
    edited[1]["data"] = {**edited[1]["data"], "amountInCents": 1}
    broken = first_broken_link(CHAIN, edited)[1]
    assert broken is not None and broken.event_id == "evt_2"
    assert "contents do not match its hash" in broken.reason

    deleted = rows[:1] + rows[2:]
    broken = first_broken_link(CHAIN, deleted)[1]
    assert broken is not None and broken.event_id == "evt_3" and "missing link" in broken.reason

    swapped = [rows[0], {**rows[2], "chain_seq": 2}, {**rows[1], "chain_seq": 3}, rows[3]]
    broken = first_broken_link(CHAIN, swapped)[1]
    assert broken is not None and broken.event_id == "evt_3"
    assert "does not link to the event before it" in broken.reason

    out_of_order = [rows[0], {**rows[1], "seq": 1}, *rows[2:]]
    broken = first_broken_link(CHAIN, out_of_order)[1]
    assert broken is not None and "recorded before" in broken.reason


def test_a_deleted_tail_or_chain_is_caught_only_by_a_checkpoint() -> None:
    rows = _chain(4)
    # Without a checkpoint, a chain cut short is a shorter chain that holds.
    assert first_broken_link(CHAIN, rows[:3]) == (3, None)
    broken = first_broken_link(
        CHAIN, rows[:3], [Mark(1, 2, rows[1]["hash"]), Mark(2, 4, rows[3]["hash"])]
    )[1]
    assert broken is not None and broken.chain_seq == 4
    assert broken.reason == (
        "missing: checkpoint 2 names position 4 but the chain ends at 3 "
        "(events deleted from its end)"
    )
    broken = first_broken_link(CHAIN, [], [Mark(1, 4, rows[3]["hash"])])[1]
    assert broken is not None and broken.reason.startswith("missing chain: checkpoint 1")
    assert str(broken) == (
        "pi_1 position 1: missing chain: checkpoint 1 names position 4 but "
        "the chain has no events (deleted whole)"
    )


def test_a_chain_rewritten_after_a_checkpoint_no_longer_matches_it() -> None:
    rows = _chain(4)
    rewritten = _chain(4)  # re-hashed from position 2 on: every link holds
    rewritten[1]["data"] = {"status": "x"}
    previous = rewritten[0]["hash"]
    for row in rewritten[1:]:
        row["prev_hash"] = previous
        row["hash"] = previous = link_hash(previous, row)
    assert first_broken_link(CHAIN, rewritten) == (4, None)
    broken = first_broken_link(CHAIN, rewritten, [Mark(3, 2, rows[1]["hash"])])[1]
    assert broken is not None and broken.event_id == "evt_2"
    assert broken.reason == "checkpoint 3 recorded another hash at this position"


def test_the_merkle_root_covers_every_head_whatever_their_order() -> None:
    heads = [ChainHead(f"pi_{n}", n, hashlib.sha256(bytes([n])).hexdigest()) for n in range(5)]
    root = merkle_root(heads)
    assert merkle_root(list(reversed(heads))) == root
    assert merkle_root(heads[:4]) != root
    assert merkle_root([*heads[:4], ChainHead("pi_4", 5, heads[4].hash)]) != root
    # RFC 6962's shape: one leaf is its own root, two make one node.
    leaf = hashlib.sha256(b"\x00" + f"pi_0\n0\n{heads[0].hash}".encode()).digest()
    other = hashlib.sha256(b"\x00" + f"pi_1\n1\n{heads[1].hash}".encode()).digest()
    assert merkle_root(heads[:1]) == leaf.hex()
    assert merkle_root(heads[:2]) == hashlib.sha256(b"\x01" + leaf + other).hexdigest()


def _checkpoints(count: int) -> list[tuple[dict[str, Any], list[ChainHead]]]:
    made, previous = [], GENESIS_HASH
    for position in range(1, count + 1):
        heads = [ChainHead(f"pi_{position}", 2, "ab" * 32), ChainHead("we_1", position, "cd" * 32)]
        row: dict[str, Any] = {
            "scope": scope_of("mer_1"),
            "position": position,
            "chains": 2,
            "root": merkle_root(heads),
            "prev_hash": previous,
            "recorded_at": T0 + timedelta(minutes=position),
        }
        row["hash"] = previous = checkpoint_hash(previous, row)
        made.append((row, heads))
    return made


def _walk(checkpoints: list[tuple[dict[str, Any], list[ChainHead]]]) -> str | None:
    walk = CheckpointWalk("merchant:mer_1")
    for row, heads in checkpoints:
        if walk.feed(row, heads):
            return str(walk.broken)
    return None


def test_a_scopes_checkpoints_form_a_chain_and_each_root_covers_its_heads() -> None:
    assert _walk(_checkpoints(3)) is None
    made = _checkpoints(3)
    assert _walk([made[0], made[2]]) == (
        "checkpoints of merchant:mer_1 position 2: missing link: expected checkpoint 2, found 3"
    )
    edited = [made[0], ({**made[1][0], "root": "0" * 64}, made[1][1]), made[2]]
    assert "its contents do not match its hash" in str(_walk(edited))
    dropped_head = [made[0], (made[1][0], made[1][1][:1]), made[2]]
    assert "its root does not match the chain heads it records" in str(_walk(dropped_head))
    moved_head = [made[0], (made[1][0], [made[1][1][0], ChainHead("we_1", 9, "cd" * 32)])]
    assert "its root does not match" in str(_walk(moved_head))
    relinked = [made[0], ({**made[1][0], "prev_hash": GENESIS_HASH}, made[1][1])]
    assert "does not link to the checkpoint before it" in str(_walk(relinked))
