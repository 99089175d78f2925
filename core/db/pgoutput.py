"""Decode PostgreSQL's `pgoutput` logical replication messages (protocol version 1).

The event stream reads the write-ahead log through a logical replication slot with the built-in
`pgoutput` plugin (no server extension to install). Each message is one binary record; the
format is PostgreSQL's "Logical Replication Message Formats" chapter. Only what the stream
needs is decoded: transactions (Begin/Commit), the table's columns (Relation) and rows
(Insert); an Update, Delete or Truncate of the append-only event table is decoded too, so the
stream can report it (it can only come from someone who set the table's trigger aside).

Column values arrive in PostgreSQL's text format and are typed here by the column's type OID.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

# PostgreSQL timestamps count microseconds from 2000-01-01 UTC.
POSTGRES_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)

INT8, INT2, INT4, BOOL, JSON, JSONB, TIMESTAMPTZ = 20, 21, 23, 16, 114, 3802, 1184


class DecodeError(ValueError):
    pass


@dataclass(frozen=True)
class Column:
    name: str
    type_oid: int


@dataclass(frozen=True)
class Relation:
    relation_id: int
    namespace: str
    name: str
    columns: tuple[Column, ...]


@dataclass(frozen=True)
class Begin:
    final_lsn: int
    committed_at: datetime
    xid: int


@dataclass(frozen=True)
class Commit:
    commit_lsn: int
    end_lsn: int
    committed_at: datetime


@dataclass(frozen=True)
class RowChange:
    """An Insert (`new` set), Update (`new`, maybe `old`), or Delete (`old`)."""

    kind: str  # "insert" | "update" | "delete"
    relation: Relation
    new: dict[str, Any] | None
    old: dict[str, Any] | None


@dataclass(frozen=True)
class Truncate:
    relation_ids: tuple[int, ...]


Message = Begin | Commit | Relation | RowChange | Truncate | None


@dataclass
class Decoder:
    """Stateful: Relation messages describe the tables that later rows refer to."""

    relations: dict[int, Relation] = field(default_factory=dict)

    def decode(self, data: bytes) -> Message:
        reader = _Reader(data)
        tag = reader.byte()
        if tag == "B":
            return Begin(reader.uint64(), _timestamp(reader.int64()), reader.uint32())
        if tag == "C":
            reader.int8()  # flags, unused
            return Commit(reader.uint64(), reader.uint64(), _timestamp(reader.int64()))
        if tag == "R":
            relation_id, namespace, name = reader.uint32(), reader.string(), reader.string()
            reader.int8()  # replica identity setting
            columns = []
            for _ in range(reader.int16()):
                reader.int8()  # flags (part of the key)
                column_name, type_oid = reader.string(), reader.uint32()
                reader.int32()  # type modifier
                columns.append(Column(column_name, type_oid))
            relation = Relation(relation_id, namespace, name, tuple(columns))
            self.relations[relation_id] = relation
            return relation
        if tag == "I":
            relation = self._relation(reader.uint32())
            if reader.byte() != "N":
                raise DecodeError("an Insert without its new tuple")
            return RowChange("insert", relation, self._tuple(reader, relation), None)
        if tag == "U":
            relation = self._relation(reader.uint32())
            old, marker = None, reader.byte()
            if marker in ("K", "O"):
                old, marker = self._tuple(reader, relation), reader.byte()
            if marker != "N":
                raise DecodeError("an Update without its new tuple")
            return RowChange("update", relation, self._tuple(reader, relation), old)
        if tag == "D":
            relation = self._relation(reader.uint32())
            reader.byte()  # 'K' (key only) or 'O' (whole old row)
            return RowChange("delete", relation, None, self._tuple(reader, relation))
        if tag == "T":
            count = reader.int32()
            reader.int8()  # options (CASCADE, RESTART IDENTITY)
            return Truncate(tuple(reader.uint32() for _ in range(count)))
        return None  # Origin, Type, Message…: nothing the stream needs

    def _relation(self, relation_id: int) -> Relation:
        try:
            return self.relations[relation_id]
        except KeyError:
            raise DecodeError(f"a row of relation {relation_id} before its description") from None

    @staticmethod
    def _tuple(reader: _Reader, relation: Relation) -> dict[str, Any]:
        count = reader.int16()
        if count != len(relation.columns):
            raise DecodeError(
                f"{relation.name}: {count} columns, described with {len(relation.columns)}"
            )
        row: dict[str, Any] = {}
        for column in relation.columns:
            kind = reader.byte()
            if kind == "n":
                row[column.name] = None
            elif kind == "u":  # unchanged TOASTed value: not sent
                continue
            elif kind == "t":
                row[column.name] = typed_value(column.type_oid, reader.bytes(reader.int32()))
            else:
                raise DecodeError(f"column kind {kind!r} (binary mode is not requested)")
        return row


def typed_value(type_oid: int, raw: bytes) -> Any:
    text = raw.decode()
    if type_oid in (INT8, INT2, INT4):
        return int(text)
    if type_oid == BOOL:
        return text == "t"
    if type_oid in (JSON, JSONB):
        return json.loads(text)
    if type_oid == TIMESTAMPTZ:
        return _parse_timestamptz(text)
    return text


def _parse_timestamptz(text: str) -> datetime:
    """PostgreSQL's ISO output (`2026-11-26 02:04:23.798123+00`, or `+05:30`)."""
    if len(text) >= 3 and text[-3] in "+-" and text[-2:].isdigit():
        text += ":00"
    return datetime.fromisoformat(text).astimezone(UTC)


def _timestamp(microseconds: int) -> datetime:
    return POSTGRES_EPOCH + timedelta(microseconds=microseconds)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def bytes(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise DecodeError("message ends early")
        chunk = self.data[self.at : self.at + n]
        self.at += n
        return chunk

    def byte(self) -> str:
        return self.bytes(1).decode()

    def int8(self) -> int:
        return int(struct.unpack("!b", self.bytes(1))[0])

    def int16(self) -> int:
        return int(struct.unpack("!h", self.bytes(2))[0])

    def int32(self) -> int:
        return int(struct.unpack("!i", self.bytes(4))[0])

    def uint32(self) -> int:
        return int(struct.unpack("!I", self.bytes(4))[0])

    def uint64(self) -> int:
        return int(struct.unpack("!Q", self.bytes(8))[0])

    def int64(self) -> int:
        return int(struct.unpack("!q", self.bytes(8))[0])

    def string(self) -> str:
        end = self.data.index(b"\0", self.at)
        value = self.data[self.at : end].decode()
        self.at = end + 1
        return value
