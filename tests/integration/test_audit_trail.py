"""The audit trail on the real stack: a payment's story rebuilt from its events alone, and every
kind of tampering with the event and checkpoint tables (as the database owner, with their
append-only triggers set aside) caught by `durapay audit verify` with the event where it
shows."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from temporalio.client import Client

from client import DurapayClient
from core.audit_chain import scope_of
from tests.integration.conftest import CARD_4242, create_intent
from tests.integration.helpers import assert_eventually, charge, signed_merchant
from tests.stack import RunningStack
from workers.schedules import AUDIT_CHECKPOINT_SCHEDULE_ID

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


def _audit_cli(stack: RunningStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "durapay"), "audit", "verify", *args],
        env=stack.env,
        text=True,
        capture_output=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
async def db(stack: RunningStack) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(stack.database_url)
    try:
        yield connection
    finally:
        await connection.close()


async def _events(durapay: DurapayClient, intent_id: str) -> list[dict[str, Any]]:
    response = await durapay.get(f"/payment-intents/{intent_id}/events")
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def test_a_payments_story_rebuilds_from_its_events_alone(durapay: DurapayClient) -> None:
    intent = await create_intent(durapay, 2499, captureMethod="manual")
    assert (await charge(durapay, intent["id"], CARD_4242)).status_code == 200
    captured = await durapay.post(
        f"/payment-intents/{intent['id']}/capture", {"amountInCents": 2000}
    )
    assert captured.status_code == 200, captured.text
    refunded = await durapay.post(
        f"/payment-intents/{intent['id']}/refunds", {"amountInCents": 500}
    )
    assert refunded.status_code in (200, 201), refunded.text
    final = (await durapay.get(f"/payment-intents/{intent['id']}")).json()

    events = await _events(durapay, intent["id"])
    assert [e["type"] for e in events] == [
        "payment.created",
        "payment.processing",
        "payment.requires_capture",
        "payment.succeeded",
        "payment.partially_refunded",
    ]
    assert [e["intentSequence"] for e in events] == [1, 2, 3, 4, 5]
    # Replay: each event's `previous` is exactly the state the events before it left.
    story, state = [], None
    for event in events:
        data = event["data"]
        assert data["previous"] == state, event["type"]
        state = {
            k: data[k]
            for k in (
                "status",
                "amountInCents",
                "amountCapturable",
                "amountReceived",
                "amountRefunded",
            )
        }
        txn = data["transaction"]
        story.append(
            f"{event['intentSequence']} {event['type']}: status {state['status']}, "
            f"received {state['amountReceived']}, refunded {state['amountRefunded']}"
            + (f" ({txn['type']} {txn['amountInCents']} {txn['status']})" if txn else "")
        )
    print("\n" + "\n".join(story))
    assert final is not None and state is not None
    assert state == {k: final[k] for k in state}
    transactions = {t["id"]: t for t in final["transactions"]}
    kinds = [(e["data"]["transaction"] or {}).get("type") for e in events]
    assert kinds == [None, "charge", "charge", "capture", "refund"]
    for event in events[2:]:
        txn = event["data"]["transaction"]
        assert txn["status"] == "succeeded" and txn["id"] in transactions
        assert txn["amountInCents"] == transactions[txn["id"]]["amountInCents"]
    assert events[3]["data"]["previous"]["amountCapturable"] == 2499
    assert (state["amountReceived"], state["amountRefunded"]) == (2000, 500)


APPEND_ONLY = {
    "event": "event_append_only",
    "audit_checkpoint": "audit_checkpoint_append_only",
    "audit_checkpoint_head": "audit_checkpoint_head_append_only",
}


@asynccontextmanager
async def _tampering(db: asyncpg.Connection, merchant_id: str) -> AsyncIterator[None]:
    """Tamper with one merchant's events and checkpoints as the tables' owner, then put every
    row back as it was (same `seq`, same `txid`: no chain looks moved), so the session's other
    tests see an intact trail."""
    scope = scope_of(merchant_id)
    events = await db.fetch("SELECT * FROM event WHERE merchant_id = $1", merchant_id)
    checkpoints = await db.fetch("SELECT * FROM audit_checkpoint WHERE scope = $1", scope)
    heads = await db.fetch(
        "SELECT head.* FROM audit_checkpoint_head AS head JOIN audit_checkpoint AS checkpoint "
        "ON checkpoint.id = head.checkpoint_id WHERE checkpoint.scope = $1",
        scope,
    )
    for table, trigger in APPEND_ONLY.items():
        await db.execute(f"ALTER TABLE {table} DISABLE TRIGGER {trigger}")
    try:
        yield
    finally:
        async with db.transaction():
            # Only the checkpoints there before: one the schedule recorded meanwhile stays.
            saved = [row["id"] for row in checkpoints]
            await db.execute(
                "DELETE FROM audit_checkpoint_head WHERE checkpoint_id = ANY($1)", saved
            )
            await db.execute("DELETE FROM audit_checkpoint WHERE id = ANY($1)", saved)
            await db.execute("DELETE FROM event WHERE merchant_id = $1", merchant_id)
            for table, rows in (
                ("event", events),
                ("audit_checkpoint", checkpoints),
                ("audit_checkpoint_head", heads),
            ):
                if rows:
                    columns = list(rows[0].keys())
                    await db.executemany(
                        f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                        f"({', '.join(f'${i + 1}' for i in range(len(columns)))})",
                        [tuple(row.values()) for row in rows],
                    )
        for table, trigger in APPEND_ONLY.items():
            await db.execute(f"ALTER TABLE {table} ENABLE TRIGGER {trigger}")


@dataclass(frozen=True)
class Trail:
    """A fresh merchant's trail: a charged payment (three events) and a created one (one)."""

    merchant_id: str
    charged: str
    created: str
    charged_events: list[str]  # in chain order
    created_events: list[str]


@pytest.fixture(autouse=True)
async def checkpoints_on_demand(temporal: Client) -> AsyncIterator[None]:
    """Checkpoints only when a test triggers one: the schedule fires on its own every few
    minutes, and a checkpoint it took between two verifications would change the count they
    print (or, taken while a test tampers, record the tampered heads)."""
    schedule = temporal.get_schedule_handle(AUDIT_CHECKPOINT_SCHEDULE_ID)
    await schedule.pause(note="test_audit_trail: checkpoints on demand")

    async def idle() -> bool:
        running = (await schedule.describe()).info.running_actions
        assert not running, f"a checkpoint is still running: {running}"
        return True

    try:
        await assert_eventually(idle, timeout=60, interval=0.2)
        yield
    finally:
        await schedule.unpause(note="test_audit_trail: checkpoints resumed")


@pytest.fixture
async def trail(stack: RunningStack) -> Trail:
    return await new_trail(stack)


async def new_trail(stack: RunningStack) -> Trail:
    async with signed_merchant(stack, f"Audit {uuid.uuid4().hex[:6]}") as durapay:
        charged = await create_intent(durapay, 1200)
        assert (await charge(durapay, charged["id"], CARD_4242)).status_code == 200
        created = await create_intent(durapay, 300)
    connection = await asyncpg.connect(stack.database_url)
    try:
        merchant_id = await connection.fetchval(
            "SELECT merchant_id FROM payment_intent WHERE id = $1", charged["id"]
        )
        ids = {
            intent: [
                r["id"]
                for r in await connection.fetch(
                    "SELECT id FROM event WHERE chain = $1 ORDER BY chain_seq", intent
                )
            ]
            for intent in (charged["id"], created["id"])
        }
    finally:
        await connection.close()
    assert [len(ids[charged["id"]]), len(ids[created["id"]])] == [3, 1]
    return Trail(merchant_id, charged["id"], created["id"], ids[charged["id"]], ids[created["id"]])


async def _checkpointed(temporal: Client, db: asyncpg.Connection, trail: Trail) -> int:
    """Run the checkpoint schedule until a checkpoint of the merchant holds both payments'
    current heads; that checkpoint's position."""
    handle = temporal.get_schedule_handle(AUDIT_CHECKPOINT_SCHEDULE_ID)

    async def covered() -> int:
        rows = await db.fetch(
            "SELECT head.chain, head.chain_seq, checkpoint.position FROM audit_checkpoint_head "
            "AS head JOIN audit_checkpoint AS checkpoint ON checkpoint.id = head.checkpoint_id "
            "WHERE checkpoint.scope = $1",
            scope_of(trail.merchant_id),
        )
        heads = {(r["chain"], r["chain_seq"]): r["position"] for r in rows}
        if (trail.charged, 3) in heads and (trail.created, 1) in heads:
            return heads[trail.charged, 3]
        # A run already going when the schedule was triggered skips the trigger: again. A
        # trigger starts a run even while the schedule is paused.
        await handle.trigger()
        raise AssertionError(f"not checkpointed yet: {sorted(heads)}")

    return await assert_eventually(covered, timeout=60, interval=0.5)


def _assert_verified(stack: RunningStack, trail: Trail, checkpoints: int = 0) -> None:
    result = _audit_cli(stack, "--merchant", trail.merchant_id)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        f"{scope_of(trail.merchant_id)}: 2 chains, 4 events, {checkpoints} checkpoints verified, ok"
    ) in result.stdout, result.stdout


def _assert_broken_at(stack: RunningStack, trail: Trail, verdict: str) -> None:
    """`verdict`: the whole line after "the trail is broken: ", as the operator reads it."""
    result = _audit_cli(stack, "--merchant", trail.merchant_id)
    assert result.returncode == 1, result.stdout + result.stderr
    [line] = [line for line in result.stdout.splitlines() if line.startswith("audit:")]
    assert line == f"audit: the trail is broken: {verdict}", result.stdout
    print(f"\n$ durapay audit verify --merchant {trail.merchant_id}\n{result.stdout}")


async def test_verify_catches_an_edited_event(
    stack: RunningStack, db: asyncpg.Connection, trail: Trail
) -> None:
    _assert_verified(stack, trail)
    await _assert_edit_caught(stack, db, trail, 2)
    _assert_verified(stack, trail)


async def _assert_edit_caught(
    stack: RunningStack, db: asyncpg.Connection, trail: Trail, index: int
) -> None:
    """The charged payment's event at `index` edited (its amount received), then put back."""
    async with _tampering(db, trail.merchant_id):
        await db.execute(
            "UPDATE event SET data = jsonb_set(data, '{amountReceived}', '7') WHERE id = $1",
            trail.charged_events[index],
        )
        _assert_broken_at(
            stack,
            trail,
            f"{trail.charged} position {index + 1} "
            f"{trail.charged_events[index]}: its contents do not match its hash",
        )


async def test_verify_catches_a_deleted_event(
    stack: RunningStack, db: asyncpg.Connection, trail: Trail
) -> None:
    async with _tampering(db, trail.merchant_id):
        await db.execute("DELETE FROM event WHERE id = $1", trail.charged_events[1])
        _assert_broken_at(
            stack,
            trail,
            f"{trail.charged} position 2 "
            f"{trail.charged_events[2]}: missing link: expected position 2, "
            "found 3",
        )
    _assert_verified(stack, trail)


async def test_verify_catches_events_swapped_in_their_chain(
    stack: RunningStack, db: asyncpg.Connection, trail: Trail
) -> None:
    second, third = trail.charged_events[1:]
    async with _tampering(db, trail.merchant_id):
        await db.execute(
            "UPDATE event SET chain_seq = -chain_seq WHERE id = ANY($1)", [second, third]
        )
        await db.execute("UPDATE event SET chain_seq = 2 WHERE id = $1", third)
        await db.execute("UPDATE event SET chain_seq = 3 WHERE id = $1", second)
        _assert_broken_at(
            stack,
            trail,
            f"{trail.charged} position 2 {third}: does not link "
            "to the event before it (reordered or one removed)",
        )
    _assert_verified(stack, trail)


async def test_verify_catches_events_swapped_in_recording_order(
    stack: RunningStack, db: asyncpg.Connection, trail: Trail
) -> None:
    second, third = trail.charged_events[1:]
    async with _tampering(db, trail.merchant_id):
        seqs = [
            r["seq"]
            for r in await db.fetch(
                "SELECT seq FROM event WHERE id = ANY($1) ORDER BY seq", [second, third]
            )
        ]
        await db.execute("UPDATE event SET seq = -seq WHERE id = ANY($1)", [second, third])
        await db.execute("UPDATE event SET seq = $2 WHERE id = $1", second, seqs[1])
        await db.execute("UPDATE event SET seq = $2 WHERE id = $1", third, seqs[0])
        _assert_broken_at(
            stack,
            trail,
            f"{trail.charged} position 3 {third}: recorded "
            "before the event it follows (rows reordered)",
        )
    _assert_verified(stack, trail)


async def test_events_written_while_checkpoints_were_stopped_are_chained_and_then_covered(
    stack: RunningStack, temporal: Client, db: asyncpg.Connection
) -> None:
    """Chaining does not wait for the checkpoint schedule: a trail written while it is paused
    is chained as it is written (an edit is caught at once), and the first checkpoint taken
    after it covers it (a truncation is caught from then on)."""
    # The schedule is paused for every test here (`checkpoints_on_demand`).
    schedule = temporal.get_schedule_handle(AUDIT_CHECKPOINT_SCHEDULE_ID)
    assert (await schedule.describe()).schedule.state.paused
    written = await new_trail(stack)
    _assert_verified(stack, written)
    await _assert_edit_caught(stack, db, written, 1)
    position = await _checkpointed(temporal, db, written)
    async with _tampering(db, written.merchant_id):
        await db.execute("DELETE FROM event WHERE id = $1", written.charged_events[2])
        _assert_broken_at(
            stack,
            written,
            f"{written.charged} position 3: missing: checkpoint "
            f"{position} names position 3 but the chain ends at 2 (events "
            "deleted from its end)",
        )
    _assert_verified(stack, written, checkpoints=position)


async def test_a_truncated_tail_is_caught_once_a_checkpoint_covered_it(
    stack: RunningStack, temporal: Client, db: asyncpg.Connection, trail: Trail
) -> None:
    position = await _checkpointed(temporal, db, trail)
    _assert_verified(stack, trail, checkpoints=position)
    async with _tampering(db, trail.merchant_id):
        await db.execute("DELETE FROM event WHERE id = $1", trail.charged_events[2])
        _assert_broken_at(
            stack,
            trail,
            f"{trail.charged} position 3: missing: checkpoint "
            f"{position} names position 3 but the chain ends at 2 (events "
            "deleted from its end)",
        )
    _assert_verified(stack, trail, checkpoints=position)


async def test_a_deleted_payment_is_caught_once_a_checkpoint_covered_it(
    stack: RunningStack, temporal: Client, db: asyncpg.Connection, trail: Trail
) -> None:
    position = await _checkpointed(temporal, db, trail)
    async with _tampering(db, trail.merchant_id):
        await db.execute("DELETE FROM event WHERE chain = $1", trail.created)
        _assert_broken_at(
            stack,
            trail,
            f"{trail.created} position 1: missing chain: "
            f"checkpoint {position} names position 1 but the chain has no "
            "events (deleted whole)",
        )
    _assert_verified(stack, trail, checkpoints=position)


async def test_verify_catches_a_tampered_checkpoint(
    stack: RunningStack, temporal: Client, db: asyncpg.Connection, trail: Trail
) -> None:
    position = await _checkpointed(temporal, db, trail)
    scope = scope_of(trail.merchant_id)
    checkpoint_id = await db.fetchval(
        "SELECT id FROM audit_checkpoint WHERE scope = $1 AND position = $2", scope, position
    )
    checkpoints = f"checkpoints of {scope} position {position}"
    async with _tampering(db, trail.merchant_id):  # its recorded root
        await db.execute(
            "UPDATE audit_checkpoint SET root = repeat('0', 64) WHERE id = $1", checkpoint_id
        )
        _assert_broken_at(stack, trail, f"{checkpoints}: its contents do not match its hash")
    async with _tampering(db, trail.merchant_id):  # a head it recorded, gone
        await db.execute(
            "DELETE FROM audit_checkpoint_head WHERE checkpoint_id = $1 AND chain = $2",
            checkpoint_id,
            trail.created,
        )
        _assert_broken_at(
            stack,
            trail,
            f"{checkpoints}: its root does not match the chain "
            "heads it records (a head edited, added or removed)",
        )
    async with _tampering(db, trail.merchant_id):  # a head it recorded, rewritten
        await db.execute(
            "UPDATE audit_checkpoint_head SET hash = repeat('0', 64) WHERE "
            "checkpoint_id = $1 AND chain = $2",
            checkpoint_id,
            trail.charged,
        )
        _assert_broken_at(
            stack,
            trail,
            f"{trail.charged} position 3 {trail.charged_events[2]}: "
            f"checkpoint {position} recorded another hash at this position",
        )
    _assert_verified(stack, trail, checkpoints=position)


async def test_checkpoints_and_events_refuse_rewrites(
    temporal: Client, db: asyncpg.Connection, trail: Trail
) -> None:
    await _checkpointed(temporal, db, trail)
    scope = scope_of(trail.merchant_id)
    for statement in (
        "UPDATE audit_checkpoint SET hash = 'x' WHERE scope = $1",
        "DELETE FROM audit_checkpoint WHERE scope = $1",
        "UPDATE audit_checkpoint_head SET hash = 'x' WHERE checkpoint_id IN "
        "(SELECT id FROM audit_checkpoint WHERE scope = $1)",
        "DELETE FROM audit_checkpoint_head WHERE checkpoint_id IN "
        "(SELECT id FROM audit_checkpoint WHERE scope = $1)",
        "UPDATE event SET hash = 'x' WHERE 'merchant:' || merchant_id = $1",
        "DELETE FROM event WHERE 'merchant:' || merchant_id = $1",
    ):
        with pytest.raises(asyncpg.RaiseError, match="immutable"):
            await db.execute(statement, scope)
    for table in APPEND_ONLY:
        # Rolled back whatever happens: a TRUNCATE that got through must not empty the trail.
        transaction = db.transaction()
        await transaction.start()
        try:
            with pytest.raises(asyncpg.RaiseError, match="immutable"):
                await db.execute(f"TRUNCATE {table} CASCADE")
        finally:
            await transaction.rollback()


async def test_the_whole_trail_verifies(stack: RunningStack) -> None:
    result = await asyncio.to_thread(_audit_cli, stack)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every link holds" in result.stdout
