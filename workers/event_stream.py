"""The event stream: every committed event, in commit order, from the database's own log.

`durapay events stream` runs this. It reads the event table's changes from the write-ahead log
through a logical replication slot (core/db/replication.py, pgoutput decoded by
core/db/pgoutput.py), hands each committed transaction's events to a sink, and moves the slot
past them only once the sink has confirmed them. Killed at any line, it resumes from the last
confirmed position: nothing is lost; what was sent but not confirmed is sent again, and the
event id identifies the duplicate (at least once).

`from_seq` first copies the table's events from that `seq` on (oldest first), then streams:
a new consumer builds its view from the beginning. The slot is created before the copy, so an
event committed meanwhile is in the copy, in the stream, or in both; never in neither.

An Update, Delete or Truncate of the append-only table in the log can only come from someone
who set its trigger aside: it is logged as an error (and counted), never forwarded as an event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from core.db import replication
from core.db.pgoutput import Begin, Commit, Decoder, RowChange, Truncate
from workers.event_sinks import EventSink

log = logging.getLogger("durapay.events")

EVENT_TABLE = "event"
_COLUMNS = ("seq, id, type, merchant_id, payment_intent_id, transaction_id, intent_seq, chain, "
            "chain_seq, prev_hash, hash, data, created_at")


class SlotBusy(RuntimeError):
    pass


# What a database restart, failover or severed connection looks like from here.
CONNECTION_LOST = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                   asyncpg.AdminShutdownError, asyncpg.CannotConnectNowError)
MAX_RECONNECT_DELAY = 30.0


@dataclass
class StreamStats:
    snapshot: int = 0
    streamed: int = 0
    transactions: int = 0
    rewrites_seen: int = 0
    confirmed_lsn: int = 0


@dataclass
class _Transaction:
    end_lsn: int = 0
    committed_at: datetime | None = None
    events: list[dict[str, Any]] = field(default_factory=list)


def event_message(row: Mapping[str, Any], *, source: str, lsn: int | None = None,
                  committed_at: datetime | None = None) -> dict[str, Any]:
    """One event as the stream delivers it: the whole row, camelCase like the API."""
    created_at = row["created_at"]
    return {
        "id": row["id"], "seq": row["seq"], "type": row["type"],
        "merchantId": row["merchant_id"], "paymentIntentId": row["payment_intent_id"],
        "transactionId": row["transaction_id"], "intentSequence": row["intent_seq"],
        "chain": row["chain"], "chainSeq": row["chain_seq"], "prevHash": row["prev_hash"],
        "hash": row["hash"], "data": row["data"],
        "createdAt": _iso(created_at),
        "source": source,
        "commitLsn": replication.int_to_lsn(lsn) if lsn is not None else None,
        "committedAt": _iso(committed_at) if committed_at else None,
    }


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class EventStream:
    def __init__(self, connection: asyncpg.Connection, sink: EventSink, *, slot: str,
                 batch: int = 500, poll_seconds: float = 0.2,
                 stats: StreamStats | None = None) -> None:
        self._db, self._sink, self.slot = connection, sink, slot
        self._batch, self._poll = batch, poll_seconds
        self.stats = stats or StreamStats()

    async def open(self) -> bool:
        """Take the slot for this consumer (one at a time), creating it if needed."""
        if not await replication.take_consumer_lock(self._db, self.slot):
            raise SlotBusy(f"another consumer is streaming slot {self.slot}")
        # Timestamps in the decoded rows are printed in the session's zone: make it UTC.
        await self._db.execute("SET TIME ZONE 'UTC'")
        status, created = await replication.ensure_slot(self._db, self.slot)
        self.stats.confirmed_lsn = status.confirmed_lsn
        return created

    async def copy_from_table(self, from_seq: int) -> None:
        """The table's events from `from_seq` on, oldest first, a confirmed batch at a time."""
        after = from_seq - 1
        while True:
            rows = await self._db.fetch(
                f"SELECT {_COLUMNS} FROM event WHERE seq > $1 ORDER BY seq LIMIT $2",
                after, self._batch)
            if not rows:
                return
            await self._sink.send([event_message(r, source="snapshot") for r in rows])
            await self._sink.confirm()
            self.stats.snapshot += len(rows)
            after = rows[-1]["seq"]

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            caught_up = await self.step()
            if caught_up:
                try:
                    await asyncio.wait_for(stop.wait(), self._poll)
                except TimeoutError:
                    pass

    async def step(self) -> bool:
        """Deliver what the slot holds (up to a batch); True when nothing more was waiting."""
        target = await replication.flushed_lsn(self._db)
        messages = await replication.peek(self._db, self.slot, target, self._batch)
        transactions = self._transactions(messages)
        events = [e for t in transactions for e in t.events]
        if events:
            await self._sink.send(events)
            await self._sink.confirm()
        self.stats.streamed += len(events)
        self.stats.transactions += len(transactions)
        # Everything before `target` was decoded unless PostgreSQL stopped at the batch limit:
        # then only up to the last whole transaction it returned.
        caught_up = len(messages) < self._batch
        position = target if caught_up else (transactions[-1].end_lsn if transactions else 0)
        if position > self.stats.confirmed_lsn:
            await replication.advance(self._db, self.slot, position)
            self.stats.confirmed_lsn = position
        return caught_up

    def _transactions(self, messages: list[tuple[int, bytes]]) -> list[_Transaction]:
        decoder, done, current, commit_lsn = Decoder(), [], _Transaction(), 0
        for _, data in messages:
            message = decoder.decode(data)
            if isinstance(message, Begin):
                current = _Transaction(committed_at=message.committed_at)
                commit_lsn = message.final_lsn
            elif isinstance(message, RowChange) and message.relation.name == EVENT_TABLE:
                if message.kind == "insert" and message.new is not None:
                    # The commit's position, not the row's: it orders events as committed.
                    current.events.append(event_message(
                        message.new, source="wal", lsn=commit_lsn,
                        committed_at=current.committed_at))
                else:
                    self._rewrite_seen(message.kind, message.old or message.new or {})
            elif isinstance(message, Truncate):
                self._rewrite_seen("truncate", {})
            elif isinstance(message, Commit):
                current.end_lsn = message.end_lsn
                done.append(current)
                current = _Transaction()
        return done

    def _rewrite_seen(self, kind: str, row: Mapping[str, Any]) -> None:
        self.stats.rewrites_seen += 1
        log.error("the append-only event table was rewritten: %s of event %s (seq %s); "
                  "run `durapay audit verify`", kind, row.get("id", "?"), row.get("seq", "?"))


async def stream_until_stopped(connect: Callable[[], Awaitable[asyncpg.Connection]],
                               sink: EventSink, stop: asyncio.Event, *, slot: str,
                               batch: int = 500, from_seq: int | None = None,
                               on_slot_created: Callable[[], None] | None = None,
                               ) -> StreamStats:
    """Stream until `stop` is set, through database restarts: a lost connection is opened
    again (backoff 1 s doubling to 30 s) and the stream goes on from the slot's confirmed
    position, so nothing is lost and at most the unconfirmed batch is sent again.

    Another consumer on the slot at the first start is an error (SlotBusy). After a lost
    connection it is waited out: the old session's lock goes when the server notices it."""
    stats, delay, copied, first = StreamStats(), 1.0, from_seq is None, True
    while not stop.is_set():
        connection: asyncpg.Connection | None = None
        try:
            connection = await connect()
            stream = EventStream(connection, sink, slot=slot, batch=batch, stats=stats)
            try:
                created = await stream.open()
            except SlotBusy:
                if first:
                    raise
                log.warning("slot %s still held by the lost session; retrying", slot)
                raise ConnectionError("slot busy after reconnecting") from None
            if created and on_slot_created is not None:
                on_slot_created()
            if not copied:
                await stream.copy_from_table(from_seq or 1)
                copied = True
            if not first:
                log.warning("event stream resumed on slot %s at %s", slot,
                            replication.int_to_lsn(stats.confirmed_lsn))
            first, delay = False, 1.0
            await stream.run(stop)
        except CONNECTION_LOST as error:
            first = False if connection is not None else first
            log.warning("event stream lost the database (%s: %s); reconnecting in %.0f s",
                        type(error).__name__, error, delay)
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass
            delay = min(delay * 2, MAX_RECONNECT_DELAY)
        finally:
            if connection is not None and not connection.is_closed():
                await connection.close()
    return stats
