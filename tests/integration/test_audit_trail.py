"""The audit trail on the real stack: a payment's story rebuilt from its events alone, and every
kind of tampering with the event table (as the database owner, with the append-only trigger
set aside) caught by `durapay audit verify` with the event where it shows."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from temporalio.client import Client

from client import DurapayClient
from core.audit_chain import chain_of
from tests.integration.conftest import CARD_4242, create_intent
from tests.integration.helpers import assert_eventually, charge, signed_merchant
from tests.stack import RunningStack
from workers.schedules import AUDIT_CHECKPOINT_SCHEDULE_ID

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


def _audit_cli(stack: RunningStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "durapay"), "audit", "verify", *args], env=stack.env,
                          text=True, capture_output=True, timeout=120, check=False)


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
    return response.json()["data"]  # type: ignore[no-any-return]


async def test_a_payments_story_rebuilds_from_its_events_alone(durapay: DurapayClient) -> None:
    intent = await create_intent(durapay, 2499, captureMethod="manual")
    assert (await charge(durapay, intent["id"], CARD_4242)).status_code == 200
    captured = await durapay.post(f"/payment-intents/{intent['id']}/capture",
                                  {"amountInCents": 2000})
    assert captured.status_code == 200, captured.text
    refunded = await durapay.post(f"/payment-intents/{intent['id']}/refunds",
                                  {"amountInCents": 500})
    assert refunded.status_code in (200, 201), refunded.text
    final = (await durapay.get(f"/payment-intents/{intent['id']}")).json()

    events = await _events(durapay, intent["id"])
    assert [e["type"] for e in events] == [
        "payment.created", "payment.processing", "payment.requires_capture",
        "payment.succeeded", "payment.partially_refunded"]
    assert [e["intentSequence"] for e in events] == [1, 2, 3, 4, 5]
    # Replay: each event's `previous` is exactly the state the events before it left.
    story, state = [], None
    for event in events:
        data = event["data"]
        assert data["previous"] == state, event["type"]
        state = {k: data[k] for k in ("status", "amountInCents", "amountCapturable",
                                      "amountReceived", "amountRefunded")}
        txn = data["transaction"]
        story.append(f"{event['intentSequence']} {event['type']}: status {state['status']}, "
                     f"received {state['amountReceived']}, refunded {state['amountRefunded']}"
                     + (f" ({txn['type']} {txn['amountInCents']} {txn['status']})" if txn
                        else ""))
    print("\n" + "\n".join(story))
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


@asynccontextmanager
async def _tampering(db: asyncpg.Connection, merchant_id: str) -> AsyncIterator[None]:
    """Tamper with one merchant's chain as the table's owner, then put every row back as it
    was, so the session's other tests see an intact trail."""
    chain = chain_of(merchant_id)
    saved = await db.fetch("SELECT * FROM event WHERE chain = $1", chain)
    head = await db.fetchrow("SELECT * FROM audit_chain_head WHERE chain = $1", chain)
    await db.execute("ALTER TABLE event DISABLE TRIGGER event_append_only")
    try:
        yield
    finally:
        async with db.transaction():
            await db.execute("DELETE FROM event WHERE chain = $1", chain)
            columns = list(saved[0].keys())
            await db.executemany(
                f"INSERT INTO event ({', '.join(columns)}) VALUES "
                f"({', '.join(f'${i + 1}' for i in range(len(columns)))})",
                [tuple(row.values()) for row in saved])
            await db.execute("UPDATE audit_chain_head SET chain_seq = $2, hash = $3 "
                             "WHERE chain = $1", chain, head["chain_seq"], head["hash"])
        await db.execute("ALTER TABLE event ENABLE TRIGGER event_append_only")


@pytest.fixture
async def chain_of_four(stack: RunningStack) -> AsyncIterator[tuple[str, list[str]]]:
    """A fresh merchant whose chain holds four events (a charge and a second intent); its
    event ids in chain order."""
    async with signed_merchant(stack, f"Audit {uuid.uuid4().hex[:6]}") as durapay:
        first = await create_intent(durapay, 1200)
        assert (await charge(durapay, first["id"], CARD_4242)).status_code == 200
        await create_intent(durapay, 300)
    connection = await asyncpg.connect(stack.database_url)
    try:
        merchant_id = await connection.fetchval(
            "SELECT merchant_id FROM payment_intent WHERE id = $1", first["id"])
        ids = [r["id"] for r in await connection.fetch(
            "SELECT id FROM event WHERE chain = $1 ORDER BY chain_seq", chain_of(merchant_id))]
    finally:
        await connection.close()
    assert len(ids) == 4
    yield merchant_id, ids


def _assert_verified(stack: RunningStack, merchant_id: str) -> None:
    result = _audit_cli(stack, "--merchant", merchant_id)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 events verified, ok" in result.stdout


def _assert_broken_at(stack: RunningStack, merchant_id: str, event_id: str | None,
                      reason: str) -> str:
    result = _audit_cli(stack, "--merchant", merchant_id)
    assert result.returncode == 1, result.stdout + result.stderr
    [verdict] = [line for line in result.stdout.splitlines() if line.startswith("audit:")]
    assert reason in verdict, verdict
    if event_id is not None:
        assert event_id in verdict, verdict
    print(f"\n$ durapay audit verify --merchant {merchant_id}\n{result.stdout}")
    return verdict


async def test_verify_catches_an_edited_event(stack: RunningStack, db: asyncpg.Connection,
                                              chain_of_four: tuple[str, list[str]]) -> None:
    merchant_id, ids = chain_of_four
    _assert_verified(stack, merchant_id)
    async with _tampering(db, merchant_id):
        await db.execute("UPDATE event SET data = jsonb_set(data, '{amountReceived}', '1') "
                         "WHERE id = $1", ids[2])
        _assert_broken_at(stack, merchant_id, ids[2], "contents do not match its hash")
    _assert_verified(stack, merchant_id)


async def test_verify_catches_a_deleted_event(stack: RunningStack, db: asyncpg.Connection,
                                              chain_of_four: tuple[str, list[str]]) -> None:
    merchant_id, ids = chain_of_four
    async with _tampering(db, merchant_id):
        await db.execute("DELETE FROM event WHERE id = $1", ids[1])
        _assert_broken_at(stack, merchant_id, ids[2], "missing link")
    _assert_verified(stack, merchant_id)


async def test_verify_catches_reordered_events(stack: RunningStack, db: asyncpg.Connection,
                                               chain_of_four: tuple[str, list[str]]) -> None:
    merchant_id, ids = chain_of_four
    async with _tampering(db, merchant_id):  # swap two events' places in the chain
        await db.execute("UPDATE event SET chain_seq = -chain_seq WHERE id = ANY($1)", ids[1:3])
        await db.execute("UPDATE event SET chain_seq = 2 WHERE id = $1", ids[2])
        await db.execute("UPDATE event SET chain_seq = 3 WHERE id = $1", ids[1])
        _assert_broken_at(stack, merchant_id, ids[2], "")
    async with _tampering(db, merchant_id):  # or swap the order they were recorded in
        seqs = [r["seq"] for r in await db.fetch(
            "SELECT seq FROM event WHERE id = ANY($1) ORDER BY seq", ids[1:3])]
        await db.execute("UPDATE event SET seq = -seq WHERE id = ANY($1)", ids[1:3])
        await db.execute("UPDATE event SET seq = $2 WHERE id = $1", ids[1], seqs[1])
        await db.execute("UPDATE event SET seq = $2 WHERE id = $1", ids[2], seqs[0])
        _assert_broken_at(stack, merchant_id, ids[2], "recorded before the event it follows")
    _assert_verified(stack, merchant_id)


async def test_verify_catches_a_truncated_tail_by_the_checkpoint(
        stack: RunningStack, temporal: Client, db: asyncpg.Connection,
        chain_of_four: tuple[str, list[str]]) -> None:
    merchant_id, ids = chain_of_four
    chain = chain_of(merchant_id)
    handle = temporal.get_schedule_handle(AUDIT_CHECKPOINT_SCHEDULE_ID)
    await handle.trigger()

    async def checkpointed() -> bool:
        position = await db.fetchval(
            "SELECT max(chain_seq) FROM audit_checkpoint WHERE chain = $1", chain)
        assert position == 4, position
        return True

    await assert_eventually(checkpointed, timeout=60)
    async with _tampering(db, merchant_id):
        # The tail goes, and the writer's head is moved back to cover it: only the
        # checkpoint, kept apart and append-only, still knows the chain reached further.
        await db.execute("DELETE FROM event WHERE id = $1", ids[3])
        await db.execute("UPDATE audit_chain_head SET (chain_seq, hash) = (SELECT chain_seq, "
                         "hash FROM event WHERE id = $2) WHERE chain = $1", chain, ids[2])
        _assert_broken_at(stack, merchant_id, None, "a recorded checkpoint names position 4")
    _assert_verified(stack, merchant_id)


async def test_checkpoints_and_events_refuse_rewrites(db: asyncpg.Connection,
                                                      chain_of_four: tuple[str, list[str]]
                                                      ) -> None:
    merchant_id, ids = chain_of_four
    await db.execute("INSERT INTO audit_checkpoint (chain, chain_seq, hash) SELECT chain, "
                     "chain_seq, hash FROM audit_chain_head WHERE chain = $1",
                     chain_of(merchant_id))
    for statement in ("UPDATE audit_checkpoint SET hash = 'x' WHERE chain = $1",
                      "DELETE FROM audit_checkpoint WHERE chain = $1",
                      "UPDATE event SET hash = 'x' WHERE chain = $1",
                      "DELETE FROM event WHERE chain = $1"):
        with pytest.raises(asyncpg.RaiseError, match="immutable"):
            await db.execute(statement, chain_of(merchant_id))
    for table in ("audit_checkpoint", "event"):
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

