"""`durapay events`: the event stream, fed from the database's write-ahead log.

    durapay events stream [--sink stdout|file:PATH|kafka] [--slot NAME]
                          [--snapshot | --rebuild | --from-cursor CURSOR]
    durapay events status                 logical slots, their position and WAL lag
    durapay events drop-slot [--slot NAME]

`stream` delivers every committed event in commit order, at least once, as one JSON object per
event (the whole row: ids, type, data with the state before and after, hash chain, and the
`cursor` to resume after), to stdout, a file (fsynced before the slot moves) or the Kafka topic
DURAPAY_KAFKA_TOPIC at DURAPAY_KAFKA_BOOTSTRAP (the default sink when that is set), keyed by
payment intent. Stop it with Ctrl-C or SIGTERM; kill it anyhow: it resumes where the sink last
confirmed. `--snapshot` gives a new slot's consumer the events committed before the slot
first (once: a restart streams on); `--rebuild` starts a slot over with such a copy, for a sink
that lost what it held; `--from-cursor` skips what the sink already holds, and refuses when the
slot no longer holds what follows.

Exit codes: 0 stopped, 1 refused (slot busy, cursor gone, bad arguments), 3 slot lost (the
server dropped its WAL: rebuild).

The slot keeps the WAL its consumer has not confirmed: a consumer that stops for good must
drop its slot (`drop-slot`), or the database's disk fills (`status` shows the lag; alert on
`durapay_event_stream_lag_bytes`).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import asyncpg

from core.db import replication
from core.settings import Settings
from workers.event_sinks import EventSink, FileSink, KafkaSink, StreamSink
from workers.event_stream import CursorGone, SlotBusy, stream_until_stopped

EXIT_REFUSED, EXIT_SLOT_LOST = 1, 3


def add_parser(commands: Any) -> None:
    events = commands.add_parser("events", help="operator: the event stream (CDC)")
    event_commands = events.add_subparsers(dest="events_command", required=True)
    stream = event_commands.add_parser("stream", help="deliver every committed event")
    stream.add_argument(
        "--sink",
        help="stdout (default), file:PATH, or kafka (default when DURAPAY_KAFKA_BOOTSTRAP is set)",
    )
    start = stream.add_mutually_exclusive_group()
    start.add_argument(
        "--snapshot",
        action="store_true",
        help="a new slot first delivers every event committed before it "
        "(once: a restart streams on)",
    )
    start.add_argument(
        "--rebuild",
        action="store_true",
        help="drop the slot and start over with --snapshot (a sink that lost its data)",
    )
    start.add_argument(
        "--from-cursor",
        metavar="CURSOR",
        help="deliver only events after this cursor (the last one the sink holds)",
    )
    stream.add_argument("--slot", help="replication slot (default DURAPAY_EVENT_STREAM_SLOT)")
    stream.add_argument("--batch", type=int, default=500, help="messages per read")
    event_commands.add_parser("status", help="replication slots and their WAL lag")
    drop = event_commands.add_parser("drop-slot", help="drop a consumer's slot")
    drop.add_argument("--slot", help="replication slot (default DURAPAY_EVENT_STREAM_SLOT)")


def run(settings: Settings, args: argparse.Namespace) -> int:
    slot = getattr(args, "slot", None) or settings.event_stream_slot
    if args.events_command == "stream":
        try:
            replication.check_slot_name(slot)
            after = replication.parse_cursor(args.from_cursor) if args.from_cursor else None
        except ValueError as error:
            print(f"durapay: {error}", file=sys.stderr)
            return EXIT_REFUSED
        return asyncio.run(
            stream(
                settings,
                slot,
                sink_name(settings, args.sink),
                batch=args.batch,
                snapshot=args.snapshot,
                rebuild=args.rebuild,
                after=after,
            )
        )
    if args.events_command == "status":
        return asyncio.run(status(settings))
    return asyncio.run(drop_slot(settings, slot))


def sink_name(settings: Settings, chosen: str | None) -> str:
    if chosen:
        return chosen
    return "kafka" if settings.kafka_bootstrap else "stdout"


def open_sink(settings: Settings, name: str) -> EventSink:
    if name == "stdout":
        return StreamSink(sys.stdout)
    if name.startswith("file:"):
        return FileSink(Path(name.removeprefix("file:")))
    if name == "kafka":
        if not settings.kafka_bootstrap:
            raise SystemExit("durapay: --sink kafka needs DURAPAY_KAFKA_BOOTSTRAP")
        return KafkaSink(settings.kafka_bootstrap, settings.kafka_topic)
    raise SystemExit(f"durapay: unknown sink {name!r} (stdout, file:PATH, kafka)")


async def _connect(settings: Settings, *, replication_mode: bool = False) -> asyncpg.Connection:
    url = settings.effective_database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    server_settings = {"application_name": "durapay-events"}
    if replication_mode:  # a walsender: creates a slot and reads the table on its snapshot
        server_settings["replication"] = "database"
    return await asyncpg.connect(url, server_settings=server_settings)


async def stream(
    settings: Settings,
    slot: str,
    sink_choice: str,
    *,
    batch: int,
    snapshot: bool,
    rebuild: bool,
    after: replication.Cursor | None,
) -> int:
    sink = open_sink(settings, sink_choice)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def slot_created() -> None:
        if not (snapshot or rebuild):
            print(
                f"durapay: created replication slot {slot}: events committed from now on "
                "are streamed (--snapshot also delivers the ones before)",
                file=sys.stderr,
            )

    try:
        stats = await stream_until_stopped(
            lambda: _connect(settings),
            sink,
            stop,
            slot=slot,
            batch=batch,
            snapshot=snapshot,
            rebuild=rebuild,
            after=after,
            connect_replication=lambda: _connect(settings, replication_mode=True),
            on_slot_created=slot_created,
        )
    except replication.SlotLost as error:
        print(f"durapay: {error}", file=sys.stderr)
        return EXIT_SLOT_LOST
    except (SlotBusy, CursorGone) as error:
        print(f"durapay: {error}", file=sys.stderr)
        return EXIT_REFUSED
    finally:
        await sink.close()
    print(
        f"durapay: events stream stopped: {stats.snapshot} copied, {stats.streamed} "
        f"streamed in {stats.transactions} transactions, slot {slot} at "
        f"{replication.int_to_lsn(stats.confirmed_lsn)}, last cursor {stats.last_cursor}",
        file=sys.stderr,
    )
    return 0


async def status(settings: Settings) -> int:
    connection = await _connect(settings)
    try:
        slots = await replication.slot_statuses(connection)
        unlimited = await replication.unlimited_wal_keep(connection)
        cursors = {s.slot: await replication.last_cursor(connection, s.slot) for s in slots}
    finally:
        await connection.close()
    if not slots:
        print("no logical replication slots (no event stream consumer has run)")
    for s in slots:
        if s.wal_status == "lost":
            print(
                f"{s.slot}: LOST (the server removed WAL it had not confirmed), last cursor "
                f"{cursors[s.slot]}: rebuild with durapay events stream --slot {s.slot} "
                "--rebuild"
            )
            continue
        print(
            f"{s.slot}: {'consumer running' if s.consumer else 'no consumer'}, confirmed "
            f"{replication.int_to_lsn(s.confirmed_lsn)}, lag {s.lag_bytes} bytes, "
            f"wal {s.wal_status}, last cursor {cursors[s.slot]}"
        )
    if slots and unlimited:
        print(
            "warning: max_slot_wal_keep_size is -1 (unlimited): a stalled consumer's slot "
            "can fill the database's disk; set a limit (e.g. 10GB)"
        )
    return 0


async def drop_slot(settings: Settings, slot: str) -> int:
    connection = await _connect(settings)
    try:
        dropped = await replication.drop_slot(connection, slot)
    finally:
        await connection.close()
    print(f"dropped slot {slot}" if dropped else f"no slot {slot}")
    return 0 if dropped else 1
