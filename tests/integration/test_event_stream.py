"""The event stream on the real stack: `durapay events stream` reads the event table's changes
from PostgreSQL's WAL through a logical replication slot and delivers every committed event at
least once, in commit order (its `cursor`); killed with SIGKILL while many merchants charge, it
resumes without losing one; `--snapshot` copies the table once, exactly up to the slot; a sink
that lost its tail is refused a stale cursor and rebuilt. Each test uses its own slot and drops
it, so no WAL is kept after the test."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from client import DurapayClient
from core.db.replication import lsn_to_int, parse_cursor
from tests.integration.conftest import CARD_4242, create_intent
from tests.integration.helpers import assert_eventually, charge, signed_merchant
from tests.stack import RunningStack, stop_process

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


@pytest.fixture
def slot(stack: RunningStack) -> Iterator[str]:
    name = f"test_{uuid.uuid4().hex[:12]}"
    yield name
    subprocess.run(
        [str(BIN / "durapay"), "events", "drop-slot", "--slot", name],
        env=stack.env,
        capture_output=True,
        timeout=60,
        check=False,
    )


def _start_consumer(
    stack: RunningStack, slot: str, sink: Path, *extra: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            str(BIN / "durapay"),
            "events",
            "stream",
            "--slot",
            slot,
            "--sink",
            f"file:{sink}",
            *extra,
        ],
        env=stack.env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _lines(sink: Path) -> list[dict[str, Any]]:
    if not sink.exists():
        return []
    return [json.loads(line) for line in sink.read_text().splitlines()]


async def _merchant_events(db: asyncpg.Pool, merchant_ids: list[str]) -> list[str]:
    rows = await db.fetch(
        "SELECT id FROM event WHERE merchant_id = ANY($1) ORDER BY seq", merchant_ids
    )
    return [r["id"] for r in rows]


async def _merchant_id(db: asyncpg.Pool, intent_id: str) -> str:
    return str(await db.fetchval("SELECT merchant_id FROM payment_intent WHERE id = $1", intent_id))


async def _until_delivered(sink: Path, ids: list[str], timeout: float = 60) -> None:
    async def delivered() -> bool:
        missing = set(ids) - {line["id"] for line in _lines(sink)}
        assert not missing, f"{len(missing)} of {len(ids)} events not delivered yet"
        return True

    await assert_eventually(delivered, timeout=timeout, interval=0.3)


async def _charges(durapay: DurapayClient, count: int) -> list[str]:
    intents = []
    for _ in range(count):
        intent = await create_intent(durapay, random.randint(100, 9000))
        response = await charge(durapay, intent["id"], CARD_4242)
        assert response.status_code == 200, response.text
        intents.append(intent["id"])
    return intents


async def test_every_committed_event_is_streamed_in_commit_order(
    stack: RunningStack, db: asyncpg.Pool, slot: str, tmp_path: Path
) -> None:
    sink = tmp_path / "events.jsonl"
    consumer = _start_consumer(stack, slot, sink)
    try:
        await assert_eventually(lambda: _slot_exists(db, slot), timeout=30)
        async with signed_merchant(stack, "Stream") as durapay:
            [intent_id] = await _charges(durapay, 1)
        merchant = await _merchant_id(db, intent_id)
        ids = await _merchant_events(db, [merchant])
        await _until_delivered(sink, ids)
    finally:
        consumer.send_signal(signal.SIGTERM)
        _, stderr = consumer.communicate(timeout=30)
    assert consumer.returncode == 0, stderr
    lines = [line for line in _lines(sink) if line["merchantId"] == merchant]
    assert [line["id"] for line in lines] == ids
    assert [line["type"] for line in lines] == [
        "payment.created",
        "payment.processing",
        "payment.succeeded",
    ]
    table = {
        r["id"]: r
        for r in await db.fetch(
            "SELECT id, seq, hash, chain_seq, data::text FROM event WHERE id = ANY($1)", ids
        )
    }
    for line in lines:  # the whole row, as committed
        row = table[line["id"]]
        assert (line["seq"], line["hash"], line["chainSeq"]) == (
            row["seq"],
            row["hash"],
            row["chain_seq"],
        )
        assert line["data"] == json.loads(row["data"])
        assert line["source"] == "wal" and line["commitLsn"]
    assert "4242424242424242" not in sink.read_text()


async def _slot_exists(db: asyncpg.Pool, slot: str) -> bool:
    return bool(
        await db.fetchval("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", slot)
    )


async def test_a_consumer_killed_mid_stream_resumes_without_losing_an_event(
    stack: RunningStack, db: asyncpg.Pool, slot: str, tmp_path: Path
) -> None:
    sink = tmp_path / "events.jsonl"
    # Small reads: the consumer spends its time between sending and confirming a batch.
    consumer = _start_consumer(stack, slot, sink, "--batch", "4")
    await assert_eventually(lambda: _slot_exists(db, slot), timeout=30)
    kills: list[int] = []  # the sink's length at each kill
    killing = asyncio.Event()

    async def kill_and_restart() -> None:
        """Four times: once the (re)started consumer has delivered something, kill it within
        the next 0.3 s, while it may be between writing a batch and moving its slot."""
        nonlocal consumer
        try:
            for _ in range(4):
                size = sink.stat().st_size if sink.exists() else 0

                async def grew(size: int = size) -> bool:
                    return sink.exists() and sink.stat().st_size > size

                await assert_eventually(grew, timeout=60, interval=0.05)
                await asyncio.sleep(random.uniform(0, 0.3))
                os.kill(consumer.pid, signal.SIGKILL)
                consumer.wait(timeout=30)
                kills.append(sink.stat().st_size)
                consumer = _start_consumer(stack, slot, sink, "--batch", "4")
        finally:
            killing.set()

    async def charges_until_the_kills_are_done(durapay: DurapayClient) -> list[str]:
        intents: list[str] = []
        while not killing.is_set() or len(intents) < 4:
            intents += await _charges(durapay, 1)
        return intents

    try:
        merchants = [signed_merchant(stack, f"Kill {i}") for i in range(6)]
        clients = [await m.__aenter__() for m in merchants]
        try:
            charged, _ = await asyncio.gather(
                asyncio.gather(*(charges_until_the_kills_are_done(c) for c in clients)),
                kill_and_restart(),
            )
        finally:
            for m in merchants:
                await m.__aexit__(None, None, None)
        merchant_ids = [await _merchant_id(db, intents[0]) for intents in charged]
        produced = await _merchant_events(db, merchant_ids)
        await _until_delivered(sink, produced, timeout=90)
    finally:
        consumer.send_signal(signal.SIGTERM)
        try:
            consumer.communicate(timeout=30)
        finally:
            stop_process(consumer)

    lines = [line for line in _lines(sink) if line["merchantId"] in merchant_ids]
    counts = Counter(line["id"] for line in lines)
    duplicates = sum(n - 1 for n in counts.values())
    lost = set(produced) - set(counts)
    print(
        f"\n[event stream] produced {len(produced)}, delivered {len(counts)} distinct "
        f"({len(lines)} lines), duplicated {duplicates}, lost {len(lost)}, "
        f"{len(kills)} SIGKILLs at sink offsets {kills}"
    )
    assert not lost
    assert set(counts) == set(produced)  # nothing that is not in the table
    assert len(kills) == 4

    # Each duplicate is a re-send of the unconfirmed tail after a kill, identical to the first;
    # by cursor, the sink reads as one run in commit order that steps back only after a kill
    # and then only to re-send what it already holds.
    first: dict[str, dict[str, Any]] = {}
    offset, highest = 0, (-1, -1)
    for raw in sink.read_text().splitlines(keepends=True):
        line = json.loads(raw)
        cursor = parse_cursor(line["cursor"])
        if line["id"] in first:
            assert line == first[line["id"]]
            assert any(k <= offset for k in kills), "a duplicate before any kill"
            assert cursor <= highest
        else:
            assert cursor > highest, f"{line['cursor']} delivered after a later commit"
            first[line["id"]] = line
            highest = cursor
        offset += len(raw.encode())

    # Commit order: first deliveries in WAL order; each merchant's chain complete and in order.
    distinct = [first[i] for i in dict.fromkeys(line["id"] for line in lines)]
    lsns = [lsn_to_int(line["commitLsn"]) for line in distinct]
    assert lsns == sorted(lsns)
    seqs = [line["seq"] for line in distinct]
    print(
        f"[event stream] {sum(a > b for a, b in zip(seqs, seqs[1:], strict=False))} "
        "deliveries followed an event with a higher seq"
    )
    by_chain: dict[str, list[int]] = defaultdict(list)
    for line in distinct:
        by_chain[line["chain"]].append(line["chainSeq"])
    for positions in by_chain.values():
        assert positions == list(range(1, len(positions) + 1))


async def test_a_new_consumer_gets_the_table_once_and_a_restart_does_not_copy_it_again(
    stack: RunningStack, db: asyncpg.Pool, slot: str, tmp_path: Path
) -> None:
    async with signed_merchant(stack, "Before") as durapay:
        [before] = await _charges(durapay, 1)
    sink = tmp_path / "events.jsonl"
    merchants = [signed_merchant(stack, f"Snapshot {i}") for i in range(4)]
    clients = [await m.__aenter__() for m in merchants]
    try:
        # Merchants charge while the slot is created and the table copied: each of their
        # events is in the copy or in the stream, never both, never neither.
        writers = asyncio.gather(*(_charges(c, 3) for c in clients))
        consumer = _start_consumer(stack, slot, sink, "--snapshot")
        charged = await writers
    finally:
        for m in merchants:
            await m.__aexit__(None, None, None)
    try:
        everything = [r["id"] for r in await db.fetch("SELECT id FROM event ORDER BY seq")]
        await _until_delivered(sink, everything)
        record = await assert_eventually(lambda: _copy_done(db, slot))
        os.kill(consumer.pid, signal.SIGKILL)
        consumer.wait(timeout=30)
        held = _lines(sink)
        consumer = _start_consumer(stack, slot, sink, "--snapshot")
        async with signed_merchant(stack, "After") as durapay:
            [after] = await _charges(durapay, 1)
        later = await _merchant_events(db, [await _merchant_id(db, after)])
        await _until_delivered(sink, later)
    finally:
        consumer.send_signal(signal.SIGTERM)
        _, stderr = consumer.communicate(timeout=30)
    assert consumer.returncode == 0, stderr
    assert "events stream stopped: 0 copied" in stderr  # the restart streamed on
    lines = _lines(sink)
    copied = [line for line in lines if line["source"] == "snapshot"]
    assert (
        len(copied)
        == record["snapshot_rows"]
        == len([h for h in held if h["source"] == "snapshot"])
    )
    assert all(line["cursor"].startswith(record["consistent_lsn"] + ":") for line in copied)
    # Before the kill, every event exactly once: the copy and the stream do not overlap.
    counts = Counter(line["id"] for line in held)
    assert set(everything) <= set(counts) and max(counts.values()) == 1
    concurrent = await _merchant_events(
        db, [await _merchant_id(db, intents[0]) for intents in charged]
    )
    assert set(concurrent) <= set(counts)
    sources = {line["id"]: line["source"] for line in lines}
    assert sources[await _first_event(db, before)] == "snapshot"
    assert all(sources[i] == "wal" for i in later)
    cursors = [parse_cursor(line["cursor"]) for line in held]
    assert cursors == sorted(cursors) and len(set(cursors)) == len(cursors)


async def test_a_copy_cut_short_starts_over_on_a_new_slot(
    stack: RunningStack, db: asyncpg.Pool, slot: str, tmp_path: Path
) -> None:
    # As a consumer killed during its copy leaves it: the slot, and the copy not recorded done.
    await db.execute("INSERT INTO event_stream_slot (slot, snapshot) VALUES ($1, true)", slot)
    old = await db.fetchval(
        "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')", slot
    )
    sink = tmp_path / "events.jsonl"
    consumer = _start_consumer(stack, slot, sink)  # restarted as it was, without a flag
    try:
        everything = [r["id"] for r in await db.fetch("SELECT id FROM event ORDER BY seq")]
        await _until_delivered(sink, everything)
        record = await assert_eventually(lambda: _copy_done(db, slot))
    finally:
        consumer.send_signal(signal.SIGTERM)
        _, stderr = consumer.communicate(timeout=30)
    assert consumer.returncode == 0, stderr
    assert "did not finish: starting it over" in stderr
    copied = [line for line in _lines(sink) if line["source"] == "snapshot"]
    assert set(everything) <= {line["id"] for line in copied}
    assert [line["seq"] for line in copied] == sorted(line["seq"] for line in copied)
    assert len(copied) == record["snapshot_rows"]
    assert lsn_to_int(record["consistent_lsn"]) > lsn_to_int(old)
    assert all(line["cursor"].startswith(record["consistent_lsn"] + ":") for line in copied)


async def _first_event(db: asyncpg.Pool, intent_id: str) -> str:
    return str(
        await db.fetchval(
            "SELECT id FROM event WHERE payment_intent_id = $1 ORDER BY intent_seq LIMIT 1",
            intent_id,
        )
    )


async def test_a_sink_that_lost_its_tail_is_refused_a_stale_cursor_and_rebuilt(
    stack: RunningStack, db: asyncpg.Pool, slot: str, tmp_path: Path
) -> None:
    sink = tmp_path / "events.jsonl"
    consumer = _start_consumer(stack, slot, sink)
    try:
        await assert_eventually(lambda: _slot_exists(db, slot), timeout=30)
        async with signed_merchant(stack, "Tail") as durapay:
            intents = await _charges(durapay, 3)
        ids = await _merchant_events(db, [await _merchant_id(db, intents[0])])
        await _until_delivered(sink, ids)
    finally:
        consumer.send_signal(signal.SIGTERM)
        consumer.communicate(timeout=30)
    # The sink loses its last events (a topic restored from an older backup).
    kept = sink.read_text().splitlines(keepends=True)[:-4]
    sink.write_text("".join(kept))
    stale = json.loads(kept[-1])["cursor"]
    refused = subprocess.run(
        [
            str(BIN / "durapay"),
            "events",
            "stream",
            "--slot",
            slot,
            "--sink",
            f"file:{sink}",
            "--from-cursor",
            stale,
        ],
        env=stack.env,
        text=True,
        capture_output=True,
        timeout=60,
    )
    assert refused.returncode == 1, refused.stderr
    assert f"moved past cursor {stale}" in refused.stderr and "--rebuild" in refused.stderr

    consumer = _start_consumer(stack, slot, sink, "--rebuild")
    try:
        everything = [r["id"] for r in await db.fetch("SELECT id FROM event ORDER BY seq")]
        await _until_delivered(sink, everything)
        await assert_eventually(lambda: _copy_done(db, slot))
        # Killed, then resumed by the cursor of the last event the sink holds: nothing again.
        os.kill(consumer.pid, signal.SIGKILL)
        consumer.wait(timeout=30)
        holds = _lines(sink)
        consumer = _start_consumer(stack, slot, sink, "--from-cursor", holds[-1]["cursor"])
        async with signed_merchant(stack, "Resumed") as durapay:
            [resumed] = await _charges(durapay, 1)
        later = await _merchant_events(db, [await _merchant_id(db, resumed)])
        await _until_delivered(sink, later)
    finally:
        consumer.send_signal(signal.SIGTERM)
        _, stderr = consumer.communicate(timeout=30)
    assert consumer.returncode == 0, stderr
    rebuilt = _lines(sink)[len(kept) :]
    counts = Counter(line["id"] for line in rebuilt)
    assert set(everything) | set(later) <= set(counts) and max(counts.values()) == 1
    cursors = [parse_cursor(line["cursor"]) for line in rebuilt]
    assert cursors == sorted(cursors)
    assert cursors[0] > parse_cursor(stale)  # a new slot's cursors follow the old one's


async def test_a_slot_dropped_behind_its_consumers_back_is_not_silently_replaced(
    stack: RunningStack, db: asyncpg.Pool, slot: str, tmp_path: Path
) -> None:
    sink = tmp_path / "events.jsonl"
    consumer = _start_consumer(stack, slot, sink)
    await assert_eventually(lambda: _slot_exists(db, slot), timeout=30)
    consumer.send_signal(signal.SIGTERM)
    consumer.communicate(timeout=30)
    # As a failover to a server without the slot, or a DBA's DROP: a new slot would start at
    # today's position and skip what was committed since.
    await db.execute("SELECT pg_drop_replication_slot($1)", slot)
    again = subprocess.run(
        [str(BIN / "durapay"), "events", "stream", "--slot", slot, "--sink", f"file:{sink}"],
        env=stack.env,
        text=True,
        capture_output=True,
        timeout=60,
    )
    assert again.returncode == 3, again.stderr
    assert "no longer on the server" in again.stderr and "--rebuild" in again.stderr
    assert not await _slot_exists(db, slot)


async def test_the_local_postgres_bounds_the_wal_a_slot_keeps(db: asyncpg.Pool) -> None:
    assert await db.fetchval("SHOW max_slot_wal_keep_size") == "1GB"


async def _copy_done(db: asyncpg.Pool, slot: str) -> asyncpg.Record:
    record = await db.fetchrow("SELECT * FROM event_stream_slot WHERE slot = $1", slot)
    assert record is not None and record["snapshot_done_at"] is not None, "copy not done"
    return record


async def _worker_metrics(stack: RunningStack) -> str:
    urls = stack.state()["workerMetricsUrls"]
    assert isinstance(urls, dict), urls
    async with httpx.AsyncClient(timeout=10) as http:
        return (await http.get(str(urls["worker-1"]))).text


async def _worker_readyz(stack: RunningStack) -> dict[str, Any]:
    urls = stack.state()["workerMetricsUrls"]
    assert isinstance(urls, dict), urls
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(str(urls["worker-1"]).replace("/metrics", "/readyz"))
    return dict(response.json())


def _status_line(stack: RunningStack, slot: str) -> str:
    status = subprocess.run(
        [str(BIN / "durapay"), "events", "status"],
        env=stack.env,
        text=True,
        capture_output=True,
        timeout=60,
        check=True,
    )
    [line] = [s for s in status.stdout.splitlines() if s.startswith(f"{slot}:")]
    return line


async def test_status_shows_the_consumer_and_the_lag_and_a_second_consumer_is_refused(
    stack: RunningStack, db: asyncpg.Pool, slot: str, tmp_path: Path
) -> None:
    consumer = _start_consumer(stack, slot, tmp_path / "a.jsonl")
    try:
        await assert_eventually(lambda: _slot_exists(db, slot), timeout=30)
        # Between its reads the slot itself is idle: the consumer's lock says one runs.
        assert "consumer running" in _status_line(stack, slot)
        running = f'durapay_event_stream_consumer_running{{slot="{slot}"}} 1.0'
        metrics = await _worker_metrics(stack)
        assert running in metrics
        assert f'durapay_event_stream_slot_lost{{slot="{slot}"}} 0.0' in metrics
        ready = await _worker_readyz(stack)  # a slot exists, but its WAL is bounded
        assert ready["status"] == "ok" and "warnings" not in ready, ready
        second = _start_consumer(stack, slot, tmp_path / "b.jsonl")
        _, stderr = second.communicate(timeout=60)
        assert second.returncode == 1 and "another consumer" in stderr
    finally:
        consumer.send_signal(signal.SIGTERM)
        consumer.communicate(timeout=30)
    async with signed_merchant(stack, "Lag") as durapay:
        await _charges(durapay, 1)  # written while no consumer runs: the slot keeps it
    line = _status_line(stack, slot)
    lag = int(line.split("lag ")[1].split(" bytes")[0])
    assert "no consumer" in line and lag > 0, line
    # The alerts' gauges, from a worker's /metrics: true while no consumer runs.
    metrics = await _worker_metrics(stack)
    assert f'durapay_event_stream_consumer_running{{slot="{slot}"}} 0.0' in metrics
    [gauge] = [
        m
        for m in metrics.splitlines()
        if m.startswith(f'durapay_event_stream_lag_bytes{{slot="{slot}"}}')
    ]
    assert float(gauge.split()[-1]) > 0, gauge


async def test_the_consumer_rides_out_a_lost_database_connection(
    stack: RunningStack, db: asyncpg.Pool, slot: str, tmp_path: Path
) -> None:
    sink = tmp_path / "events.jsonl"
    consumer = _start_consumer(stack, slot, sink)
    try:
        await assert_eventually(lambda: _slot_exists(db, slot), timeout=30)
        # As a database restart or failover would: the server ends the consumer's session.
        ended = await db.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'durapay-events'"
        )
        assert ended >= 1
        async with signed_merchant(stack, "Reconnect") as durapay:
            [intent_id] = await _charges(durapay, 1)
        ids = await _merchant_events(db, [await _merchant_id(db, intent_id)])
        await _until_delivered(sink, ids)
        assert consumer.poll() is None, "the consumer gave up"
    finally:
        consumer.send_signal(signal.SIGTERM)
        _, stderr = consumer.communicate(timeout=30)
    assert consumer.returncode == 0, stderr
    assert "lost the database" in stderr and "resumed on slot" in stderr
