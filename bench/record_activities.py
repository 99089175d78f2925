"""What the worker's two records of a charge cost: `record_charge_attempt` then
`record_outcome` (approved), called one after the other as the workflow calls them, on a
scratch PostgreSQL with pg_stat_statements (`track = all`: BEGIN, COMMIT and the foreign keys'
checks count). Prints per record the wall and this process's CPU milliseconds, and the
statements per charge (both records), then verifies every chain written.

    python -m bench.record_activities [--charges 300] [--endpoints] [--compare MODULE.py]

`--compare` loads another implementation of `PaymentRecordActivities` from a file (an older
activities/persistence.py, say) and runs it alternately with the current one on the same
database: paired rounds, so a drift of a shared machine's load hits both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from activities.persistence import ChargeAttempt, Outcome, PaymentRecordActivities
from core.db.audit import verify_chains
from core.db.queries import append_event
from core.db.session import create_engine, session_factory
from core.db.tables import PaymentIntent
from core.domain import CardSummary, IntentStatus, NetworkOutcome, new_id
from core.settings import to_asyncpg_url
from tests.scratch_postgres import scratch_postgres

STATEMENT_COUNTING = {
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track": "all",
}
CARD = CardSummary(brand="visa", last4="4242", exp_month=12, exp_year=2030)


@dataclass
class Run:
    name: str
    wall: list[float] = field(default_factory=list)  # seconds per record
    cpu: list[float] = field(default_factory=list)
    statements: list[float] = field(default_factory=list)  # per charge (two records)

    def line(self) -> str:
        return (
            f"{self.name:<12} {statistics.median(self.wall) * 1000:6.2f} ms wall/record  "
            f"{statistics.median(self.cpu) * 1000:6.2f} ms CPU/record  "
            f"{statistics.median(self.statements):5.1f} statements/charge"
        )


async def _seed(database_url: str, charges: int, *, endpoints: bool) -> tuple[str, list[str]]:
    """A merchant, its card tokens and `charges` created intents with their `payment.created`."""
    pool = await asyncpg.connect(database_url)
    merchant = new_id("acct")
    await pool.execute("INSERT INTO merchant (id, name) VALUES ($1, 'bench')", merchant)
    if endpoints:
        await pool.execute(
            "INSERT INTO webhook_endpoint (id, merchant_id, url, enabled_events, status, "
            "secret_ciphertext) VALUES ($1, $2, 'https://example.invalid/hook', '[\"*\"]', "
            "'enabled', '\\x00')",
            new_id("we"),
            merchant,
        )
    await pool.close()
    engine = create_engine(to_asyncpg_url(database_url), pool_size=2)
    sessions = session_factory(engine)
    intents = []
    async with sessions() as session, session.begin():
        for _ in range(charges):
            intent = PaymentIntent(
                id=new_id("pi"),
                merchant_id=merchant,
                amount_in_cents=1000,
                currency="usd",
                capture_method="automatic",
                status=IntentStatus.CREATED.value,
            )
            session.add(intent)
            await session.flush()
            await session.refresh(intent)
            await append_event(
                session,
                cause=f"{intent.id}:created",
                event_type="payment.created",
                intent=intent,
                transaction_id=None,
            )
            intents.append(intent.id)
    await engine.dispose()
    return merchant, intents


async def _token(connection: asyncpg.Connection, merchant: str) -> str:
    token = new_id("tok")
    await connection.execute(
        "INSERT INTO card_token (id, merchant_id, pan_ciphertext, brand, last4, exp_month, "
        "exp_year) VALUES ($1, $2, '\\x01', 'visa', '4242', 12, 2030)",
        token,
        merchant,
    )
    return token


async def _round(
    records: Any, admin: asyncpg.Connection, merchant: str, intents: list[str], run: Run
) -> None:
    tokens = [await _token(admin, merchant) for _ in intents]
    await admin.execute("SELECT pg_stat_statements_reset()")
    for intent_id, token in zip(intents, tokens, strict=True):
        txn = new_id("txn")
        await _timed(records.record_charge_attempt(ChargeAttempt(intent_id, txn, token, CARD)), run)
        await _timed(records.record_outcome(Outcome(intent_id, txn, NetworkOutcome.APPROVED)), run)
    # The admin connection's own statements (the reset, this read) are left out.
    calls = await admin.fetchval(
        "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE userid = "
        "(SELECT oid FROM pg_roles WHERE rolname = current_user) AND query NOT LIKE "
        "'%pg_stat_statements%'"
    )
    run.statements.append(int(calls) / len(intents))


async def _timed(record: Coroutine[Any, Any, Any], run: Run) -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    await record
    run.wall.append(time.perf_counter() - wall)
    run.cpu.append(time.process_time() - cpu)


def _load(path: Path) -> type:
    spec = importlib.util.spec_from_file_location("compared_records", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module.PaymentRecordActivities


async def main(charges: int, rounds: int, endpoints: bool, compare: Path | None) -> None:
    implementations: dict[str, type] = {"current": PaymentRecordActivities}
    if compare is not None:
        implementations[compare.stem] = _load(compare)
    async with scratch_postgres(settings=STATEMENT_COUNTING) as url:
        admin = await asyncpg.connect(url)
        await admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        engine = create_engine(to_asyncpg_url(url), pool_size=2)
        sessions = session_factory(engine)
        runs = {name: Run(name) for name in implementations}
        merchant, intents = await _seed(url, charges * rounds * len(runs) + 20, endpoints=endpoints)
        batches = iter([intents[i : i + charges] for i in range(20, len(intents), charges)])
        for number, (name, implementation) in enumerate(implementations.items()):
            # Warm-up: connections, prepared statements, caches.
            await _round(
                implementation(sessions),
                admin,
                merchant,
                intents[number * 10 : (number + 1) * 10],
                Run(name),
            )
        for round_number in range(rounds):
            order = list(implementations.items())[:: -1 if round_number % 2 else 1]
            for name, implementation in order:
                await _round(implementation(sessions), admin, merchant, next(batches), runs[name])
        report = await verify_chains(engine, merchant)
        await engine.dispose()
        await admin.close()
    print(
        f"{charges * rounds} charges per implementation, "
        f"{'with' if endpoints else 'without'} a webhook endpoint"
    )
    for run in runs.values():
        print(run.line())
    broken = report.first_broken
    print(
        f"audit verify: {report.events} events in {report.chains} chains, "
        f"{'broken: ' + str(broken) if broken else 'every link holds'}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--charges", type=int, default=100, help="charges per round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument(
        "--endpoints",
        action="store_true",
        help="the merchant has an enabled webhook endpoint (deliveries planned)",
    )
    parser.add_argument("--compare", type=Path, help="another persistence.py to run against")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.charges, arguments.rounds, arguments.endpoints, arguments.compare))
