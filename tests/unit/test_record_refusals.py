"""activities/persistence.py `refusals_are_final`: which database failures end a record for
good (non-retryable, so a payment's lock is never held by a write that can never succeed) and
which are retried (transient ones: the record is idempotent and sends nothing)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from temporalio.exceptions import ApplicationError

from activities.persistence import refusals_are_final
from core.errors import ErrorType, IllegalTransition

SECRET_LOOKING_PARAMETER = "tok_3f9a-held-by-the-row"


class DriverError(Exception):
    """Stands in for the asyncpg exception SQLAlchemy wraps."""


def wrapped(kind: type[Exception], message: str) -> Exception:
    # As SQLAlchemy raises them: the statement and its parameters ride along.
    return kind(
        "INSERT INTO transaction (id, card_token_id) VALUES ($1, $2)",
        ("txn_1", SECRET_LOOKING_PARAMETER),
        DriverError(message),
    )


def failing_record(error: Exception) -> Any:
    class Records:
        @refusals_are_final
        async def record_something(self, argument: str) -> str:
            raise error

    return Records().record_something


@pytest.mark.parametrize(
    "error",
    [
        wrapped(
            IntegrityError,
            'insert or update on table "transaction" violates foreign key '
            "constraint\nDETAIL: Key (card_token_id) is not present",
        ),
        wrapped(DataError, "value too long for type character varying(4)"),
        IllegalTransition("payment intent", "succeeded", "start_attempt"),
        LookupError("transaction txn_1 was never recorded"),
    ],
    ids=["integrity", "data", "illegal-transition", "missing-row"],
)
async def test_a_write_the_database_will_never_accept_fails_for_good(error: Exception) -> None:
    with pytest.raises(ApplicationError) as refused:
        await failing_record(error)("argument")
    assert refused.value.non_retryable
    assert refused.value.type == ErrorType.RECORD_REFUSED
    # The database's reason, not the statement's parameters (they could carry what the row held).
    assert SECRET_LOOKING_PARAMETER not in str(refused.value)
    assert "DETAIL" not in str(refused.value)


async def test_a_transient_failure_is_left_to_the_retry_policy() -> None:
    lost = wrapped(OperationalError, "connection was closed in the middle of operation")
    with pytest.raises(OperationalError):
        await failing_record(lost)("argument")
