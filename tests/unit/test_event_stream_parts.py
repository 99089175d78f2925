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
from core.db.replication import (
    check_slot_name,
    format_cursor,
    int_to_lsn,
    lsn_to_int,
    parse_cursor,
)
from workers.event_sinks import FileSink, KafkaSink
from workers.event_stream import EventStream, event_message, row_from_json


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
    decoder.decode(
        _relation(
            4000000000,
            [
                ("seq", INT8),
                ("id", 1043),
                ("data", JSONB),
                ("created_at", TIMESTAMPTZ),
                ("merchant_id", 1043),
            ],
        )
    )
    change = decoder.decode(
        _insert(
            4000000000,
            [
                "7",
                "evt_1",
                '{"status": "succeeded", "amountInCents": 2499}',
                "2026-11-26 02:04:23.798123+00",
                None,
            ],
        )
    )
    assert isinstance(change, RowChange) and change.kind == "insert"
    assert change.new == {
        "seq": 7,
        "id": "evt_1",
        "data": {"status": "succeeded", "amountInCents": 2499},
        "created_at": datetime(2026, 11, 26, 2, 4, 23, 798123, tzinfo=UTC),
        "merchant_id": None,
    }


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
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["evt_1", "evt_2"]


class _Producer:
    """aiokafka's producer as the sink uses it: send() returns a delivery future."""

    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.sent: list[Any] = []

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


def _begin(final_lsn: int) -> bytes:
    return b"B" + struct.pack("!QqI", final_lsn, 0, 7)


def _commit(commit_lsn: int, end_lsn: int) -> bytes:
    return b"C" + struct.pack("!bQQq", 0, commit_lsn, end_lsn, 0)


_EVENT_COLUMNS = [
    ("seq", INT8),
    ("id", 1043),
    ("type", 1043),
    ("merchant_id", 1043),
    ("payment_intent_id", 1043),
    ("transaction_id", 1043),
    ("intent_seq", INT8),
    ("chain", 1043),
    ("chain_seq", INT8),
    ("prev_hash", 1043),
    ("hash", 1043),
    ("data", JSONB),
    ("created_at", TIMESTAMPTZ),
]


def _event_insert(seq: int) -> bytes:
    return _insert(
        1,
        [
            str(seq),
            f"evt_{seq}",
            "payment.created",
            "mer_1",
            "pi_1",
            None,
            "1",
            "merchant:mer_1",
            str(seq),
            "0" * 64,
            "f" * 64,
            "{}",
            "2026-11-26 02:04:23.798123+00",
        ],
    )


def _wal(*messages: bytes) -> list[tuple[int, bytes]]:
    return [(0, m) for m in (_relation(1, _EVENT_COLUMNS), *messages)]


def test_streamed_events_carry_their_commits_end_and_their_place_in_it_as_cursor() -> None:
    # No database or sink: only the parsing of the stream is under test.
    stream = EventStream(None, None, slot="s")  # type: ignore[arg-type]
    # A higher seq committed first: the cursor follows the commits, not seq.
    transactions = stream._transactions(
        _wal(
            _begin(0x16B3700),
            _event_insert(9),
            _event_insert(10),
            _commit(0x16B3700, 0x16B3748),
            _begin(0x1_00000010),
            _event_insert(8),
            _commit(0x1_00000010, 0x1_00000040),
        )
    )
    events = [e for t in transactions for e in t.events]
    assert [(e["seq"], e["cursor"], e["commitLsn"]) for e in events] == [
        (9, "0/16B3748:0", "0/16B3700"),
        (10, "0/16B3748:1", "0/16B3700"),
        (8, "1/40:0", "1/10"),
    ]
    assert [parse_cursor(e["cursor"]) for e in events] == sorted(
        parse_cursor(e["cursor"]) for e in events
    )


def test_events_at_or_before_the_resume_cursor_are_not_delivered() -> None:
    # No database or sink: only the parsing of the stream is under test.
    stream = EventStream(
        None,
        None,  # type: ignore[arg-type]
        slot="s",
        after=parse_cursor("0/16B3748:0"),
    )
    [transaction] = stream._transactions(
        _wal(_begin(0x16B3700), _event_insert(9), _event_insert(10), _commit(0x16B3700, 0x16B3748))
    )
    assert [e["cursor"] for e in transaction.events] == ["0/16B3748:1"]
    assert transaction.end_lsn == 0x16B3748  # the slot still moves past the whole commit


def test_cursors_parse_back_and_compare_in_commit_order() -> None:
    assert parse_cursor(format_cursor(lsn_to_int("A/16B3748"), 12)) == ((0xA << 32) + 0x16B3748, 12)
    assert parse_cursor("0/16B3748:3") < parse_cursor("0/16B3748:10") < parse_cursor("1/0:0")
    for bad in ("", "16B3748:3", "0/16B3748", "0/16B3748:-1", "0/xyz:1", "1:2:3"):
        with pytest.raises(ValueError, match="cursor"):
            parse_cursor(bad)


def test_a_copied_row_reads_as_the_decoded_one() -> None:
    copied = row_from_json(
        {"seq": 7, "created_at": "2026-11-26T02:04:23.798123+00:00", "data": {"a": 1}}
    )
    assert copied["created_at"] == datetime(2026, 11, 26, 2, 4, 23, 798123, tzinfo=UTC)
    message = event_message(
        {
            **copied,
            **{
                k: None
                for k in (
                    "id",
                    "type",
                    "merchant_id",
                    "payment_intent_id",
                    "transaction_id",
                    "intent_seq",
                    "chain",
                    "chain_seq",
                    "prev_hash",
                    "hash",
                )
            },
        },
        source="snapshot",
        cursor="0/10:0",
    )
    assert message["createdAt"] == "2026-11-26T02:04:23.798123Z"
    assert (message["cursor"], message["commitLsn"]) == ("0/10:0", None)


def test_slot_names_are_checked_before_they_reach_a_replication_command() -> None:
    assert check_slot_name("durapay_events_1") == "durapay_events_1"
    for bad in ("Events", "a b", "x'; DROP", "", "a" * 64):
        with pytest.raises(ValueError):
            check_slot_name(bad)
