"""The card vault's retention: a card number is kept only as long as an authorization may still
need it, then its ciphertext is deleted (brand, last4 and expiry stay, for display).

Only `authorize_card` ever reads a card number; capture, void, refund and status queries go by
network reference. So a charge's card number is deleted with its definite outcome (approved,
declined or failed, in the transaction that records it: `shred_card_number`), never while the
outcome is unknown, when a retry of the same authorization may still need it.

Card numbers that no outcome deletes (a request that failed before its charge was recorded, an
outcome the database refused, an attempt whose outcome stays unknown) are deleted once they are
`CARD_NUMBER_RETENTION` old (`shred_stale_card_numbers`, in bounded batches by the
`durapay-housekeeping` schedule, workflows/housekeeping.py): by then every retry of their
authorization is long over; one that still came (a worker down for a day) would find no card,
which the workflow treats as an unknown outcome and reconciles, never as "nothing happened".

Clearing the column leaves the ciphertext in the table's dead row versions and in the WAL; what
makes those copies unreadable is the destruction of its epoch key (core/vault_epochs.py), a
margin after this retention has run out for every card number of the epoch.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.db.tables import CardToken
from core.vault_epochs import CARD_NUMBER_RETENTION

__all__ = ["CARD_NUMBER_RETENTION", "shred_card_number", "shred_stale_card_numbers"]


async def shred_card_number(session: AsyncSession, token_id: str) -> None:
    """Delete a token's card number (its charge's outcome is definite); idempotent."""
    await session.exec(
        update(CardToken)
        .where(col(CardToken.id) == token_id, col(CardToken.pan_ciphertext).is_not(None))
        .values(pan_ciphertext=None, pan_deleted_at=func.now())
    )


async def shred_stale_card_numbers(
    session: AsyncSession, now: datetime, *, limit: int | None
) -> int:
    """Delete the card numbers held longer than `CARD_NUMBER_RETENTION`, oldest first, at most
    `limit` of them (None: all); returns how many. SKIP LOCKED: a token being written now is
    left for the next batch instead of waiting on it."""
    stale = (
        select(CardToken.id)
        .where(
            col(CardToken.pan_ciphertext).is_not(None),
            col(CardToken.created_at) < now - CARD_NUMBER_RETENTION,
        )
        .order_by(col(CardToken.created_at))
        .with_for_update(skip_locked=True)
    )
    if limit is not None:
        stale = stale.limit(limit)
    result = await session.exec(
        update(CardToken)
        .where(col(CardToken.id).in_(stale.scalar_subquery()))
        .values(pan_ciphertext=None, pan_deleted_at=func.now())
    )
    return int(result.rowcount)
