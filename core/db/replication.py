"""The event table's logical replication slot, through PostgreSQL's SQL functions.

The publication `durapay_events` (created by the audit-chain migration) names the event table;
a slot decodes the write-ahead log with the built-in `pgoutput` plugin from where its consumer
last confirmed. `peek` reads without consuming; `advance` moves the slot once the sink has
confirmed, so a consumer that dies between the two reads the same changes again (at least
once). The server keeps the WAL a slot has not confirmed: a stalled consumer holds disk (see
`slot_status` and the `durapay_event_stream_lag_bytes` metric).

Needs `wal_level = logical` and a role with the REPLICATION attribute (or a superuser).
"""

from __future__ import annotations

from dataclasses import dataclass

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
    pass


async def take_consumer_lock(connection: asyncpg.Connection, slot: str) -> bool:
    """Become the slot's one consumer, until this connection closes (or a kill closes it)."""
    return bool(await connection.fetchval(
        "SELECT pg_try_advisory_lock($1, hashtext($2))", CONSUMER_LOCK_CLASS, slot))


async def ensure_slot(connection: asyncpg.Connection, slot: str) -> tuple[SlotStatus, bool]:
    """The slot's status, creating the slot if it is not there (True when created: it starts
    at the current WAL position; events committed before it are read from the table,
    `--from-seq`)."""
    status = await slot_status(connection, slot)
    if status is not None:
        if status.wal_status == "lost":
            raise SlotLost(f"replication slot {slot} lost WAL it had not confirmed "
                           "(max_slot_wal_keep_size): drop it and rebuild with --from-seq")
        return status, False
    created = True
    try:
        await connection.execute(
            "SELECT pg_create_logical_replication_slot($1, $2)", slot, PLUGIN)
    except asyncpg.DuplicateObjectError:
        created = False  # another consumer created it meanwhile
    status = await slot_status(connection, slot)
    assert status is not None, slot
    return status, created


async def peek(connection: asyncpg.Connection, slot: str, upto_lsn: int,
               limit: int) -> list[tuple[int, bytes]]:
    """Whole transactions committed before `upto_lsn`, oldest first, as (lsn, pgoutput
    message). PostgreSQL stops after the transaction that reaches `limit` messages."""
    rows = await connection.fetch(
        "SELECT lsn, data FROM pg_logical_slot_peek_binary_changes("
        "$1, $2::pg_lsn, $3, 'proto_version', '1', 'publication_names', $4)",
        slot, upto_lsn, limit, PUBLICATION)
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
    return [SlotStatus(r["slot_name"], r["consumer"], lsn_to_int(r["confirmed"]), r["lag"],
                       r["wal_status"]) for r in rows]


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
    dropped = await connection.fetchval(
        "SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots "
        "WHERE slot_name = $1", slot)
    return bool(dropped)
