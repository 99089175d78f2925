"""Durable state of the network in SQLite: ledger entries, holds and per-reference counters."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from cardnet.models import PRIMARY_TYPES, OperationType
from cardnet.records import Committed, Decision, Hold, HoldKind, Operation, now_rfc3339
from cardnet.rules import decide_child

logger = logging.getLogger(__name__)

LEDGER_FILENAME = "ledger.sqlite3"
# The decline of an authorize/charge that a reversal of its reference reached first.
REVERSED_DECLINE_CODE = "reversed"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS operations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    reference TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('approved', 'declined')),
    decline_code TEXT,
    amount_in_cents INTEGER NOT NULL,
    currency TEXT NOT NULL,
    brand TEXT,
    parent_reference TEXT,
    fingerprint TEXT NOT NULL,
    created_at TEXT NOT NULL,
    committed_at TEXT NOT NULL,
    status_lags INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS operations_parent ON operations (parent_reference);
CREATE TABLE IF NOT EXISTS holds (
    reference TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    amount_in_cents INTEGER NOT NULL,
    currency TEXT NOT NULL,
    brand TEXT,
    parent_reference TEXT,
    fingerprint TEXT NOT NULL,
    created_at TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('timer', 'polls')),
    due_at REAL NOT NULL,
    decision_status TEXT,
    decision_decline_code TEXT,
    status_queries INTEGER NOT NULL DEFAULT 0,
    status_lags INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS attempts (
    reference TEXT PRIMARY KEY,
    count INTEGER NOT NULL
);
"""

_OP_COLUMNS = (
    "reference, type, amount_in_cents, currency, brand, parent_reference, fingerprint, created_at, "
    "status_lags"
)
# Columns added after the first release: a data dir from before gets them in place.
_ADDED_COLUMNS = {
    "operations": {"status_lags": "INTEGER NOT NULL DEFAULT 0"},
    "holds": {"status_lags": "INTEGER NOT NULL DEFAULT 0"},
}


def _operation(row: sqlite3.Row) -> Operation:
    return Operation(
        reference=row["reference"],
        type=OperationType(row["type"]),
        amount_in_cents=row["amount_in_cents"],
        currency=row["currency"],
        brand=row["brand"],
        parent_reference=row["parent_reference"],
        fingerprint=row["fingerprint"],
        created_at=row["created_at"],
        status_lags=bool(row["status_lags"]),
    )


def _committed(row: sqlite3.Row) -> Committed:
    return Committed(
        op=_operation(row),
        decision=Decision(row["status"], row["decline_code"]),
        committed_at=row["committed_at"],
    )


def _hold(row: sqlite3.Row) -> Hold:
    status = row["decision_status"]
    return Hold(
        op=_operation(row),
        kind=HoldKind(row["kind"]),
        due_at=row["due_at"],
        decision=Decision(status, row["decision_decline_code"]) if status else None,
        status_queries=row["status_queries"],
    )


class Ledger:
    """All reads and writes of the network's state.

    One connection guarded by a lock: writes are serialized anyway in SQLite, and every
    check-then-write (idempotency, refund totals) runs inside one BEGIN IMMEDIATE
    transaction under that lock, so concurrent requests can never both pass a check.
    """

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / LEDGER_FILENAME
        self._lock = threading.Lock()
        # isolation_level=None: we issue BEGIN/COMMIT ourselves to control the lock mode.
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed charge must not vanish, even if the host dies right after.
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._conn.executescript(_SCHEMA)
        self._add_missing_columns()
        logger.info("ledger opened at %s", self.path)

    def _add_missing_columns(self) -> None:
        for table, columns in _ADDED_COLUMNS.items():
            present = {row["name"] for row in self._conn.execute(f"PRAGMA table_info({table})")}
            for name, definition in columns.items():
                if name not in present:
                    logger.info("adding column %s.%s to the ledger", table, name)
                    self._conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {definition}")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # --- reads -------------------------------------------------------------------------

    def committed(self, reference: str) -> Committed | None:
        with self._lock:
            return self._committed_in(self._conn, reference)

    def hold(self, reference: str) -> Hold | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT * FROM holds WHERE reference = ?", (reference,)
            ).fetchone()
        return _hold(row) if row else None

    def holds(self) -> list[Hold]:
        with self._lock:
            rows = self._conn.execute("SELECT * FROM holds ORDER BY due_at").fetchall()
        return [_hold(r) for r in rows]

    def entries(self, reference: str | None = None) -> list[Committed]:
        """Ledger entries in commit order (oldest first)."""
        sql = "SELECT * FROM operations"
        params: tuple[str, ...] = ()
        if reference is not None:
            sql += " WHERE reference = ?"
            params = (reference,)
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY seq", params).fetchall()
        return [_committed(r) for r in rows]

    # --- writes ------------------------------------------------------------------------

    def bump_attempts(self, reference: str) -> int:
        """Count one more request for a reference and return the new count."""
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO attempts (reference, count) VALUES (?, 1) "
                "ON CONFLICT (reference) DO UPDATE SET count = count + 1",
                (reference,),
            )
            row = conn.execute(
                "SELECT count FROM attempts WHERE reference = ?", (reference,)
            ).fetchone()
        return int(row["count"])

    def add_hold(self, hold: Hold) -> None:
        op = hold.op
        decision = hold.decision
        with self._tx() as conn:
            conn.execute(
                f"INSERT INTO holds ({_OP_COLUMNS}, kind, due_at, decision_status, "
                "decision_decline_code, status_queries) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    *self._op_values(op),
                    hold.kind.value,
                    hold.due_at,
                    decision.status if decision else None,
                    decision.decline_code if decision else None,
                    hold.status_queries,
                ),
            )

    def commit(self, op: Operation, decision: Decision | None) -> Committed:
        """Write the final decision for an operation and clear any hold on it.

        Idempotent: if the reference is already committed, the stored entry is returned
        unchanged. With decision=None the parent rules decide, inside the transaction.
        """
        with self._tx() as conn:
            return self._commit_in(conn, op, decision)

    def poll(self, reference: str, pending_queries: int) -> tuple[Committed | Hold | None, bool]:
        """Answer a status query; a polls-hold commits once queried more than pending_queries.

        Returns the current state and whether this query is the one that committed it.
        """
        with self._tx() as conn:
            existing = self._committed_in(conn, reference)
            if existing is not None:
                return existing, False
            row = conn.execute("SELECT * FROM holds WHERE reference = ?", (reference,)).fetchone()
            if row is None:
                return None, False
            hold = _hold(row)
            if hold.kind != HoldKind.POLLS:
                return hold, False
            hold = replace(hold, status_queries=hold.status_queries + 1)
            conn.execute(
                "UPDATE holds SET status_queries = ? WHERE reference = ?",
                (hold.status_queries, reference),
            )
            if hold.status_queries <= pending_queries:
                return hold, False
            return self._commit_in(conn, hold.op, hold.decision), True

    # --- helpers -----------------------------------------------------------------------

    @staticmethod
    def _op_values(op: Operation) -> tuple[object, ...]:
        return (
            op.reference,
            op.type.value,
            op.amount_in_cents,
            op.currency,
            op.brand,
            op.parent_reference,
            op.fingerprint,
            op.created_at,
            int(op.status_lags),
        )

    @staticmethod
    def _committed_in(conn: sqlite3.Connection, reference: str) -> Committed | None:
        row = conn.execute("SELECT * FROM operations WHERE reference = ?", (reference,)).fetchone()
        return _committed(row) if row else None

    def _commit_in(
        self, conn: sqlite3.Connection, op: Operation, decision: Decision | None
    ) -> Committed:
        existing = self._committed_in(conn, op.reference)
        if existing is not None:
            return existing
        if op.type != OperationType.REVERSAL and self._reversed_in(conn, op.reference):
            # A reversal of this reference came first (its caller gave up on this request):
            # it is never approved now.
            decision = Decision.decline(REVERSED_DECLINE_CODE)
        elif decision is None or op.type not in PRIMARY_TYPES:
            op, decision = self._decide_child_in(conn, op)
        entry = Committed(op=op, decision=decision, committed_at=now_rfc3339())
        conn.execute(
            f"INSERT INTO operations ({_OP_COLUMNS}, status, decline_code, committed_at) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (*self._op_values(op), decision.status, decision.decline_code, entry.committed_at),
        )
        conn.execute("DELETE FROM holds WHERE reference = ?", (op.reference,))
        if op.type == OperationType.REVERSAL and decision.status == "approved":
            self._decline_held_original_in(conn, op.parent_reference or "")
        logger.info(
            "committed %s %s %s %s",
            op.reference,
            op.type.value,
            decision.status,
            decision.decline_code or "",
        )
        return entry

    @staticmethod
    def _reversed_in(conn: sqlite3.Connection, reference: str) -> bool:
        row = conn.execute(
            "SELECT 1 FROM operations WHERE parent_reference = ? AND type = ? "
            "AND status = 'approved'",
            (reference, OperationType.REVERSAL.value),
        ).fetchone()
        return row is not None

    def _decline_held_original_in(self, conn: sqlite3.Connection, reference: str) -> None:
        """A reversal of an operation still held inside the network stops it: the original
        commits now, declined (`reversed`), and its timer later finds it committed."""
        row = conn.execute("SELECT * FROM holds WHERE reference = ?", (reference,)).fetchone()
        if row is not None:
            self._commit_in(conn, _hold(row).op, Decision.decline(REVERSED_DECLINE_CODE))

    def _decide_child_in(
        self, conn: sqlite3.Connection, op: Operation
    ) -> tuple[Operation, Decision]:
        parent = self._committed_in(conn, op.parent_reference or "")
        rows = conn.execute(
            "SELECT * FROM operations WHERE parent_reference = ? ORDER BY seq",
            (op.parent_reference,),
        ).fetchall()
        decision = decide_child(op, parent, [_committed(r) for r in rows])
        # A child inherits the card brand of the operation it acts on.
        if parent is not None:
            op = replace(op, brand=parent.op.brand)
        return op, decision
