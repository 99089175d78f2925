"""The event table's logical replication slot, through PostgreSQL's SQL functions.

The publication `durapay_events` (created by the audit-chain migration) names the event table;
a slot decodes the write-ahead log with the built-in `pgoutput` plugin from where its consumer
last confirmed. `peek` reads without consuming; `advance` moves the slot once the sink has
confirmed, so a consumer that dies between the two reads the same changes again (at least
once). The server keeps the WAL a slot has not confirmed: a stalled consumer holds disk (see
`slot_status` and the `durapay_event_stream_lag_bytes` metric), up to the server's
`max_slot_wal_keep_size`, past which it drops the slot's WAL and the slot is lost (`SlotLost`).

A consumer that also wants the events committed before its slot creates the slot through a
replication connection (`create_slot_with_snapshot`): PostgreSQL then gives that connection's
transaction the slot's own snapshot, so the table as it reads there holds exactly the
transactions committed before the slot's consistent point, and the slot decodes exactly those
committed after it: no gap and no overlap between the copy and the stream. (The SQL function
`pg_create_logical_replication_slot` exports no snapshot: any snapshot taken beside it misses
or repeats the transactions that commit while the slot is being created.)

Every delivered event carries a cursor, `<LSN>:<index>`, that orders events as committed:
a streamed event's LSN is the end of its transaction's commit record (the position the slot
confirms to once that transaction is delivered) and its index is its place in that
transaction; the copy's rows share the slot's consistent point, which precedes every commit the
slot decodes, indexed in `seq` order. Cursors only grow along a slot's deliveries, including
from one slot to the next one created after it.

Needs `wal_level = logical` and a role with the REPLICATION attribute (or a superuser).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

PUBLICATION = "durapay_events"
PLUGIN = "pgoutput"
# A consumer holds the advisory lock (CONSUMER_LOCK_CLASS, hashtext(slot)) for as long as its
# connection lives: one consumer per slot, and the sign that one is running. (The slot itself
# is "active" only during each read: the SQL functions take it and give it back.)
CONSUMER_LOCK_CLASS = 0x44505354


# WAL positions are ints here (asyncpg's pg_lsn codec); PostgreSQL prints them as `0/16B3748`.
def lsn_to_int(lsn: str) -> int:
    high, low = lsn.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def int_to_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


Cursor = tuple[int, int]  # (LSN, index): compares in commit order


def format_cursor(lsn: int, index: int) -> str:
    return f"{int_to_lsn(lsn)}:{index}"


_CURSOR = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8}):([0-9]{1,9})$")


def parse_cursor(text: str) -> Cursor:
    match = _CURSOR.match(text.strip())
    if match is None:
        raise ValueError(
            f"not an event stream cursor: {text!r} (expected LSN:index, "
            "e.g. 0/16B3748:3, as in an event's `cursor`)"
        )
    return (int(match[1], 16) << 32) + int(match[2], 16), int(match[3])


# PostgreSQL's own rule for slot names; it is also what makes a name safe to splice into the
# replication command, which takes no parameters.
_SLOT_NAME = re.compile(r"^[a-z0-9_]{1,63}$")


def check_slot_name(slot: str) -> str:
    if _SLOT_NAME.match(slot) is None:
        raise ValueError(
            f"replication slot names are 1 to 63 lowercase letters, digits and "
            f"underscores: {slot!r}"
        )
    return slot


@dataclass(frozen=True)
class SlotStatus:
    slot: str
    # A consumer is connected and holds the slot's consumer lock.
    consumer: bool
    confirmed_lsn: int
    # WAL written since the slot's confirmed position: what the server keeps for it.
    lag_bytes: int
    # `lost` once max_slot_wal_keep_size made the server drop WAL the slot still needed.
    wal_status: str | None


class SlotLost(RuntimeError):
    """The server dropped WAL the slot had not confirmed: the events committed after the
    consumer's last confirmed cursor are no longer in the log and must be read from the table
    (`durapay events stream --rebuild`)."""

    WAL_REMOVED = "the server removed WAL it had not confirmed (max_slot_wal_keep_size)"
    VANISHED = (
        "it is no longer on the server (dropped other than by `durapay events "
        "drop-slot`, or a failover to a server without it)"
    )

    def __init__(
        self, slot: str, last_cursor: str | None = None, *, reason: str = WAL_REMOVED
    ) -> None:
        since = f"after cursor {last_cursor}" if last_cursor else "after its last confirmed one"
        super().__init__(
            f"replication slot {slot} is lost: {reason}, so events committed {since} cannot "
            "be streamed. "
            f"Rebuild the consumer's view from the table: durapay events stream --slot {slot} "
            "--rebuild (drops the slot, copies every event committed before a new slot, then "
            "streams; drop the events you already hold by id)"
        )
        self.slot = slot


async def take_consumer_lock(connection: asyncpg.Connection, slot: str) -> bool:
    """Become the slot's one consumer, until this connection closes (or a kill closes it)."""
    return bool(
        await connection.fetchval(
            "SELECT pg_try_advisory_lock($1, hashtext($2))", CONSUMER_LOCK_CLASS, slot
        )
    )


async def create_slot(connection: asyncpg.Connection, slot: str) -> int:
    """A slot that starts at the current WAL position (the events before it are not read);
    returns its consistent point."""
    return int(
        await connection.fetchval(
            "SELECT lsn FROM pg_create_logical_replication_slot($1, $2)", slot, PLUGIN
        )
    )


async def create_slot_with_snapshot(replication: asyncpg.Connection, slot: str) -> int:
    """Create the slot on `replication` (a connection opened with `replication=database`) and
    leave that connection in a read-only transaction on the slot's snapshot; returns the
    slot's consistent point. Read the table with `copy_rows`, then end with `COMMIT`."""
    # A walsender takes SQL through the simple query protocol only: no parameters, and no
    # rows but through COPY. The slot name is checked, so it can be spliced in.
    await replication.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    await replication.execute(
        f"CREATE_REPLICATION_SLOT {check_slot_name(slot)} LOGICAL {PLUGIN} (SNAPSHOT 'use')"
    )
    [row] = await copy_rows(
        replication,
        f"SELECT confirmed_flush_lsn::text AS lsn FROM pg_replication_slots "
        f"WHERE slot_name = '{slot}'",
    )
    return lsn_to_int(str(row["lsn"]))


async def copy_rows(
    replication: asyncpg.Connection,
    query: str,
    on_rows: Callable[[list[dict[str, Any]]], Awaitable[None]] | None = None,
) -> list[dict[str, Any]]:
    """The rows of `query` (no parameters) as JSON objects, through COPY (the one way a
    walsender returns rows). With `on_rows`, each chunk's rows go to it as they arrive and
    nothing is kept; else all are returned."""
    kept: list[dict[str, Any]] = []
    tail = b""

    async def chunk(data: bytes) -> None:
        nonlocal tail
        # row_to_json writes no line breaks (they are escaped inside JSON strings), so one
        # CSV record is one line; a chunk may end in the middle of one.
        lines = (tail + data).split(b"\n")
        tail = lines.pop()
        rows = (
            [
                json.loads(record[0])
                for record in csv.reader(io.StringIO(b"\n".join(lines).decode()))
            ]
            if lines
            else []
        )
        if on_rows is None:
            kept.extend(rows)
        elif rows:
            await on_rows(rows)

    await replication.copy_from_query(
        f"SELECT row_to_json(r) FROM ({query}) AS r", output=chunk, format="csv"
    )
    assert not tail, "COPY ended in the middle of a row"
    return kept


async def peek(
    connection: asyncpg.Connection, slot: str, upto_lsn: int, limit: int
) -> list[tuple[int, bytes]]:
    """Whole transactions committed before `upto_lsn`, oldest first, as (lsn, pgoutput
    message). PostgreSQL stops after the transaction that reaches `limit` messages. A slot
    the server invalidated meanwhile raises SlotLost."""
    try:
        rows = await connection.fetch(
            "SELECT lsn, data FROM pg_logical_slot_peek_binary_changes("
            "$1, $2::pg_lsn, $3, 'proto_version', '1', 'publication_names', $4)",
            slot,
            upto_lsn,
            limit,
            PUBLICATION,
        )
    except asyncpg.ObjectNotInPrerequisiteStateError:
        # "can no longer get changes from replication slot": invalidated (lost WAL).
        status = await slot_status(connection, slot)
        if status is not None and status.wal_status == "lost":
            raise SlotLost(slot, await last_cursor(connection, slot)) from None
        raise
    return [(int(r["lsn"]), bytes(r["data"])) for r in rows]


async def advance(connection: asyncpg.Connection, slot: str, lsn: int) -> None:
    await connection.execute("SELECT pg_replication_slot_advance($1, $2::pg_lsn)", slot, lsn)


async def flushed_lsn(connection: asyncpg.Connection) -> int:
    return int(await connection.fetchval("SELECT pg_current_wal_flush_lsn()"))


async def slot_status(connection: asyncpg.Connection, slot: str) -> SlotStatus | None:
    return next((s for s in await slot_statuses(connection) if s.slot == slot), None)


async def slot_statuses(connection: asyncpg.Connection) -> list[SlotStatus]:
    """Every logical slot on the database (Durapay's and any other), with its lag."""
    rows = await connection.fetch(SLOT_STATUS_SQL)
    return [
        SlotStatus(
            r["slot_name"], r["consumer"], lsn_to_int(r["confirmed"]), r["lag"], r["wal_status"]
        )
        for r in rows
    ]


# Every logical slot of this database: its confirmed position, the WAL it holds, and whether a
# consumer holds its lock (a two-key advisory lock shows in pg_locks as classid, objid,
# objsubid = 2). Also read by the workers' metrics (core/metrics.py).
SLOT_STATUS_SQL = f"""
SELECT slot_name, coalesce(confirmed_flush_lsn, '0/0')::text AS confirmed,
    coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::bigint AS lag,
    wal_status,
    EXISTS (SELECT 1 FROM pg_locks AS lock WHERE lock.locktype = 'advisory'
            AND lock.granted AND lock.objsubid = 2
            AND lock.classid = {CONSUMER_LOCK_CLASS}::int8::oid
            -- the lock's key as pg_locks shows it: the int4 hash's 32 bits, unsigned
            AND lock.objid = (hashtext(slot_name)::int8 & 4294967295)::oid
            AND lock.database = (SELECT oid FROM pg_database
                                 WHERE datname = current_database())) AS consumer
FROM pg_replication_slots
WHERE slot_type = 'logical' AND database = current_database()
ORDER BY slot_name
"""


async def drop_slot(connection: asyncpg.Connection, slot: str) -> bool:
    """Drop the slot (its WAL is freed at once) and what was recorded about it."""
    dropped = await connection.fetchval(
        "SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots "
        "WHERE slot_name = $1",
        slot,
    )
    recorded = await connection.fetchval(
        "WITH gone AS (DELETE FROM event_stream_slot WHERE slot = $1 RETURNING 1) "
        "SELECT count(*) FROM gone",
        slot,
    )
    return bool(dropped or recorded)


# ---- What a slot's consumer has done (the event_stream_slot table) ----------------------------
@dataclass(frozen=True)
class SlotRecord:
    slot: str
    snapshot: bool  # the consumer asked for the events committed before the slot
    consistent_lsn: int | None
    snapshot_rows: int | None
    snapshot_done: bool
    last_cursor: str | None


async def slot_record(connection: asyncpg.Connection, slot: str) -> SlotRecord | None:
    row = await connection.fetchrow(
        "SELECT slot, snapshot, consistent_lsn, snapshot_rows, snapshot_done_at IS NOT NULL "
        "AS done, last_cursor FROM event_stream_slot WHERE slot = $1",
        slot,
    )
    if row is None:
        return None
    lsn = row["consistent_lsn"]
    return SlotRecord(
        row["slot"],
        row["snapshot"],
        lsn_to_int(lsn) if lsn else None,
        row["snapshot_rows"],
        row["done"],
        row["last_cursor"],
    )


async def record_slot(connection: asyncpg.Connection, slot: str, *, snapshot: bool) -> None:
    """Written before the slot is created: a consumer killed between the two finds a record
    of a copy that never finished, and starts that copy over."""
    await connection.execute(
        "INSERT INTO event_stream_slot (slot, snapshot) VALUES ($1, $2) ON CONFLICT (slot) DO "
        "UPDATE SET snapshot = $2, consistent_lsn = NULL, snapshot_rows = NULL, "
        "snapshot_done_at = NULL, last_cursor = NULL, created_at = now()",
        slot,
        snapshot,
    )


async def record_consistent_point(connection: asyncpg.Connection, slot: str, lsn: int) -> None:
    await connection.execute(
        "UPDATE event_stream_slot SET consistent_lsn = $2 WHERE slot = $1", slot, int_to_lsn(lsn)
    )


async def record_snapshot_done(
    connection: asyncpg.Connection, slot: str, rows: int, cursor: str | None
) -> None:
    await connection.execute(
        "UPDATE event_stream_slot SET snapshot_rows = $2, snapshot_done_at = now(), "
        "last_cursor = coalesce($3, last_cursor) WHERE slot = $1",
        slot,
        rows,
        cursor,
    )


async def record_cursor(connection: asyncpg.Connection, slot: str, cursor: str) -> None:
    await connection.execute(
        "UPDATE event_stream_slot SET last_cursor = $2 WHERE slot = $1", slot, cursor
    )


async def last_cursor(connection: asyncpg.Connection, slot: str) -> str | None:
    return await connection.fetchval(
        "SELECT last_cursor FROM event_stream_slot WHERE slot = $1", slot
    )


async def unlimited_wal_keep(connection: asyncpg.Connection) -> bool:
    """The server keeps a slot's WAL without limit: a stalled consumer can fill its disk."""
    return (
        str(await connection.fetchval("SELECT current_setting('max_slot_wal_keep_size')")) == "-1"
    )
