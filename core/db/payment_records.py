"""The worker's hot path in plain SQL on the driver's connection: the payment records that
every charge writes, each as one locking read and one write statement in one transaction.

The guarantees are those of `core/db/queries.py` (the caller asks the state machine; every
move is guarded by `WHERE status = :expected`; the event is appended at the end of the
payment's hash chain, built by `chained_event_row`, in the same database transaction as the
move, with its webhook deliveries). Only the cost differs: no ORM, no identity map, and the
reads a record needs (the intent under its lock, the transaction, the card token's owner, the
chain's tail, the merchant's enabled endpoints, the time) in one statement.

One statement reads under the lock with the snapshot taken before it waited for the lock: what
a concurrent writer of the same payment committed meanwhile would be missing from the other
reads. Every writer of a payment's chain moves the intent's row, so a row version newer than
the snapshot's (`fresh` false) says so, and the read is repeated, lock held, with a new
snapshot.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

from core.db.deliveries import DeliveryTarget, planned_deliveries
from core.db.tables import Transaction
from core.domain import RecordedTransaction

# Why a hot-path statement is refused for good (see activities/persistence.py
# `refusals_are_final`): a constraint or a value the database rejects.
REFUSED_BY_DATABASE: tuple[type[Exception], ...] = (
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.DataError,
)


@dataclass(slots=True)
class IntentRow:
    id: str
    merchant_id: str
    amount_in_cents: int
    currency: str
    capture_method: str
    status: str
    amount_capturable: int
    amount_received: int
    amount_refunded: int
    last_error: dict[str, Any] | None
    cancellation_reason: str | None
    manual_review_since: datetime | None
    manual_review_resolved_at: datetime | None
    updated_at: datetime | None = None  # not read: set when a record moves the intent

    @property
    def review_open(self) -> bool:
        return self.manual_review_since is not None and self.manual_review_resolved_at is None


@dataclass(slots=True)
class TransactionRow:
    id: str
    type: str
    status: str
    amount_in_cents: int
    card_token_id: str | None
    decline_code: str | None
    failure_code: str | None
    reconciled: bool
    created_at: datetime | None
    updated_at: datetime | None
    # Read only by `read_payment` (a run that opens after earlier ones closed).
    reversal_reference: str | None = None


def recorded_transaction(txn: Transaction | TransactionRow) -> RecordedTransaction:
    """A transaction as the API answers with it, from its row (ORM or plain), times as unix
    seconds (plain JSON in Temporal history)."""
    return RecordedTransaction(
        id=txn.id,
        type=txn.type,
        status=txn.status,
        amount_in_cents=txn.amount_in_cents,
        decline_code=txn.decline_code,
        failure_code=txn.failure_code,
        reconciled=txn.reconciled,
        created_at=txn.created_at.timestamp() if txn.created_at else None,
        updated_at=txn.updated_at.timestamp() if txn.updated_at else None,
    )


@dataclass(slots=True)
class LockedPayment:
    """What one record read, the intent locked: the transaction it names (None if not
    recorded), the payment chain's tail, the time every write of the record carries, and the
    merchant's enabled webhook endpoints."""

    intent: IntentRow
    transaction: TransactionRow | None
    tail_seq: int | None
    tail_hash: str | None
    now: datetime
    endpoints: list[DeliveryTarget]
    fresh: bool
    card_token_owner: str | None = None
    created_event_recorded: bool = False


_INTENT_COLUMNS = (
    "id",
    "merchant_id",
    "amount_in_cents",
    "currency",
    "capture_method",
    "status",
    "amount_capturable",
    "amount_received",
    "amount_refunded",
    "last_error",
    "cancellation_reason",
    "manual_review_since",
    "manual_review_resolved_at",
)
_TRANSACTION_COLUMNS = (
    "id",
    "type",
    "status",
    "amount_in_cents",
    "card_token_id",
    "decline_code",
    "failure_code",
    "reconciled",
    "created_at",
    "updated_at",
)


def _locked_read(*, with_card_token: bool) -> str:
    """The intent locked first (a subquery, so the laterals that name it run after the lock, in
    the order every writer takes: intent, then transaction), then what the record needs.
    JSON comes back as text: the same whichever codec the connection's owner set for it."""
    extra = (
        "(SELECT merchant_id FROM card_token WHERE id = $3) AS card_token_owner,\n"
        "  EXISTS (SELECT 1 FROM event WHERE id = $4) AS created_event_recorded,"
        if with_card_token
        else ""
    )
    return f"""
SELECT {", ".join(f"i.{c}" for c in _INTENT_COLUMNS if c != "last_error")},
  i.last_error::text AS last_error,
  {", ".join(f"t.{c} AS t_{c}" for c in _TRANSACTION_COLUMNS)},
  tail.chain_seq AS tail_seq, tail.hash AS tail_hash, clock_timestamp() AS now,
  {extra}
  (SELECT p.xmin FROM payment_intent AS p WHERE p.id = $1) = i.row_version AS fresh,
  (SELECT coalesce(json_agg(json_build_array(e.id, e.enabled_events) ORDER BY e.id), '[]')
     FROM webhook_endpoint AS e
    WHERE e.merchant_id = i.merchant_id AND e.status = 'enabled' AND e.deleted_at IS NULL
  )::text AS endpoints
FROM (SELECT *, xmin AS row_version FROM payment_intent WHERE id = $1 FOR UPDATE) AS i
LEFT JOIN LATERAL (
  SELECT * FROM transaction WHERE id = $2 AND payment_intent_id = i.id FOR UPDATE
) AS t ON true
LEFT JOIN LATERAL (
  SELECT chain_seq, hash FROM event WHERE chain = i.id ORDER BY chain_seq DESC LIMIT 1
) AS tail ON true
"""


_READ_FOR_OUTCOME = _locked_read(with_card_token=False)
_READ_FOR_CHARGE = _locked_read(with_card_token=True)


async def lock_payment(
    connection: asyncpg.Connection, intent_id: str, transaction_id: str
) -> LockedPayment:
    """Lock the intent and read what a record of `transaction_id` needs (in a transaction)."""
    return await _read_locked(connection, _READ_FOR_OUTCOME, intent_id, transaction_id)


async def lock_payment_for_charge(
    connection: asyncpg.Connection,
    intent_id: str,
    transaction_id: str,
    *,
    card_token_id: str,
    created_event_id: str,
) -> LockedPayment:
    """`lock_payment`, plus the card token's merchant and whether `payment.created` exists."""
    return await _read_locked(
        connection, _READ_FOR_CHARGE, intent_id, transaction_id, card_token_id, created_event_id
    )


async def _read_locked(connection: asyncpg.Connection, statement: str, *args: str) -> LockedPayment:
    row = await connection.fetchrow(statement, *args)
    if row is not None and not row["fresh"]:
        # The lock was taken over from a writer that committed after this statement's
        # snapshot: read again, lock held, with one that sees it.
        row = await connection.fetchrow(statement, *args)
    if row is None:
        raise LookupError(f"payment intent {args[0]} was never recorded")
    last_error = row["last_error"]
    intent = IntentRow(
        **{c: row[c] for c in _INTENT_COLUMNS if c != "last_error"},
        last_error=json.loads(last_error) if last_error is not None else None,
    )
    transaction = (
        TransactionRow(**{c: row[f"t_{c}"] for c in _TRANSACTION_COLUMNS})
        if row["t_id"] is not None
        else None
    )
    keys = row.keys()
    return LockedPayment(
        intent=intent,
        transaction=transaction,
        tail_seq=row["tail_seq"],
        tail_hash=row["tail_hash"],
        now=row["now"],
        fresh=row["fresh"],
        endpoints=[
            DeliveryTarget(endpoint_id, events)
            for endpoint_id, events in json.loads(row["endpoints"])
        ],
        card_token_owner=row["card_token_owner"] if "card_token_owner" in keys else None,
        created_event_recorded=bool(row["created_event_recorded"])
        if "created_event_recorded" in keys
        else False,
    )


async def read_payment(
    connection: asyncpg.Connection, intent_id: str
) -> tuple[IntentRow, list[TransactionRow]]:
    """A payment as recorded, its transactions oldest first; nothing locked."""
    row = await connection.fetchrow(
        f"SELECT {', '.join(c for c in _INTENT_COLUMNS if c != 'last_error')}, "
        "last_error::text AS last_error FROM payment_intent WHERE id = $1",
        intent_id,
    )
    if row is None:
        raise LookupError(f"payment intent {intent_id} was never recorded")
    intent = IntentRow(
        **{c: row[c] for c in _INTENT_COLUMNS if c != "last_error"},
        last_error=json.loads(row["last_error"]) if row["last_error"] else None,
    )
    transactions = await connection.fetch(
        f"SELECT {', '.join(_TRANSACTION_COLUMNS)}, reversal_reference FROM transaction "
        "WHERE payment_intent_id = $1 ORDER BY created_at, id",
        intent_id,
    )
    return intent, [TransactionRow(**dict(t)) for t in transactions]


# The SQL type of each column a record writes: every parameter is cast, so the driver never
# has to guess one and one statement text always has one plan.
_COLUMN_TYPES = {
    "status": "text",
    "amount_capturable": "bigint",
    "amount_received": "bigint",
    "amount_refunded": "bigint",
    "last_error": "jsonb",
    "cancellation_reason": "text",
    "manual_review_resolved_at": "timestamptz",
    "updated_at": "timestamptz",
    "decline_code": "text",
    "failure_code": "text",
    "reconciled": "boolean",
}
_JSON_COLUMNS = frozenset({"last_error"})


@dataclass
class RecordWrite:
    """Everything one record writes, sent as one statement (data-modifying CTEs). A part left
    out is not in the statement. `inserted_transaction` and `moved_transaction` /
    `moved_intent` are guarded moves: the caller checks they matched (see `WriteResult`)."""

    inserted_transaction: dict[str, Any] | None = None
    moved_transaction: tuple[str, str, dict[str, Any]] | None = None  # id, expected, changes
    moved_intent: tuple[str, str, dict[str, Any]] | None = None  # id, expected status, changes
    # A `chained_event_row`; with `moved_intent`, appended only if the move matched.
    event: dict[str, Any] | None = None
    shredded_card_token: str | None = None
    deliveries: list[dict[str, str]] = field(default_factory=list)


@dataclass(slots=True)
class WriteResult:
    transaction_created_at: datetime | None
    transaction_updated_at: datetime | None
    transaction_moved: bool
    intent_moved: bool


class _Parameters:
    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, value: Any, sql_type: str) -> str:
        self.values.append(value)
        return f"${len(self.values)}::{sql_type}"


def _assignments(bind: _Parameters, changes: dict[str, Any]) -> str:
    return ", ".join(
        f"{name} = {bind(json.dumps(value) if name in _JSON_COLUMNS and value is not None else value, _COLUMN_TYPES[name])}"  # noqa: E501
        for name, value in changes.items()
    )


def write_statement(write: RecordWrite) -> tuple[str, list[Any]]:
    """The one statement of `write` and its parameters."""
    bind = _Parameters()
    parts: list[str] = []
    selected = ["NULL::timestamptz", "NULL::timestamptz", "false", "false"]
    written_transaction: str | None = None  # the CTE whose transaction row the answer reads
    if write.inserted_transaction is not None:
        row = write.inserted_transaction
        columns = ", ".join(row)
        values = ", ".join(bind(value, sql_type) for value, sql_type in row.values())
        parts.append(
            f"inserted AS (INSERT INTO transaction ({columns}) VALUES ({values}) "
            "RETURNING created_at, updated_at)"
        )
        written_transaction = "inserted"
    if write.moved_transaction is not None:
        txn_id, expected, changes = write.moved_transaction
        parts.append(
            f"moved_transaction AS (UPDATE transaction SET {_assignments(bind, changes)} "
            f"WHERE id = {bind(txn_id, 'text')} AND status = {bind(expected, 'text')} "
            "RETURNING created_at, updated_at)"
        )
        written_transaction = "moved_transaction"
    if written_transaction is not None:
        selected[0:3] = [
            f"(SELECT created_at FROM {written_transaction})",
            f"(SELECT updated_at FROM {written_transaction})",
            f"EXISTS (SELECT FROM {written_transaction})",
        ]
    if write.moved_intent is not None:
        intent_id, expected, changes = write.moved_intent
        parts.append(
            f"moved_intent AS (UPDATE payment_intent SET {_assignments(bind, changes)} "
            f"WHERE id = {bind(intent_id, 'text')} AND status = {bind(expected, 'text')}"
            " RETURNING id)"
        )
        selected[3] = "EXISTS (SELECT FROM moved_intent)"
    if write.event is not None:
        event = write.event
        values = ", ".join(
            (
                bind(event["id"], "text"),
                bind(event["merchant_id"], "text"),
                bind(event["payment_intent_id"], "text"),
                bind(event["transaction_id"], "text"),
                bind(event["type"], "text"),
                bind(json.dumps(event["data"]), "jsonb"),
                bind(event["created_at"], "timestamptz"),
                bind(event["chain"], "text"),
                bind(event["chain_seq"], "bigint"),
                bind(event["intent_seq"], "int"),
                bind(event["prev_hash"], "text"),
                bind(event["hash"], "text"),
            )
        )
        # A payment's event comes with its move: appended only if the move matched.
        source = (
            f"SELECT {values} FROM moved_intent"
            if write.moved_intent is not None
            else f"VALUES ({values})"
        )
        parts.append(
            "appended AS (INSERT INTO event (id, merchant_id, payment_intent_id, transaction_id, "
            f"type, data, created_at, chain, chain_seq, intent_seq, prev_hash, hash) {source} "
            "RETURNING id)"
        )
    if write.shredded_card_token is not None:
        parts.append(
            "shredded AS (UPDATE card_token SET pan_ciphertext = NULL, pan_deleted_at = now() "
            f"WHERE id = {bind(write.shredded_card_token, 'text')} "
            "AND pan_ciphertext IS NOT NULL)"
        )
    if write.deliveries:
        # Planned events of earlier transactions exist already; the one appended here comes
        # from `appended` (a CTE's insert is not visible to its siblings' reads).
        parts.append(
            "planned AS (INSERT INTO webhook_delivery (id, merchant_id, event_id, endpoint_id, "
            "origin) SELECT d.id, d.merchant_id, d.event_id, d.endpoint_id, 'event' FROM unnest("
            f"{bind([d['id'] for d in write.deliveries], 'text[]')}, "
            f"{bind([d['merchant_id'] for d in write.deliveries], 'text[]')}, "
            f"{bind([d['event_id'] for d in write.deliveries], 'text[]')}, "
            f"{bind([d['endpoint_id'] for d in write.deliveries], 'text[]')}"
            ") AS d (id, merchant_id, event_id, endpoint_id) ON CONFLICT (id) DO NOTHING)"
        )
    statement = f"WITH {', '.join(parts)} SELECT {', '.join(selected)}"
    return statement, bind.values


async def write_record(connection: asyncpg.Connection, write: RecordWrite) -> WriteResult:
    statement, values = write_statement(write)
    row = await connection.fetchrow(statement, *values)
    assert row is not None
    return WriteResult(row[0], row[1], row[2], row[3])


async def deliveries_of_recorded(
    connection: asyncpg.Connection,
    merchant_id: str,
    endpoints: list[DeliveryTarget],
    event_ids: list[str],
) -> list[str]:
    """Plan again the deliveries of events written by an earlier try (a retry after its
    commit): the same ids, nothing written twice; events never appended are skipped."""
    if not endpoints or not event_ids:
        return []
    events = await connection.fetch(
        "SELECT id, type FROM event WHERE id = ANY($1::text[]) ORDER BY seq", event_ids
    )
    rows = planned_deliveries(merchant_id, endpoints, [(e["id"], e["type"]) for e in events])
    if rows:
        await write_record(connection, RecordWrite(deliveries=rows))
    return [row["id"] for row in rows]


@asynccontextmanager
async def driver_connection(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    """An asyncpg connection from the engine's pool (one pool per process, whatever the path
    that uses it). A connection that broke under us is invalidated, not handed out again."""
    pooled = await engine.raw_connection()
    connection = pooled.driver_connection
    assert isinstance(connection, asyncpg.Connection)
    try:
        yield connection
    except BaseException as error:
        if (
            isinstance(error, (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError))
            or connection.is_closed()
        ):
            await greenlet_spawn(pooled.invalidate, error)
        raise
    finally:
        if not connection.is_closed() and connection.is_in_transaction():
            # Cut short mid-transaction (a cancelled activity) with its rollback unsent: the
            # pool knows nothing of it, so the next user would write inside it.
            await greenlet_spawn(pooled.invalidate)
        # Returning it may close it (pool overflow), which awaits: in SQLAlchemy's greenlet.
        await greenlet_spawn(pooled.close)
