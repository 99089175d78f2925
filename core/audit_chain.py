"""The audit trail's hash chain: pure functions, shared by the writer and the verifier.

Every event belongs to one chain (its merchant's, or the operator chain for events about no
merchant), has a position in it (`chain_seq`, 1, 2, 3, …) and stores

    hash = SHA-256(previous event's hash ‖ canonical form of this event)

so editing, deleting or reordering an event breaks the link to its successor, and a checkpoint
of a chain's head kept elsewhere (table `audit_checkpoint`, written by a Temporal Schedule)
shows a truncated tail. One chain per merchant: merchants' writers never wait for each other.

The canonical form is compact JSON with sorted keys over every column that says what happened;
the global `seq` is left out (the database assigns it on insert) and checked for order instead.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# The predecessor of every chain's first event.
GENESIS_HASH = "0" * 64
OPERATOR_CHAIN = "operator"


def chain_of(merchant_id: str | None) -> str:
    return f"merchant:{merchant_id}" if merchant_id else OPERATOR_CHAIN


def _timestamp(value: datetime) -> str:
    """One spelling of an instant, whatever zone the driver hands back."""
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def canonical_event(row: Mapping[str, Any]) -> bytes:
    """The bytes an event's hash covers (a row as stored: snake_case column names)."""
    return json.dumps({
        "id": row["id"],
        "chain": row["chain"],
        "chainSeq": row["chain_seq"],
        "merchantId": row["merchant_id"],
        "paymentIntentId": row["payment_intent_id"],
        "transactionId": row["transaction_id"],
        "intentSeq": row["intent_seq"],
        "type": row["type"],
        "data": row["data"],
        "createdAt": _timestamp(row["created_at"]),
    }, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def link_hash(previous_hash: str, row: Mapping[str, Any]) -> str:
    return hashlib.sha256(previous_hash.encode() + b"\n" + canonical_event(row)).hexdigest()


@dataclass(frozen=True)
class BrokenLink:
    """The first place a chain does not hold, named by the event where it shows."""

    chain: str
    chain_seq: int
    event_id: str | None
    reason: str

    def __str__(self) -> str:
        where = self.event_id or "(no event)"
        return f"{self.chain} position {self.chain_seq} {where}: {self.reason}"


@dataclass(frozen=True)
class ChainHead:
    chain_seq: int
    hash: str


class ChainWalk:
    """Walks one chain's events in `chain_seq` order, one row at a time (a chain may be longer
    than memory), and names the first broken or missing link.

    `finish` then checks the writer's running head (table `audit_chain_head`) and the heads the
    schedule checkpointed earlier: a position either names past the walk's end was deleted
    from the chain's end; a hash that differs from the row's at its position was rewritten.
    """

    def __init__(self, chain: str, head: ChainHead | None = None,
                 checkpoints: Iterable[ChainHead] = ()) -> None:
        self.chain = chain
        self.head = head
        self.marks = [*((c, "a recorded checkpoint") for c in checkpoints),
                      *([(head, "the chain's head")] if head else [])]
        self.walked = 0
        self.last: Mapping[str, Any] | None = None
        self._wanted = {mark.chain_seq for mark, _ in self.marks}
        self._seen: dict[int, str] = {0: GENESIS_HASH}

    def feed(self, row: Mapping[str, Any]) -> BrokenLink | None:
        position = self.walked + 1
        broken = _check_link(self.chain, position, row, self.last)
        if broken is None:
            self.walked = position
            if position in self._wanted:
                self._seen[position] = row["hash"]
            self.last = row
        return broken

    def finish(self) -> BrokenLink | None:
        for mark, what in self.marks:
            if mark.chain_seq > self.walked:
                return BrokenLink(
                    self.chain, self.walked + 1, None,
                    f"missing: {what} names position {mark.chain_seq} but the chain ends at "
                    f"{self.walked} (events deleted from its end)")
            if self._seen.get(mark.chain_seq) != mark.hash:
                return BrokenLink(self.chain, mark.chain_seq, None,
                                  f"{what} recorded another hash at this position")
        if self.head is None and self.last is not None:
            return BrokenLink(self.chain, self.walked, self.last["id"],
                              "the chain has no head row")
        return None


def first_broken_link(chain: str, rows: Iterable[Mapping[str, Any]],
                      head: ChainHead | None = None,
                      checkpoints: Iterable[ChainHead] = ()) -> tuple[int, BrokenLink | None]:
    """A whole chain at once: (events walked, first broken link or None)."""
    walk = ChainWalk(chain, head, checkpoints)
    for row in rows:
        broken = walk.feed(row)
        if broken:
            return walk.walked, broken
    return walk.walked, walk.finish()


def _check_link(chain: str, position: int, row: Mapping[str, Any],
                last: Mapping[str, Any] | None) -> BrokenLink | None:
    event_id = row["id"]
    if row["chain_seq"] != position:
        return BrokenLink(chain, position, event_id,
                          f"missing link: expected position {position}, found {row['chain_seq']}")
    expected_previous = last["hash"] if last else GENESIS_HASH
    if row["prev_hash"] != expected_previous:
        return BrokenLink(chain, position, event_id,
                          "does not link to the event before it (reordered or one removed)")
    if link_hash(row["prev_hash"], row) != row["hash"]:
        return BrokenLink(chain, position, event_id, "its contents do not match its hash")
    if last is not None and row["seq"] <= last["seq"]:
        return BrokenLink(chain, position, event_id,
                          "recorded before the event it follows (rows reordered)")
    return None
