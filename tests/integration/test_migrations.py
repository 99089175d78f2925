"""The migrations, on a scratch database of the real Postgres: they build exactly the schema the
tables declare, and every downgrade really undoes its upgrade."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import SQLModel

from core.db import tables  # noqa: F401  (registers the tables on the metadata)
from core.db.audit import verify_chains
from core.db.migrate import downgrade, upgrade
from core.settings import to_asyncpg_url
from tests.stack import RunningStack

pytestmark = pytest.mark.integration


@pytest.fixture
async def scratch_url(stack: RunningStack) -> AsyncIterator[str]:
    name = f"migration_check_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(stack.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield to_asyncpg_url(stack.database_url.rsplit("/", 1)[0] + f"/{name}")
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def _schema_drift(url: str) -> list[Any]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), SQLModel.metadata)
            )
    finally:
        await engine.dispose()


async def _tables(url: str) -> set[str]:
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        rows = await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await connection.close()
    return {row["tablename"] for row in rows} - {"alembic_version"}


async def test_migrations_build_the_declared_schema_and_downgrade_cleanly(scratch_url: str) -> None:
    await asyncio.to_thread(upgrade, scratch_url)
    drift = await _schema_drift(scratch_url)
    assert drift == [], "\n".join(map(repr, drift))
    assert await _tables(scratch_url) == set(SQLModel.metadata.tables)

    await asyncio.to_thread(downgrade, scratch_url, "base")
    assert await _tables(scratch_url) == set()
    await asyncio.to_thread(upgrade, scratch_url)  # and up again, from nothing
    assert await _schema_drift(scratch_url) == []


async def _verified(url: str) -> dict[str, tuple[int, int]]:
    """Each scope's (chains, events), once every link is checked to hold."""
    engine = create_async_engine(url)
    try:
        report = await verify_chains(engine)
    finally:
        await engine.dispose()
    assert report.first_broken is None, str(report.first_broken)
    return {s.scope: (s.chains, s.events) for s in report.scopes.values()}


async def test_events_written_before_the_chains_are_chained_per_payment_by_the_migrations(
    scratch_url: str,
) -> None:
    await asyncio.to_thread(upgrade, scratch_url, "2026_11_28_card_number_retention")
    plain = scratch_url.replace("postgresql+asyncpg", "postgresql")
    connection = await asyncpg.connect(plain)
    try:
        for merchant in ("mer_a", "mer_b"):
            await connection.execute("INSERT INTO merchant (id, name) VALUES ($1, $1)", merchant)
            await connection.execute(
                "INSERT INTO payment_intent (id, merchant_id, amount_in_cents, currency, "
                "capture_method, status) VALUES ($1, $2, 100, 'usd', 'automatic', 'created')",
                f"pi_{merchant}",
                merchant,
            )
        for n, merchant in enumerate(["mer_a", "mer_b", "mer_a", "mer_a", "mer_b"]):
            await connection.execute(
                "INSERT INTO event (id, merchant_id, payment_intent_id, type, data) "
                "VALUES ($1, $2, $3, 'payment.created', '{\"status\": \"created\"}')",
                f"evt_{n}",
                merchant,
                f"pi_{merchant}",
            )
        await connection.execute(
            "INSERT INTO event (id, merchant_id, type, data) VALUES "
            "('evt_we', 'mer_a', 'webhook_endpoint.disabled', '{\"endpointId\": \"we_1\"}'), "
            "('evt_rcd', NULL, 'reconciliation.discrepancy', '{\"discrepancyId\": \"rcd_1\"}')"
        )
    finally:
        await connection.close()

    # One chain per merchant first (2026_11_29), then one per subject.
    await asyncio.to_thread(upgrade, scratch_url, "2026_11_30_event_publication")
    assert await _chains(plain) == {
        "evt_0": ("merchant:mer_a", 1, 1),
        "evt_1": ("merchant:mer_b", 1, 1),
        "evt_2": ("merchant:mer_a", 2, 2),
        "evt_3": ("merchant:mer_a", 3, 3),
        "evt_4": ("merchant:mer_b", 2, 2),
        "evt_we": ("merchant:mer_a", 4, None),
        "evt_rcd": ("operator", 1, None),
    }
    await asyncio.to_thread(upgrade, scratch_url)
    assert await _chains(plain) == {
        "evt_0": ("pi_mer_a", 1, 1),
        "evt_1": ("pi_mer_b", 1, 1),
        "evt_2": ("pi_mer_a", 2, 2),
        "evt_3": ("pi_mer_a", 3, 3),
        "evt_4": ("pi_mer_b", 2, 2),
        "evt_we": ("we_1", 1, None),
        "evt_rcd": ("rcd_1", 1, None),
    }
    assert await _verified(scratch_url) == {
        "merchant:mer_a": (2, 4),
        "merchant:mer_b": (1, 2),
        "operator": (1, 1),
    }

    # And back: the merchant chains and their head rows, as 2026_11_29 left them.
    await asyncio.to_thread(downgrade, scratch_url, "2026_11_30_event_publication")
    assert (await _chains(plain))["evt_we"] == ("merchant:mer_a", 4, None)
    connection = await asyncpg.connect(plain)
    try:
        heads = {
            r["chain"]: r["chain_seq"]
            for r in await connection.fetch("SELECT chain, chain_seq FROM audit_chain_head")
        }
    finally:
        await connection.close()
    assert heads == {"merchant:mer_a": 4, "merchant:mer_b": 2, "operator": 1}
    await asyncio.to_thread(upgrade, scratch_url)
    assert await _verified(scratch_url) == {
        "merchant:mer_a": (2, 4),
        "merchant:mer_b": (1, 2),
        "operator": (1, 1),
    }


async def _chains(plain_url: str) -> dict[str, tuple[str, int, int | None]]:
    connection = await asyncpg.connect(plain_url)
    try:
        rows = await connection.fetch("SELECT id, chain, chain_seq, intent_seq FROM event")
    finally:
        await connection.close()
    return {r["id"]: (r["chain"], r["chain_seq"], r["intent_seq"]) for r in rows}
