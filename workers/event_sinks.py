"""Where the event stream delivers: JSON lines on stdout or in a file, or a Kafka topic.

A sink has two steps: `send` hands it a batch of events, `confirm` returns once they are
durable where they went (flushed and fsynced, or acknowledged by every in-sync Kafka replica).
The stream advances its replication slot only after `confirm`, so nothing confirmed is ever
sent again except after a crash between the two (at least once; the event id tells).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Protocol, TextIO


class EventSink(Protocol):
    async def send(self, events: list[dict[str, Any]]) -> None: ...

    async def confirm(self) -> None: ...

    async def close(self) -> None: ...


def event_line(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"), sort_keys=True, ensure_ascii=False) + "\n"


class StreamSink:
    """JSON lines on a text stream (stdout): confirmed once flushed."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stdout

    async def send(self, events: list[dict[str, Any]]) -> None:
        self._stream.write("".join(event_line(e) for e in events))

    async def confirm(self) -> None:
        self._stream.flush()

    async def close(self) -> None:
        self._stream.flush()


class FileSink:
    """JSON lines appended to a file: confirmed once fsynced.

    A consumer killed while writing can leave half a line at the end: that line was never
    confirmed, so the stream sends it again; it is cut off when the file is opened again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        _cut_torn_line(path)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115  (closed by close())

    async def send(self, events: list[dict[str, Any]]) -> None:
        self._file.write("".join(event_line(e) for e in events))

    async def confirm(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    async def close(self) -> None:
        await self.confirm()
        self._file.close()


def _cut_torn_line(path: Path) -> None:
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as file:
        data = file.read()
        if data.endswith(b"\n"):
            return
        file.truncate(data.rfind(b"\n") + 1)
        file.flush()
        os.fsync(file.fileno())


class KafkaSink:
    """Each event to a Kafka topic, keyed by its payment intent (one partition keeps one
    payment's events in order). Idempotent producer, acks from all in-sync replicas."""

    def __init__(self, bootstrap: str, topic: str, *, producer: Any = None) -> None:
        self.topic = topic
        if producer is None:
            from aiokafka import AIOKafkaProducer

            producer = AIOKafkaProducer(
                bootstrap_servers=bootstrap,
                acks="all",
                enable_idempotence=True,
                value_serializer=lambda line: line.encode(),
                key_serializer=_key_bytes,
            )
        self._producer = producer
        self._started = False
        self._pending: list[Any] = []

    async def send(self, events: list[dict[str, Any]]) -> None:
        if not self._started:
            await self._producer.start()
            self._started = True
        for event in events:
            key = event.get("paymentIntentId") or event.get("chain")
            self._pending.append(
                await self._producer.send(self.topic, event_line(event).rstrip("\n"), key=key)
            )

    async def confirm(self) -> None:
        pending, self._pending = self._pending, []
        for delivery in pending:
            await delivery  # raises if the broker refused it: the slot does not move

    async def close(self) -> None:
        if self._started:
            await self._producer.stop()


def _key_bytes(key: str | None) -> bytes | None:
    return key.encode() if key is not None else None
