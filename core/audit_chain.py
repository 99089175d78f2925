"""The audit trail's hash chains and their checkpoints: pure functions, shared by the writer,
the checkpoint schedule and the verifier.

Every event belongs to the chain of its subject: a payment's events to the payment's chain
(its id, `pi_…`; positions 1, 2, 3, … are the payment's `intent_seq`), an endpoint's
`webhook_endpoint.disabled` to the endpoint's (`we_…`), a reconciliation discrepancy's event to
the discrepancy's (`rcd_…`). Each event has a position in its chain (`chain_seq`) and stores

    hash = SHA-256(previous event's hash ‖ canonical form of this event)

so editing, deleting or reordering an event breaks the link to its successor. A chain is
appended to only under its subject's row lock, which its writers hold anyway: nothing that
every event of a merchant writes is locked, so one merchant's payments are written side by
side like different merchants' ones.

What a chain alone cannot show is its own end cut off, or the whole chain gone. The checkpoint
schedule records, append-only, for each merchant (the checkpoint's `scope`) whose chains moved:
each moved chain's head (chain, position, hash), a Merkle root over those heads sorted by
chain, and a hash linking the checkpoint to the merchant's previous one:

    checkpoint hash = SHA-256(previous checkpoint's hash ‖ canonical form of this checkpoint)

A chain that falls short of a position a checkpoint recorded lost its tail; a chain a
checkpoint names but whose events are all gone was deleted whole.

The canonical forms are compact JSON with sorted keys over every column that says what
happened; an event's global `seq` is left out (the database assigns it on insert) and checked
for order instead.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# The predecessor of every chain's first event and of every scope's first checkpoint.
GENESIS_HASH = "0" * 64
OPERATOR_SCOPE = "operator"


def scope_of(merchant_id: str | None) -> str:
    """Whose checkpoints cover a chain: its merchant's, or the operator's for events about no
    merchant (a network charge we never recorded)."""
    return f"merchant:{merchant_id}" if merchant_id else OPERATOR_SCOPE


def _timestamp(value: datetime) -> str:
    """One spelling of an instant, whatever zone the driver hands back."""
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _sha256(*parts: bytes) -> str:
    return hashlib.sha256(b"".join(parts)).hexdigest()


def _canonical(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def canonical_event(row: Mapping[str, Any]) -> bytes:
    """The bytes an event's hash covers (a row as stored: snake_case column names)."""
    return _canonical(
        {
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
        }
    )


def link_hash(previous_hash: str, row: Mapping[str, Any]) -> str:
    return _sha256(previous_hash.encode(), b"\n", canonical_event(row))


@dataclass(frozen=True, order=True)
class ChainHead:
    """Where a chain ended when a checkpoint looked."""

    chain: str
    chain_seq: int
    hash: str


def merkle_root(heads: Sequence[ChainHead]) -> str:
    """RFC 6962's Merkle tree hash over the heads sorted by chain: a leaf is
    SHA-256(0x00 ‖ chain, position, hash), a node SHA-256(0x01 ‖ left ‖ right), the left
    subtree the largest power of two below the count. The prefixes keep a leaf from passing
    for a node."""
    leaves = [
        bytes.fromhex(_sha256(b"\x00", f"{h.chain}\n{h.chain_seq}\n{h.hash}".encode()))
        for h in sorted(heads)
    ]
    return _tree_hash(leaves).hex()


def _tree_hash(leaves: list[bytes]) -> bytes:
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    split = 1 << ((len(leaves) - 1).bit_length() - 1)
    return hashlib.sha256(
        b"\x01" + _tree_hash(leaves[:split]) + _tree_hash(leaves[split:])
    ).digest()


def canonical_checkpoint(row: Mapping[str, Any]) -> bytes:
    """The bytes a checkpoint's hash covers (a row of `audit_checkpoint` as stored)."""
    return _canonical(
        {
            "scope": row["scope"],
            "position": row["position"],
            "chains": row["chains"],
            "root": row["root"],
            "recordedAt": _timestamp(row["recorded_at"]),
        }
    )


def checkpoint_hash(previous_hash: str, row: Mapping[str, Any]) -> str:
    return _sha256(previous_hash.encode(), b"\n", canonical_checkpoint(row))


@dataclass(frozen=True)
class BrokenLink:
    """The first place a chain (of events, or of a scope's checkpoints) does not hold, named by
    the event where it shows when there is one."""

    chain: str
    chain_seq: int
    event_id: str | None
    reason: str

    def __str__(self) -> str:
        where = f" {self.event_id}" if self.event_id else ""
        return f"{self.chain} position {self.chain_seq}{where}: {self.reason}"


@dataclass(frozen=True)
class Mark:
    """A chain head recorded by checkpoint number `checkpoint` of the chain's scope."""

    checkpoint: int
    chain_seq: int
    hash: str


class ChainWalk:
    """Walks one chain's events in `chain_seq` order, one row at a time (a chain may be longer
    than memory), with the heads checkpoints recorded for it fed in between (a head right after
    the event at its position), and names the first broken or missing link."""

    def __init__(self, chain: str) -> None:
        self.chain = chain
        self.walked = 0
        self.last: Mapping[str, Any] | None = None
        self.broken: BrokenLink | None = None
        self._beyond: Mark | None = None  # the first head past the events walked so far

    def feed(self, row: Mapping[str, Any]) -> BrokenLink | None:
        if self.broken is None:
            self.broken = _check_link(self.chain, self.walked + 1, row, self.last)
            if self.broken is None:
                self.walked += 1
                self.last = row
        return self.broken

    def check(self, mark: Mark) -> BrokenLink | None:
        """A recorded head: the event at its position must carry its hash. A head past the
        events walked is only known to be missing once the chain ends (`finish`)."""
        if self.broken is not None:
            return self.broken
        if mark.chain_seq < 1:
            self.broken = BrokenLink(
                self.chain,
                mark.chain_seq,
                None,
                f"checkpoint {mark.checkpoint} names a position no chain has",
            )
        elif mark.chain_seq > self.walked:
            self._beyond = self._beyond or mark
        elif (
            mark.chain_seq == self.walked
            and self.last is not None
            and self.last["hash"] != mark.hash
        ):
            self.broken = BrokenLink(
                self.chain,
                mark.chain_seq,
                self.last["id"],
                f"checkpoint {mark.checkpoint} recorded another hash at this position",
            )
        return self.broken

    def finish(self) -> BrokenLink | None:
        mark = self._beyond
        if self.broken is None and mark is not None:
            if self.walked == 0:
                self.broken = BrokenLink(
                    self.chain,
                    1,
                    None,
                    f"missing chain: checkpoint {mark.checkpoint} names position "
                    f"{mark.chain_seq} but the chain has no events (deleted whole)",
                )
            else:
                self.broken = BrokenLink(
                    self.chain,
                    self.walked + 1,
                    None,
                    f"missing: checkpoint {mark.checkpoint} names position {mark.chain_seq} "
                    f"but the chain ends at {self.walked} (events deleted from its end)",
                )
        return self.broken


def _check_link(
    chain: str, position: int, row: Mapping[str, Any], last: Mapping[str, Any] | None
) -> BrokenLink | None:
    event_id = row["id"]
    if row["chain_seq"] != position:
        return BrokenLink(
            chain,
            position,
            event_id,
            f"missing link: expected position {position}, found {row['chain_seq']}",
        )
    expected_previous = last["hash"] if last else GENESIS_HASH
    if row["prev_hash"] != expected_previous:
        return BrokenLink(
            chain,
            position,
            event_id,
            "does not link to the event before it (reordered or one removed)",
        )
    if link_hash(row["prev_hash"], row) != row["hash"]:
        return BrokenLink(chain, position, event_id, "its contents do not match its hash")
    if last is not None and row["seq"] <= last["seq"]:
        return BrokenLink(
            chain, position, event_id, "recorded before the event it follows (rows reordered)"
        )
    return None


def first_broken_link(
    chain: str, rows: Sequence[Mapping[str, Any]], marks: Sequence[Mark] = ()
) -> tuple[int, BrokenLink | None]:
    """A whole chain at once, its marks placed as the verifier places them: (events walked,
    first broken link or None)."""
    walk = ChainWalk(chain)
    pending = sorted(marks, key=lambda m: (m.chain_seq, m.checkpoint))
    for row in rows:
        while pending and pending[0].chain_seq < row["chain_seq"]:
            walk.check(pending.pop(0))
        walk.feed(row)
        while pending and pending[0].chain_seq == row["chain_seq"]:
            walk.check(pending.pop(0))
    for mark in pending:
        walk.check(mark)
    return walk.walked, walk.finish()


class CheckpointWalk:
    """Walks one scope's checkpoints in position order, each with the heads it records, and
    names the first one that does not hold: a gap, a broken link, contents that do not match
    its hash, or a root that does not match its heads (a head row edited, added or deleted)."""

    def __init__(self, scope: str) -> None:
        self.chain = f"checkpoints of {scope}"
        self.walked = 0
        self.last_hash = GENESIS_HASH
        self.broken: BrokenLink | None = None

    def feed(self, row: Mapping[str, Any], heads: Sequence[ChainHead]) -> BrokenLink | None:
        if self.broken is not None:
            return self.broken
        position = self.walked + 1
        if row["position"] != position:
            reason = f"missing link: expected checkpoint {position}, found {row['position']}"
        elif row["prev_hash"] != self.last_hash:
            reason = "does not link to the checkpoint before it (reordered or one removed)"
        elif checkpoint_hash(row["prev_hash"], row) != row["hash"]:
            reason = "its contents do not match its hash"
        elif row["chains"] != len(heads) or merkle_root(heads) != row["root"]:
            reason = (
                "its root does not match the chain heads it records (a head edited, "
                "added or removed)"
            )
        else:
            self.walked, self.last_hash = position, row["hash"]
            return None
        self.broken = BrokenLink(self.chain, position, None, reason)
        return self.broken
