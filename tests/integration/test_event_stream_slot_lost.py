"""A replication slot that cannot fill the disk, on a PostgreSQL cluster of this module's own
(its WAL limit is changed and its WAL thrown away, which no other test may see): the worker's
readiness warns while a slot exists and the server keeps WAL without limit; with a tiny limit,
WAL written past it while the consumer is frozen loses the slot; the running consumer then
ends with SlotLost and exit code 3, the gauges show the slot lost instead of its freed WAL as
lag, and the documented recovery (`--rebuild`) reads the events the slot lost from the table."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from cli.local_postgres import postgres_argv, postgres_data_dir, run_as
from core.db.migrate import upgrade
from core.db.replication import parse_cursor
from core.metrics import DatabaseGauges, read_database_snapshot
from core.readiness import slot_wal_unbounded
from core.settings import to_asyncpg_url
from tests.integration.helpers import assert_eventually
from tests.stack import free_port, private_dir, stop_process

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
KEEP_SIZE = "max_slot_wal_keep_size=1GB"


@pytest.fixture(scope="module")
async def cluster() -> AsyncIterator[str]:
    """The `durapay` database at the migrations' head on a server of its own, started as
    `durapay dev` starts its own but without the WAL limit on the command line (where it
    would override ALTER SYSTEM): the test sets it."""
    state = private_dir("lost") / "state"
    state.mkdir(mode=0o700)
    data = postgres_data_dir(state)
    password_file = state / "postgres-password"
    port = free_port()
    argv = postgres_argv(data, port, password_file=password_file)
    assert KEEP_SIZE in argv  # what the local stack runs with
    del argv[argv.index(KEEP_SIZE) - 1 : argv.index(KEEP_SIZE) + 1]  # and its "-c"
    server = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        **run_as(data),
    )
    try:
        password = password_file.read_text()
        admin = await assert_eventually(
            lambda: _connect(port, password, "postgres"), timeout=60, interval=0.2
        )
        await admin.execute("CREATE DATABASE durapay")
        await admin.close()
        url = f"postgresql://postgres:{password}@127.0.0.1:{port}/durapay"
        await asyncio.to_thread(upgrade, to_asyncpg_url(url))
        yield url
    finally:
        stop_process(server)


async def _connect(port: int, password: str, database: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(
            host="127.0.0.1",
            port=port,
            user="postgres",
            password=password,
            database=database,
            timeout=2,
        )
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        raise AssertionError(f"postgres not up yet: {error}") from None


def _env(url: str, home: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DURAPAY_") and k not in ("DATABASE_URL", "TEMPORAL_ADDRESS")
    }
    home.mkdir(mode=0o700, exist_ok=True)
    return {**env, "DATABASE_URL": url, "DURAPAY_HOME": str(home)}


async def _write_events(db: asyncpg.Connection, count: int) -> list[str]:
    """Operator events (no merchant), each in its own transaction, on a chain of their own."""
    chain = f"test:{uuid.uuid4().hex[:8]}"
    ids = []
    for position in range(1, count + 1):
        ids.append(f"evt_{uuid.uuid4().hex}")
        await db.execute(
            "INSERT INTO event (id, type, data, chain, chain_seq, prev_hash, hash) "
            "VALUES ($1, 'network.charge_unrecorded', '{}', $2, $3, $4, $4)",
            ids[-1],
            chain,
            position,
            "0" * 64,
        )
    return ids


def _lines(sink: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in sink.read_text().splitlines()] if sink.exists() else []


async def _delivered(sink: Path, ids: list[str]) -> bool:
    missing = set(ids) - {line["id"] for line in _lines(sink)}
    assert not missing, f"{len(missing)} of {len(ids)} not delivered yet"
    return True


async def _wal_status(db: asyncpg.Connection, slot: str) -> str | None:
    return await db.fetchval(
        "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1", slot
    )


async def test_a_lost_slot_ends_its_consumer_and_the_rebuild_reads_what_it_lost(
    cluster: str, tmp_path: Path
) -> None:
    db = await asyncpg.connect(cluster)
    engine = create_async_engine(to_asyncpg_url(cluster))
    sessions = async_sessionmaker(engine, class_=AsyncSession)
    slot, sink = f"lost_{uuid.uuid4().hex[:8]}", tmp_path / "events.jsonl"
    env = _env(cluster, tmp_path / "home")
    consumer = subprocess.Popen(
        [str(BIN / "durapay"), "events", "stream", "--slot", slot, "--sink", f"file:{sink}"],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        before = await _write_events(db, 3)  # before the slot: not this consumer's
        await assert_eventually(lambda: _wal_status(db, slot), timeout=30)
        streamed = await _write_events(db, 5)
        await assert_eventually(lambda: _delivered(sink, streamed), timeout=30)

        # Unlimited (the server's default): a slot exists, so readiness warns.
        assert await db.fetchval("SHOW max_slot_wal_keep_size") == "-1"
        warning = await slot_wal_unbounded(sessions)
        assert warning is not None and "max_slot_wal_keep_size" in warning
        await db.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        await db.execute("SELECT pg_reload_conf()")
        await assert_eventually(lambda: _setting_is(db, "1MB"), timeout=10)
        assert await slot_wal_unbounded(sessions) is None

        # The consumer freezes (a stalled sink, a paused VM); meanwhile events are written and
        # the WAL moves on past the limit: at the checkpoint the server drops the slot's WAL.
        os.kill(consumer.pid, signal.SIGSTOP)
        try:
            lost_events = await _write_events(db, 4)

            async def slot_lost() -> bool:
                await _write_events(db, 1)
                await db.execute("SELECT pg_switch_wal()")
                await db.execute("CHECKPOINT")
                assert await _wal_status(db, slot) == "lost"
                return True

            await assert_eventually(slot_lost, timeout=60, interval=0.1)
        finally:
            os.kill(consumer.pid, signal.SIGCONT)
        _, stderr = consumer.communicate(timeout=60)
    finally:
        stop_process(consumer)
    assert consumer.returncode == 3, stderr
    assert f"replication slot {slot} is lost" in stderr and "--rebuild" in stderr
    assert "Traceback" not in stderr
    held = {line["id"] for line in _lines(sink)}
    assert not held & set(lost_events)  # written after it froze: never delivered

    # The gauges: lost, and no lag for WAL the server no longer keeps.
    gauges = DatabaseGauges()
    gauges.snapshot = await read_database_snapshot(sessions)
    families = {family.name: family for family in gauges.collect()}
    lost = {s.labels["slot"]: s.value for s in families["durapay_event_stream_slot_lost"].samples}
    assert lost[slot] == 1
    assert slot not in {
        s.labels["slot"] for s in families["durapay_event_stream_lag_bytes"].samples
    }
    status = subprocess.run(
        [str(BIN / "durapay"), "events", "status"],
        env=env,
        text=True,
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert f"{slot}: LOST" in status.stdout

    # Restarted as it was, it refuses to go on; the recovery is a rebuild from the table.
    again = subprocess.run(
        [str(BIN / "durapay"), "events", "stream", "--slot", slot, "--sink", f"file:{sink}"],
        env=env,
        text=True,
        capture_output=True,
        timeout=60,
    )
    assert again.returncode == 3 and "is lost" in again.stderr
    rebuilt = subprocess.Popen(
        [
            str(BIN / "durapay"),
            "events",
            "stream",
            "--slot",
            slot,
            "--sink",
            f"file:{sink}",
            "--rebuild",
        ],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        everything = [r["id"] for r in await db.fetch("SELECT id FROM event ORDER BY seq")]
        await assert_eventually(lambda: _delivered(sink, everything), timeout=60)
        after = await _write_events(db, 2)
        await assert_eventually(lambda: _delivered(sink, after), timeout=30)
        assert await _wal_status(db, slot) == "reserved"
    finally:
        rebuilt.send_signal(signal.SIGTERM)
        _, stderr = rebuilt.communicate(timeout=30)
        stop_process(rebuilt)
    assert rebuilt.returncode == 0, stderr
    lines = _lines(sink)
    rebuild_lines = lines[len(held) :]
    sources = {line["id"]: line["source"] for line in rebuild_lines}
    assert all(sources[i] == "snapshot" for i in before + streamed + lost_events)
    assert all(sources[i] == "wal" for i in after)
    assert len(rebuild_lines) == len(sources)  # the rebuild delivered each event once
    cursors = [parse_cursor(line["cursor"]) for line in rebuild_lines]
    assert cursors == sorted(cursors) and len(set(cursors)) == len(cursors)
    # What the consumer already held came again identical but for source and cursor.
    first = {line["id"]: line for line in lines[: len(held)]}
    ignore = ("source", "cursor", "commitLsn", "committedAt")
    for line in rebuild_lines:
        if line["id"] in first:
            assert {k: v for k, v in line.items() if k not in ignore} == {
                k: v for k, v in first[line["id"]].items() if k not in ignore
            }
    await db.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
    await db.execute("SELECT pg_reload_conf()")
    await db.execute("SELECT pg_drop_replication_slot($1)", slot)
    await db.close()
    await engine.dispose()


async def _setting_is(db: asyncpg.Connection, value: str) -> bool:
    assert await db.fetchval("SHOW max_slot_wal_keep_size") == value
    return True
