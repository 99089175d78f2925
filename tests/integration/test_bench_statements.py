"""`make bench`'s statement counts on the real stack: with DURAPAY_POSTGRES_TRACK_STATEMENTS
the embedded Postgres counts every statement any process runs, transaction control and the
nested foreign-key checks included, and the bench's own reads are left out of the count."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.stack import TRACK_STATEMENTS
from bench.statements import OWN_MARK, StatementCounter
from tests.integration.helpers import own_stack, signed_merchant
from tests.stack import RunningStack

pytestmark = pytest.mark.integration

CREATES = 3


@pytest.fixture(scope="module")
def counting_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    with own_stack(tmp_path_factory, "statements", extra_env=TRACK_STATEMENTS) as running:
        yield running


async def test_signed_creates_count_transaction_control_and_nested_checks(
    counting_stack: RunningStack,
) -> None:
    async with signed_merchant(counting_stack, "Counted") as durapay:
        counter = await StatementCounter.connect(counting_stack.database_url)
        try:
            await counter.read(1)  # a read before the reset: its own text must not count
            await counter.reset()
            for _ in range(CREATES):
                response = await durapay.post(
                    "/payment-intents", {"amountInCents": 1000, "currency": "usd"}
                )
                assert response.status_code == 201, response.text
            used = await counter.read(CREATES)
        finally:
            await counter.close()

    texts = [statement.query for statement in used.statements]
    assert any(text.startswith("BEGIN") for text in texts), texts
    assert "COMMIT" in texts
    assert any("INSERT INTO payment_intent" in text for text in texts), texts
    # Postgres checks a new row's foreign keys with a query of its own, run inside the INSERT.
    assert any(s.nested and "FOR KEY SHARE" in s.query for s in used.statements), texts
    assert not any(OWN_MARK in text or "pg_stat_statements" in text for text in texts), texts
    assert used.per_operation >= 3
