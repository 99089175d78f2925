"""The event stream: every committed event, in commit order, from the database's own log.

`durapay events stream` runs this. It reads the event table's changes from the write-ahead log
through a logical replication slot (core/db/replication.py, pgoutput decoded by
core/db/pgoutput.py), hands each committed transaction's events to a sink, and moves the slot
past them only once the sink has confirmed them. Killed at any line, it resumes from the last
confirmed position: nothing is lost; what was sent but not confirmed is sent again, and the
event id identifies the duplicate (at least once).

Every event carries a cursor (`<LSN>:<index>`, core/db/replication.py) that grows in commit
order; a consumer resumes by it, never by `seq` (which is taken at insert, not at commit, so a
later `seq` can commit first).

With `snapshot`, a new slot's consumer first receives the table's events committed before the
slot (`source: snapshot`): the slot is created through a replication connection whose
transaction reads the table on the slot's own snapshot, so the copy and the stream meet with
no gap and no overlap. The copy is recorded as done (table `event_stream_slot`) once the sink
confirmed it: a restart streams on from the slot and never copies again. A copy cut short (a
kill, a lost connection) cannot be resumed on the same snapshot: the slot is dropped and the
copy starts over on a new one, under the new slot's cursors. `rebuild` does that on purpose,
for a consumer whose sink lost what it held.

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
from core.db.replication import Cursor, format_cursor, parse_cursor
from workers.event_sinks import EventSink

log = logging.getLogger("durapay.events")

EVENT_TABLE = "event"
_COLUMNS = (
    "seq, id, type, merchant_id, payment_intent_id, transaction_id, intent_seq, chain, "
    "chain_seq, prev_hash, hash, data, created_at"
)


class SlotBusy(RuntimeError):
    pass


class CursorGone(RuntimeError):
    """The consumer asked for the events after a cursor its sink had confirmed past: the slot
    no longer holds them."""


# What a database restart, failover or severed connection looks like from here.
CONNECTION_LOST = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.AdminShutdownError,
    asyncpg.CannotConnectNowError,
)
MAX_RECONNECT_DELAY = 30.0


@dataclass
class StreamStats:
    snapshot: int = 0
    streamed: int = 0
    transactions: int = 0
    rewrites_seen: int = 0
    confirmed_lsn: int = 0
    last_cursor: str | None = None


@dataclass
class _Transaction:
    commit_lsn: int = 0
    end_lsn: int = 0
    committed_at: datetime | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)


def event_message(
    row: Mapping[str, Any],
    *,
    source: str,
    cursor: str,
    lsn: int | None = None,
    committed_at: datetime | None = None,
) -> dict[str, Any]:
    """One event as the stream delivers it: the whole row, camelCase like the API, with its
    cursor (the position to resume after)."""
    created_at = row["created_at"]
    return {
        "id": row["id"],
        "seq": row["seq"],
        "type": row["type"],
        "merchantId": row["merchant_id"],
        "paymentIntentId": row["payment_intent_id"],
        "transactionId": row["transaction_id"],
        "intentSequence": row["intent_seq"],
        "chain": row["chain"],
        "chainSeq": row["chain_seq"],
        "prevHash": row["prev_hash"],
        "hash": row["hash"],
        "data": row["data"],
        "createdAt": _iso(created_at),
        "source": source,
        "cursor": cursor,
        "commitLsn": replication.int_to_lsn(lsn) if lsn is not None else None,
        "committedAt": _iso(committed_at) if committed_at else None,
    }


def row_from_json(row: dict[str, Any]) -> dict[str, Any]:
    """A row as `row_to_json` wrote it (the copy) in the types the WAL decoder gives."""
    return {**row, "created_at": datetime.fromisoformat(row["created_at"])}


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class EventStream:
    def __init__(
        self,
        connection: asyncpg.Connection,
        sink: EventSink,
        *,
        slot: str,
        batch: int = 500,
        poll_seconds: float = 0.2,
        stats: StreamStats | None = None,
        after: Cursor | None = None,
    ) -> None:
        self._db, self._sink, self.slot = connection, sink, slot
        self._batch, self._poll = batch, poll_seconds
        self.stats = stats or StreamStats()
        # Events at or before this cursor are not delivered (the sink holds them).
        self._after = after

    async def open(self) -> None:
        """Take the slot for this consumer (one at a time)."""
        if not await replication.take_consumer_lock(self._db, self.slot):
            raise SlotBusy(f"another consumer is streaming slot {self.slot}")
        # Timestamps in the decoded rows are printed in the session's zone: make it UTC.
        await self._db.execute("SET TIME ZONE 'UTC'")

    async def prepare(
        self,
        *,
        snapshot: bool,
        rebuild: bool,
        connect_replication: Callable[[], Awaitable[asyncpg.Connection]] | None,
    ) -> bool:
        """Make the slot ready to stream: as it is, or created (True), after copying the table
        when the consumer asked for it or a copy was cut short."""
        status = await replication.slot_status(self._db, self.slot)
        record = await replication.slot_record(self._db, self.slot)
        unfinished = record is not None and record.snapshot and not record.snapshot_done
        if status is not None and status.wal_status == "lost" and not rebuild:
            raise replication.SlotLost(self.slot, record.last_cursor if record else None)
        if status is not None and (rebuild or unfinished):
            if unfinished and not rebuild:
                log.warning(
                    "the copy for slot %s did not finish: starting it over on a new slot", self.slot
                )
            await replication.drop_slot(self._db, self.slot)
            status = None
        elif (
            status is None
            and record is not None
            and record.consistent_lsn is not None
            and not (rebuild or unfinished)
        ):
            # Gone from under its consumer: a new slot would start at today's position, and
            # the events since the old one's would never be delivered.
            raise replication.SlotLost(
                self.slot, record.last_cursor, reason=replication.SlotLost.VANISHED
            )
        elif status is not None and snapshot and not (record and record.snapshot):
            # The copy is for a new slot; this one's consumer has streamed from it all along.
            log.warning(
                "slot %s exists and was created without a copy of the table: "
                "streaming on from it (--rebuild starts it over with one)",
                self.slot,
            )
        created = status is None
        if created:
            copy = snapshot or rebuild or unfinished
            await replication.record_slot(self._db, self.slot, snapshot=copy)
            if copy:
                if connect_replication is None:
                    raise ValueError("a copy of the table needs a replication connection")
                await self._create_and_copy(connect_replication)
            else:
                await replication.record_consistent_point(
                    self._db, self.slot, await replication.create_slot(self._db, self.slot)
                )
        status = await replication.slot_status(self._db, self.slot)
        assert status is not None, self.slot
        self.stats.confirmed_lsn = status.confirmed_lsn
        return created

    async def check_resume_point(self) -> None:
        """Refuse `after` if the sink confirmed events past it that the slot no longer holds."""
        if self._after is None:
            return
        status = await replication.slot_status(self._db, self.slot)
        confirmed = await replication.last_cursor(self._db, self.slot)
        if (
            status is not None
            and status.wal_status != "lost"
            and confirmed is not None
            and parse_cursor(confirmed) > self._after
            and self._after[0] <= status.confirmed_lsn
        ):
            raise CursorGone(
                f"slot {self.slot} has moved past cursor {format_cursor(*self._after)}: its "
                f"sink confirmed up to {confirmed}, and the events in between are no longer "
                "in the log. Rebuild: durapay events stream --slot "
                f"{self.slot} --rebuild (drop the events you already hold by id)"
            )

    async def _create_and_copy(
        self, connect_replication: Callable[[], Awaitable[asyncpg.Connection]]
    ) -> None:
        copied, last = 0, None
        session = await connect_replication()
        try:
            consistent = await replication.create_slot_with_snapshot(session, self.slot)
            await replication.record_consistent_point(self._db, self.slot, consistent)

            async def deliver(rows: list[dict[str, Any]]) -> None:
                nonlocal copied, last
                events = []
                for row in rows:
                    cursor = (consistent, copied)
                    copied += 1
                    if self._after is None or cursor > self._after:
                        events.append(
                            event_message(
                                row_from_json(row), source="snapshot", cursor=format_cursor(*cursor)
                            )
                        )
                if events:
                    await self._sink.send(events)
                    await self._sink.confirm()
                    last = events[-1]["cursor"]
                    self.stats.snapshot += len(events)

            await replication.copy_rows(
                session, f"SELECT {_COLUMNS} FROM event ORDER BY seq", deliver
            )
            await session.execute("COMMIT")
        finally:
            await session.close()
        await replication.record_snapshot_done(self._db, self.slot, copied, last)
        self.stats.last_cursor = last or self.stats.last_cursor

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
            # Recorded before the slot moves: a consumer told to resume from an older cursor
            # is refused once the slot may have dropped what lies between.
            self.stats.last_cursor = events[-1]["cursor"]
            await replication.record_cursor(self._db, self.slot, self.stats.last_cursor)
        self.stats.streamed += len(events)
        self.stats.transactions += len(transactions)
        # Everything before `target` was decoded unless PostgreSQL stopped at the batch limit:
        # then only up to the last whole transaction it returned (whose commit record may end
        # past `target`: the slot never stops inside a delivered transaction).
        caught_up = len(messages) < self._batch
        last_end = transactions[-1].end_lsn if transactions else 0
        position = max(target, last_end) if caught_up else last_end
        if position > self.stats.confirmed_lsn:
            await replication.advance(self._db, self.slot, position)
            self.stats.confirmed_lsn = position
        return caught_up

    def _transactions(self, messages: list[tuple[int, bytes]]) -> list[_Transaction]:
        decoder, done, current = Decoder(), [], _Transaction()
        for _, data in messages:
            message = decoder.decode(data)
            if isinstance(message, Begin):
                current = _Transaction(
                    commit_lsn=message.final_lsn, committed_at=message.committed_at
                )
            elif isinstance(message, RowChange) and message.relation.name == EVENT_TABLE:
                if message.kind == "insert" and message.new is not None:
                    current.rows.append(message.new)
                else:
                    self._rewrite_seen(message.kind, message.old or message.new or {})
            elif isinstance(message, Truncate):
                self._rewrite_seen("truncate", {})
            elif isinstance(message, Commit):
                # The commit's position, not the row's: it orders events as committed.
                current.end_lsn = message.end_lsn
                for index, row in enumerate(current.rows):
                    cursor = (current.end_lsn, index)
                    if self._after is None or cursor > self._after:
                        current.events.append(
                            event_message(
                                row,
                                source="wal",
                                cursor=format_cursor(*cursor),
                                lsn=current.commit_lsn,
                                committed_at=current.committed_at,
                            )
                        )
                done.append(current)
                current = _Transaction()
        return done

    def _rewrite_seen(self, kind: str, row: Mapping[str, Any]) -> None:
        self.stats.rewrites_seen += 1
        log.error(
            "the append-only event table was rewritten: %s of event %s (seq %s); "
            "run `durapay audit verify`",
            kind,
            row.get("id", "?"),
            row.get("seq", "?"),
        )


async def stream_until_stopped(
    connect: Callable[[], Awaitable[asyncpg.Connection]],
    sink: EventSink,
    stop: asyncio.Event,
    *,
    slot: str,
    batch: int = 500,
    snapshot: bool = False,
    rebuild: bool = False,
    after: Cursor | None = None,
    connect_replication: Callable[[], Awaitable[asyncpg.Connection]] | None = None,
    on_slot_created: Callable[[], None] | None = None,
) -> StreamStats:
    """Stream until `stop` is set, through database restarts: a lost connection is opened
    again (backoff 1 s doubling to 30 s) and the stream goes on from the slot's confirmed
    position, so nothing is lost and at most the unconfirmed batch is sent again.

    Another consumer on the slot at the first start is an error (SlotBusy). After a lost
    connection it is waited out: the old session's lock goes when the server notices it.
    `rebuild` and the check of `after` apply to the first start only; a lost slot ends the
    stream (SlotLost)."""
    stats, delay, first = StreamStats(), 1.0, True
    while not stop.is_set():
        connection: asyncpg.Connection | None = None
        try:
            connection = await connect()
            stream = EventStream(connection, sink, slot=slot, batch=batch, stats=stats, after=after)
            try:
                await stream.open()
            except SlotBusy:
                if first:
                    raise
                log.warning("slot %s still held by the lost session; retrying", slot)
                raise ConnectionError("slot busy after reconnecting") from None
            if first and not rebuild:
                await stream.check_resume_point()
            created = await stream.prepare(
                snapshot=snapshot, rebuild=rebuild, connect_replication=connect_replication
            )
            rebuild = False
            if created and on_slot_created is not None:
                on_slot_created()
            if not first:
                log.warning(
                    "event stream resumed on slot %s at %s",
                    slot,
                    replication.int_to_lsn(stats.confirmed_lsn),
                )
            first, delay = False, 1.0
            await stream.run(stop)
        except CONNECTION_LOST as error:
            first = False if connection is not None else first
            log.warning(
                "event stream lost the database (%s: %s); reconnecting in %.0f s",
                type(error).__name__,
                error,
                delay,
            )
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass
            delay = min(delay * 2, MAX_RECONNECT_DELAY)
        finally:
            if connection is not None and not connection.is_closed():
                await connection.close()
    return stats
