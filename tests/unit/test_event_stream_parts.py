"""The event stream's pure parts: pgoutput decoding, typed values, the sinks' confirm step."""

from __future__ import annotations

import asyncio
import json
import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from core.db.pgoutput import INT8, JSONB, TIMESTAMPTZ, DecodeError, Decoder, RowChange
from core.db.replication import int_to_lsn, lsn_to_int
from workers.event_sinks import FileSink, KafkaSink


def _relation(relation_id: int, columns: list[tuple[str, int]]) -> bytes:
    body = b"R" + struct.pack("!I", relation_id) + b"public\0event\0" + b"d"
    body += struct.pack("!h", len(columns))
    for name, oid in columns:
        body += b"\0" + name.encode() + b"\0" + struct.pack("!Ii", oid, -1)
    return body


def _insert(relation_id: int, values: list[str | None]) -> bytes:
    body = b"I" + struct.pack("!I", relation_id) + b"N" + struct.pack("!h", len(values))
    for value in values:
        if value is None:
            body += b"n"
        else:
            raw = value.encode()
            body += b"t" + struct.pack("!i", len(raw)) + raw
    return body


def test_rows_are_decoded_with_their_columns_types() -> None:
    decoder = Decoder()
    decoder.decode(_relation(4000000000, [("seq", INT8), ("id", 1043), ("data", JSONB),
                                          ("created_at", TIMESTAMPTZ), ("merchant_id", 1043)]))
    change = decoder.decode(_insert(4000000000, [
        "7", "evt_1", '{"status": "succeeded", "amountInCents": 2499}',
        "2026-11-26 02:04:23.798123+00", None]))
    assert isinstance(change, RowChange) and change.kind == "insert"
    assert change.new == {
        "seq": 7, "id": "evt_1", "data": {"status": "succeeded", "amountInCents": 2499},
        "created_at": datetime(2026, 11, 26, 2, 4, 23, 798123, tzinfo=UTC),
        "merchant_id": None}


def test_a_row_before_its_relation_or_a_short_message_is_an_error() -> None:
    with pytest.raises(DecodeError):
        Decoder().decode(_insert(1, ["7"]))
    decoder = Decoder()
    decoder.decode(_relation(1, [("seq", INT8)]))
    with pytest.raises(DecodeError):
        decoder.decode(_insert(1, ["7"])[:-1])


def test_lsns_round_trip_in_postgres_spelling() -> None:
    assert lsn_to_int("1/16B3748") == (1 << 32) + 0x16B3748
    assert int_to_lsn(lsn_to_int("A/0")) == "A/0"


def test_a_torn_last_line_is_cut_when_the_file_sink_opens(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"id": "evt_1"}\n{"id": "ev')
    sink = FileSink(path)
    asyncio.run(sink.send([{"id": "evt_2"}]))
    asyncio.run(sink.close())
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == [
        "evt_1", "evt_2"]


class _Producer:
    """aiokafka's producer as the sink uses it: send() returns a delivery future."""

    def __init__(self, fail: bool) -> None:
        self.fail, self.sent = fail, []

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(self, topic: str, value: str, key: str | None) -> Any:
        self.sent.append((topic, key, json.loads(value)["id"]))
        future = asyncio.get_running_loop().create_future()
        if self.fail:
            future.set_exception(RuntimeError("broker refused"))
        else:
            future.set_result(None)
        return future


def test_the_kafka_sink_keys_by_payment_and_confirms_only_acknowledged_sends() -> None:
    async def run(fail: bool) -> list[Any]:
        producer = _Producer(fail)
        sink = KafkaSink("kafka:9092", "durapay.events", producer=producer)
        await sink.send([{"id": "evt_1", "paymentIntentId": "pi_1", "chain": "pi_1"}])
        await sink.confirm()
        return producer.sent

    assert asyncio.run(run(False)) == [("durapay.events", "pi_1", "evt_1")]
    with pytest.raises(RuntimeError, match="broker refused"):
        asyncio.run(run(True))
