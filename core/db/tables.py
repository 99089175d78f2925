"""Database tables. Only this module knows column names; API schemas are separate.

Money is `amount_in_cents BIGINT` plus `currency`; times are `timestamptz` in UTC. Card numbers
and secrets exist here only as AES-GCM ciphertext, each naming its master key (core/crypto.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Double,
    ForeignKeyConstraint,
    Index,
    LargeBinary,
    MetaData,
    SmallInteger,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

# A fixed naming convention keeps Alembic's constraint names stable across environments.
SQLModel.metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _created_at() -> Any:
    return Field(
        sa_column=Column(DateTime(timezone=True), nullable=False, server_default=func.now())
    )


def _timestamp(nullable: bool = False) -> Any:
    return Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=nullable))


class Merchant(SQLModel, table=True):
    """Never deleted or renamed (a trigger refuses both): the tables every payment writes name
    their merchant without a foreign key, whose check would lock this row for each insert."""

    __tablename__ = "merchant"
    id: str = Field(primary_key=True)
    name: str
    created_at: datetime = _created_at()


class MerchantKey(SQLModel, table=True):
    __tablename__ = "merchant_key"
    public_key: str = Field(primary_key=True)
    merchant_id: str = Field(foreign_key="merchant.id", index=True)
    secret_ciphertext: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    # A rolled key keeps working until `expires_at` (grace period), then is refused.
    expires_at: datetime | None = _timestamp(nullable=True)
    created_at: datetime = _created_at()


class RequestNonce(SQLModel, table=True):
    """Nonces seen per key inside the signature window; shared by every API process."""

    __tablename__ = "request_nonce"
    public_key: str = Field(primary_key=True)
    nonce: str = Field(primary_key=True)
    expires_at: datetime = Field(
        sa_column=Column(DateTime(timezone=True), nullable=False, index=True)
    )


class RateLimitBucket(SQLModel, table=True):
    """One shard of an API key's token bucket (api/rate_limit.py), shared by every API process:
    a key of a rate up to `SHARD_RATE` has one (shard 0), a bigger key up to `MAX_SHARDS`.

    UNLOGGED: a bucket is worth nothing after a crash (it refills within seconds), so its
    writes skip the WAL and a commit that wrote only here waits for no disk flush. Rows only
    for keys that ever authenticated: requests that fail authentication never reach it.
    """

    __tablename__ = "rate_limit_bucket"
    __table_args__ = {"prefixes": ["UNLOGGED"]}
    public_key: str = Field(primary_key=True)
    shard: int = Field(sa_column=Column(SmallInteger, primary_key=True))
    tokens: float = Field(sa_column=Column(Double, nullable=False))
    # Whether the latest request took a token: RETURNING sees only the row as updated.
    allowed: bool
    updated_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class CardToken(SQLModel, table=True):
    """The vault: the PAN encrypted, bound to its token id. The CVC is never stored.

    The PAN is deleted once no authorization can need it any more (core/db/vault.py); brand,
    last4 and expiry stay for display. It is encrypted under its epoch's key too (core/crypto.py
    `VaultCipher`), whose destruction makes every earlier copy of the row unreadable."""

    __tablename__ = "card_token"
    __table_args__ = (
        # The PANs still held, oldest first: the retention sweep's bounded batches.
        Index(
            "ix_card_token_pan_held_created_at",
            "created_at",
            postgresql_where=text("pan_ciphertext IS NOT NULL"),
        ),
    )
    id: str = Field(primary_key=True)
    merchant_id: str = Field(index=True)  # no key: see Merchant
    pan_ciphertext: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    pan_deleted_at: datetime | None = _timestamp(nullable=True)
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    created_at: datetime = _created_at()


class PaymentIntent(SQLModel, table=True):
    __tablename__ = "payment_intent"
    __table_args__ = (
        # The merchant's list, newest first (keyset pagination).
        Index(
            "ix_payment_intent_merchant_id_created_at_id",
            "merchant_id",
            text("created_at DESC"),
            text("id DESC"),
        ),
        # Operators' open manual reviews: few rows among many, so a partial index.
        Index(
            "ix_payment_intent_open_manual_review",
            "manual_review_since",
            postgresql_where=text(
                "manual_review_since IS NOT NULL AND manual_review_resolved_at IS NULL"
            ),
        ),
        # What a transaction's and an event's key refer to: an intent *and* its merchant.
        UniqueConstraint("id", "merchant_id"),
    )
    id: str = Field(primary_key=True)
    merchant_id: str = Field(index=True)  # no key: see Merchant
    amount_in_cents: int = Field(sa_type=BigInteger)
    currency: str
    description: str | None = None
    capture_method: str
    status: str
    amount_capturable: int = Field(default=0, sa_type=BigInteger)
    amount_received: int = Field(default=0, sa_type=BigInteger)
    amount_refunded: int = Field(default=0, sa_type=BigInteger)
    last_error: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB))
    metadata_: dict[str, str] = Field(
        default_factory=dict, sa_column=Column("metadata", JSONB, nullable=False)
    )
    # Set when an unknown outcome outlived the reconciliation horizon; a person must look.
    manual_review_since: datetime | None = _timestamp(nullable=True)
    manual_review_resolved_at: datetime | None = _timestamp(nullable=True)
    # Why a canceled intent was canceled (`requested_by_customer`, `expired`, …).
    cancellation_reason: str | None = None
    created_at: datetime = _created_at()
    updated_at: datetime = _created_at()


class Transaction(SQLModel, table=True):
    __tablename__ = "transaction"
    __table_args__ = (
        # The reconciliation sweep selects transactions by creation time.
        Index("ix_transaction_created_at", "created_at"),
        # One key for both: the intent exists and the transaction names the intent's own
        # merchant (which the intent's key to merchant makes exist). One check per insert
        # where two keys made two, each locking its parent row (the merchant's for every
        # write of every payment).
        ForeignKeyConstraint(
            ["payment_intent_id", "merchant_id"],
            ["payment_intent.id", "payment_intent.merchant_id"],
        ),
    )
    id: str = Field(primary_key=True)
    merchant_id: str
    payment_intent_id: str = Field(index=True)
    type: str
    amount_in_cents: int = Field(sa_type=BigInteger)
    currency: str
    status: str
    # The idempotency key at the network: every retry of this operation reuses it.
    network_reference: str = Field(unique=True)
    # Capture, void and refund act on an earlier operation's reference (authorize/charge/capture).
    parent_reference: str | None = None
    # A charge whose answer was lost and that the network does not know is reversed under this
    # reference of its own, recorded before the reversal is sent (never shown to merchants).
    reversal_reference: str | None = Field(default=None, unique=True)
    card_token_id: str | None = Field(default=None, foreign_key="card_token.id")
    card_brand: str | None = None
    card_last4: str | None = None
    card_exp_month: int | None = None
    card_exp_year: int | None = None
    failure_code: str | None = None
    decline_code: str | None = None
    reconciled: bool = False
    created_at: datetime = _created_at()
    updated_at: datetime = _created_at()


class Event(SQLModel, table=True):
    """Append-only audit trail; a trigger refuses UPDATE and DELETE."""

    __tablename__ = "event"
    # GET /events: the merchant's newest first.
    __table_args__ = (
        Index("ix_event_merchant_id_seq", "merchant_id", text("seq DESC")),
        UniqueConstraint("chain", "chain_seq"),
        UniqueConstraint("payment_intent_id", "intent_seq"),
        # A payment's event names its intent and the intent's own merchant (as
        # a transaction does). An event about no payment (an endpoint's, a
        # discrepancy's) has no key on its merchant_id: its writers take it from
        # a row they just read (the authenticated merchant, an endpoint, which
        # has its key), merchants are never deleted, and a key would lock the
        # merchant's row on every payment event too.
        ForeignKeyConstraint(
            ["payment_intent_id", "merchant_id"],
            ["payment_intent.id", "payment_intent.merchant_id"],
        ),
        # A key with a NULL column checks nothing: a payment's event must name
        # its merchant, so that its key is checked.
        CheckConstraint(
            "payment_intent_id IS NULL OR merchant_id IS NOT NULL",
            name="payment_event_has_merchant",
        ),
    )
    seq: int | None = Field(default=None, primary_key=True, sa_type=BigInteger)
    id: str = Field(unique=True)
    # NULL only for operator events about no merchant (a network charge we never recorded).
    merchant_id: str | None = None
    payment_intent_id: str | None = Field(default=None, index=True)
    transaction_id: str | None = None
    type: str
    data: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    created_at: datetime = _created_at()
    # The hash chain (core/audit_chain.py): the chain of the event's subject (a payment's id,
    # an endpoint's, a discrepancy's), the position in it, the predecessor's hash and this
    # event's. Written once, by `append_chained_event`, never updated.
    chain: str
    chain_seq: int = Field(sa_type=BigInteger)
    prev_hash: str
    hash: str
    # 1, 2, 3, … over one payment's events: its story in order, from its events alone.
    intent_seq: int | None = None
    # The writing transaction's id: the checkpoint finds the chains that moved since its last
    # snapshot by it (core/db/audit.py), without a row every writer would have to update.
    txid: int = Field(
        sa_column=Column(
            BigInteger,
            nullable=False,
            index=True,
            server_default=text("(pg_current_xact_id()::text)::bigint"),
        )
    )


class AuditCheckpoint(SQLModel, table=True):
    """One checkpoint of a scope (a merchant, or the operator's events): append-only, hash
    linked to the scope's previous one, with a Merkle root over the chain heads it records
    (core/audit_chain.py)."""

    __tablename__ = "audit_checkpoint"
    __table_args__ = (UniqueConstraint("scope", "position"),)
    id: int | None = Field(default=None, primary_key=True, sa_type=BigInteger)
    scope: str
    position: int = Field(sa_type=BigInteger)
    chains: int
    root: str
    prev_hash: str
    hash: str
    # What this checkpoint's run saw (pg_current_snapshot()): the next run takes the chains
    # with events this snapshot did not see. Not hashed: it says where to look, not what was.
    covered_snapshot: str
    recorded_at: datetime = _created_at()


class AuditCheckpointHead(SQLModel, table=True):
    """A chain's head as a checkpoint recorded it (append-only)."""

    __tablename__ = "audit_checkpoint_head"
    # The verifier reads a chain's recorded heads beside its events, in position order.
    __table_args__ = (Index("ix_audit_checkpoint_head_chain_chain_seq", "chain", "chain_seq"),)
    checkpoint_id: int = Field(
        primary_key=True, foreign_key="audit_checkpoint.id", sa_type=BigInteger
    )
    chain: str = Field(primary_key=True)
    chain_seq: int = Field(sa_type=BigInteger)
    hash: str


class IdempotencyRecord(SQLModel, table=True):
    """A merchant's Idempotency-Key: the request it named and the response it got."""

    __tablename__ = "idempotency_record"
    # Expired records are found by age (api/idempotency.py), a bounded batch per claim.
    __table_args__ = (Index("ix_idempotency_record_created_at", "created_at"),)
    merchant_id: str = Field(primary_key=True)  # no key: see Merchant
    key: str = Field(primary_key=True)
    endpoint: str
    request_hash: str
    response_status: int | None = None
    response_body: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB))
    created_at: datetime = _created_at()


class WebhookEndpoint(SQLModel, table=True):
    """A merchant's webhook URL. Secrets exist only as ciphertext bound to the endpoint id."""

    __tablename__ = "webhook_endpoint"
    __table_args__ = (  # the merchant's list, newest first
        Index(
            "ix_webhook_endpoint_merchant_id_created_at_id",
            "merchant_id",
            text("created_at DESC"),
            text("id DESC"),
        ),
        UniqueConstraint("id", "merchant_id"),
    )  # what a delivery's key refers to
    id: str = Field(primary_key=True)
    merchant_id: str = Field(foreign_key="merchant.id")
    url: str
    description: str | None = None
    enabled_events: list[str] = Field(sa_column=Column(JSONB, nullable=False))
    status: str = "enabled"
    disabled_reason: str | None = None
    secret_ciphertext: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    # After a rotation the old secret keeps signing (a second signature) until it expires.
    previous_secret_ciphertext: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    previous_secret_expires_at: datetime | None = _timestamp(nullable=True)
    # Start of the current run of failed attempts; cleared by any success.
    failing_since: datetime | None = _timestamp(nullable=True)
    deleted_at: datetime | None = _timestamp(nullable=True)
    created_at: datetime = _created_at()
    updated_at: datetime = _created_at()


class WebhookDelivery(SQLModel, table=True):
    """One event sent to one endpoint; its id is derived from what planned it (stable)."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        # An endpoint's deliveries, newest first.
        Index(
            "ix_webhook_delivery_endpoint_id_created_at_id",
            "endpoint_id",
            text("created_at DESC"),
            text("id DESC"),
        ),
        # The endpoint, and its own merchant (as for a transaction: one key, not two).
        ForeignKeyConstraint(
            ["endpoint_id", "merchant_id"], ["webhook_endpoint.id", "webhook_endpoint.merchant_id"]
        ),
        # Deliveries not attempted yet, oldest first: the webhook reaper's pages (few rows).
        Index(
            "ix_webhook_delivery_unattempted",
            "created_at",
            "id",
            postgresql_where=text("status = 'pending' AND attempt_count = 0"),
        ),
    )
    id: str = Field(primary_key=True)
    merchant_id: str
    event_id: str = Field(foreign_key="event.id", index=True)
    endpoint_id: str
    origin: str = "event"  # `event` (planned by the payment) or `redeliver`
    status: str = "pending"  # pending | succeeded | failed | canceled
    attempt_count: int = 0
    created_at: datetime = _created_at()
    updated_at: datetime = _created_at()


class WebhookDeliveryAttempt(SQLModel, table=True):
    """One HTTP attempt of a delivery; (delivery, number) makes a retried record an upsert."""

    __tablename__ = "webhook_delivery_attempt"
    delivery_id: str = Field(primary_key=True, foreign_key="webhook_delivery.id")
    attempt_number: int = Field(primary_key=True)
    attempted_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    status_code: int | None = None
    error: str | None = None
    duration_ms: int
    response_body: str | None = None


class ReconciliationRun(SQLModel, table=True):
    """One sweep over a window: what was compared and how much was wrong. Append-only.

    `discrepancies` is everything the sweep found: `newly_opened` plus `still_open` (already
    open items found again); `cleared` counts open items it checked and no longer found.
    """

    __tablename__ = "reconciliation_run"
    id: str = Field(primary_key=True)
    window_start: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    window_end: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    trigger: str  # schedule | manual
    transactions_checked: int
    ledger_entries_checked: int
    in_flight: int
    discrepancies: int
    newly_opened: int
    still_open: int
    cleared: int
    created_at: datetime = _created_at()

    __table_args__ = (Index("ix_reconciliation_run_created_at", "created_at"),)


class ReconciliationDiscrepancy(SQLModel, table=True):
    """One problem on a reference, open until resolved: one open row per (reference, kind).

    Opened by a sweep (`run_id`) or by other code (`run_id` NULL, e.g. the payment workflow);
    `created_at` is when it opened. A trigger lets an open row change only its sighting
    (`last_seen_*`) and its resolution; a resolved row never changes again.
    The ids are plain columns, not foreign keys: the network may know a reference that we never
    recorded, and then there is no merchant, intent or transaction to point at.
    """

    __tablename__ = "reconciliation_discrepancy"
    id: str = Field(primary_key=True)
    run_id: str | None = Field(default=None, foreign_key="reconciliation_run.id", index=True)
    kind: str
    network_reference: str = Field(index=True)
    merchant_id: str | None = None
    payment_intent_id: str | None = None
    transaction_id: str | None = None
    our_status: str | None = None
    network_status: str | None = None
    our_amount_in_cents: int | None = Field(default=None, sa_type=BigInteger)
    network_amount_in_cents: int | None = Field(default=None, sa_type=BigInteger)
    currency: str | None = None
    network_currency: str | None = None
    detail: dict[str, Any] = Field(
        default_factory=dict,
        sa_column=Column(JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    )
    # The latest sweep that found it again (the opening sweep until then); bookkeeping that a
    # retried sweep reads its report back by, so a plain column like the ids above.
    last_seen_run_id: str | None = Field(default=None, index=True)
    last_seen_at: datetime | None = _timestamp(nullable=True)
    resolved_at: datetime | None = _timestamp(nullable=True)
    # The operator's note, or "cleared by sweep recon_…" when a sweep no longer found it.
    resolution_note: str | None = None
    created_at: datetime = _created_at()

    __table_args__ = (
        # One open item per problem: `open_discrepancy` inserts ON CONFLICT against this.
        Index(
            "uq_reconciliation_discrepancy_open_network_reference_kind",
            "network_reference",
            "kind",
            unique=True,
            postgresql_where=text("resolved_at IS NULL"),
        ),
    )


class EventStreamSlot(SQLModel, table=True):
    """One event stream consumer's slot (core/db/replication.py): written by the consumer."""

    __tablename__ = "event_stream_slot"
    slot: str = Field(primary_key=True)
    # The consumer asked for the table's events committed before the slot (`--snapshot`).
    snapshot: bool
    # The slot's consistent point: the copy holds exactly what committed before it.
    consistent_lsn: str | None = None
    snapshot_rows: int | None = Field(default=None, sa_type=BigInteger)
    # Set once the sink confirmed the whole copy: a restart streams on, never copies again.
    snapshot_done_at: datetime | None = _timestamp(nullable=True)
    # The last cursor the sink confirmed.
    last_cursor: str | None = None
    created_at: datetime = _created_at()
