"""Chaos: hundreds of charges with the network misbehaving at random while workers and the API
are killed with SIGKILL. Once reconciliation settles, the network's ledger and our database must
agree exactly: nobody charged twice, no charge lost, no success invented, nothing stuck.

Runs on its own stack (two workers) so the kills disturb no other test.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest

from client import DurapayClient
from tests.integration.conftest import card
from tests.integration.helpers import FAST_TIMING_ENV, assert_eventually, own_stack, signed_merchant
from tests.stack import RunningStack

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SEED = 20261125
INTENTS = 200
CONCURRENCY = 20
SETTLE_TIMEOUT_SECONDS = 120.0
# Every fault path fires tens of times over ~250 requests, yet 4 refusals in a row (which would
# fail an approving card as processing_error) stay unlikely (0.1^4).
FAULTS = {"latencyMs": 400, "latencyRate": 0.2, "errorRate": 0.1, "dropRate": 0.05,
          "holdRate": 0.04, "seed": SEED}
APPROVING = ["4242424242424242"] * 6 + ["5555555555554444", "4111111111111111"]
DECLINING = ["4000000000000002", "4000000000009995", "4000000000000069", "4000000000000127"]
SPECIAL = ["4000000000001018", "4000000000001026", "4000000000001034", "4000000000001042",
           "4000000000001059", "4000000000000119"]
# What a merchant's next charge uses: mostly good cards, some declines and network trouble.
CARD_MIX = APPROVING * 3 + DECLINING * 2 + SPECIAL


@pytest.fixture(scope="module")
def chaos_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    with own_stack(tmp_path_factory, "chaos", workers=2, extra_env=FAST_TIMING_ENV) as running:
        yield running


@pytest.fixture(scope="module")
async def chaos_merchant(chaos_stack: RunningStack) -> AsyncIterator[DurapayClient]:
    async with signed_merchant(chaos_stack, "Chaos Merchant") as client:
        yield client


@dataclass
class Load:
    """What the merchant saw: one entry per charge request (after its retries)."""

    paths: Counter[str] = field(default_factory=Counter)
    transport_retries: int = 0
    server_errors: Counter[int] = field(default_factory=Counter)  # 5xx answers, then retried
    intents_done: int = 0
    intent_ids: list[str] = field(default_factory=list)


async def test_chaos_run_settles_with_ledger_and_database_in_agreement(
        chaos_stack: RunningStack, chaos_merchant: DurapayClient,
        capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=chaos_stack.cardnet_url, timeout=30) as cardnet:
        response = await cardnet.post("/faults", json=FAULTS)
        assert response.status_code == 200, response.text

        load = Load()
        rng = random.Random(SEED)
        limit = asyncio.Semaphore(CONCURRENCY)
        merchant_task = asyncio.gather(*(
            _run_intent(chaos_merchant, index, random.Random(rng.random()), limit, load)
            for index in range(INTENTS)))
        try:
            kills = await _kill_during_load(chaos_stack, load)
        except BaseException:
            merchant_task.cancel()
            raise
        await merchant_task
        load_end = time.monotonic()
        assert (await cardnet.delete("/faults")).status_code == 200

        pool = await asyncpg.create_pool(chaos_stack.database_url, min_size=1, max_size=2)
        try:
            try:
                await assert_eventually(lambda: _nothing_processing(pool),
                                        timeout=SETTLE_TIMEOUT_SECONDS, interval=1.0)
                settled = f"settled {time.monotonic() - load_end:.1f} s after the load"
            except AssertionError as error:  # counted and shown below, then asserted
                settled = f"NOT settled {SETTLE_TIMEOUT_SECONDS:.0f} s after the load: {error}"
            ledger = (await cardnet.get("/ledger")).json()["data"]
            transactions = await pool.fetch(
                'SELECT id, payment_intent_id, network_reference, status, reconciled '
                'FROM "transaction" WHERE type = \'charge\'')
            stuck = await pool.fetch(
                'SELECT pi.id, t.id AS txn, t.status, t.card_last4 FROM payment_intent pi '
                'JOIN "transaction" t ON t.payment_intent_id = pi.id '
                "WHERE pi.status = 'processing' AND t.status IN ('pending', 'timeout')")
            processing = await pool.fetchval(
                "SELECT count(*) FROM payment_intent WHERE status = 'processing'")
        finally:
            await pool.close()

    counts = _invariant_counts(ledger, transactions, processing)
    requests = sum(load.paths.values())
    reconciled = sum(1 for t in transactions if t["reconciled"])
    with capsys.disabled():
        print(f"\n[chaos] {len(transactions)} charge attempts from {requests} charge requests on "
              f"{len(load.intent_ids)} intents; paths "
              f"{dict(sorted(load.paths.items()))}; retried after {load.transport_retries} "
              f"connection errors and {dict(load.server_errors)} 5xx answers; {reconciled} "
              "transactions settled by status queries")
        print(f"[chaos] kills: {'; '.join(kills)}")
        print(f"[chaos] load {load_end - started:.1f} s, {settled}; ledger {len(ledger)} "
              "entries")
        print("[chaos] " + ", ".join(f"{name}={value}" for name, value in counts.items()))
        for row in stuck:
            print(f"[chaos] stuck: {row['id']} {row['txn']} {row['status']} "
                  f"card …{row['card_last4']}")

    assert len(transactions) >= 200 and len(load.intent_ids) >= 100
    assert load.paths["202"] > 0 and load.paths["402"] > 0 and reconciled > 0  # chaos happened
    assert not [p for p in load.paths if p.startswith("other")], load.paths
    assert chaos_stack.process.poll() is None, "the supervisor gave up on a child"
    assert counts == {"charged_twice": 0, "network_charge_missing_here": 0,
                      "succeeded_without_network_charge": 0, "stuck_processing": 0}, \
        f"see the logs under {chaos_stack.home / 'logs'}"


# ---- the merchant ------------------------------------------------------------------------------
async def _run_intent(durapay: DurapayClient, index: int, rng: random.Random,
                      limit: asyncio.Semaphore, load: Load) -> None:
    """Create an intent and charge it; after a 402 the customer tries another card (≤ 3)."""
    async with limit:
        intent = await _create_intent(durapay, index, rng, load)
        if intent is None:
            return
        load.intent_ids.append(intent)
        # Every third order starts with a card that declines, so many intents see a second charge.
        number = rng.choice(DECLINING) if index % 3 == 0 else rng.choice(CARD_MIX)
        for attempt in range(1, 4):
            body = {"type": "charge", "card": card(number)}
            key = f"chaos-charge-{index}-{attempt}"
            path = f"/payment-intents/{intent}/transactions"
            if rng.random() < 0.1:  # a double-clicked "Pay": the same request twice at once
                results = await asyncio.gather(_post(durapay, path, body, key, load),
                                               _post(durapay, path, body, key, load))
                status = next((s for s in results if s != "409"), "409")  # the one that ran
            else:
                status = await _post(durapay, path, body, key, load)
            if status != "402":
                break
            number = rng.choice(CARD_MIX) if attempt == 1 else APPROVING[0]
        load.intents_done += 1


async def _create_intent(durapay: DurapayClient, index: int, rng: random.Random,
                         load: Load) -> str | None:
    body = {"amountInCents": rng.randint(100, 50_000), "currency": rng.choice(["usd", "eur"]),
            "metadata": {"order": str(index)}}
    for round_ in range(3):
        key = f"chaos-intent-{index}-{round_}"
        response = await _send(durapay, "/payment-intents", body, key, load)
        if response is not None and response.status_code == 201:
            return str(response.json()["id"])
        # 409: the API died holding this key; the merchant gives up on it and uses a new one.
    load.intents_done += 1
    return None


async def _post(durapay: DurapayClient, path: str, body: dict[str, Any], key: str,
                load: Load) -> str:
    """One charge request; returns "200", "202", "402", "409" or something unexpected."""
    response = await _send(durapay, path, body, key, load)
    status = "error" if response is None else str(response.status_code)
    if status == "409":
        assert response is not None
        load.paths[f"409 {response.json()['error']['code']}"] += 1
    else:
        load.paths[status if status in ("200", "202", "402") else f"other {status}"] += 1
    return status


async def _send(durapay: DurapayClient, path: str, body: dict[str, Any], key: str,
                load: Load) -> httpx.Response | None:
    """POST with the same Idempotency-Key until an answer that is not a 5xx (the API may be
    down for a few seconds); None if that never comes within a minute."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            response = await durapay.post(path, body, idempotency_key=key)
        except httpx.TransportError:
            load.transport_retries += 1
        else:
            if response.status_code < 500:
                return response
            load.server_errors[response.status_code] += 1
        await asyncio.sleep(0.5)  # a merchant's retry backoff, not a test wait
    return None


# ---- the chaos monkey --------------------------------------------------------------------------
async def _kill_during_load(stack: RunningStack, load: Load) -> list[str]:
    """SIGKILL worker-1, worker-2, then the API while charges are in flight; each comes back."""
    kills: list[str] = []
    for share, child in ((0.2, "worker-1"), (0.4, "worker-2"), (0.6, "api")):
        async def progressed(threshold: float = share) -> bool:
            return load.intents_done >= threshold * INTENTS
        await assert_eventually(progressed, timeout=180, interval=0.2)
        old_pid = _child_pid(stack, child)
        os.kill(old_pid, signal.SIGKILL)
        new_pid = await assert_eventually(lambda c=child, p=old_pid: _restarted(stack, c, p),
                                          timeout=60, interval=0.2,
                                          message=f"{child} was not restarted")
        kills.append(f"{child} pid {old_pid} -> {new_pid} at {load.intents_done} intents done")
    return kills


def _child_pid(stack: RunningStack, name: str) -> int:
    children = stack.state()["children"]
    assert isinstance(children, dict)
    return int(children[name])


async def _restarted(stack: RunningStack, name: str, old_pid: int) -> int | None:
    try:
        pid = _child_pid(stack, name)
    except (json.JSONDecodeError, KeyError):  # stack.json is being rewritten
        return None
    if pid == old_pid or not _alive(pid):
        return None
    if name == "api":
        async with httpx.AsyncClient(timeout=2) as http:
            try:
                if (await http.get(f"{stack.api_url}/healthz")).status_code != 200:
                    return None
            except httpx.HTTPError:
                return None
    return pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ---- the verdict -------------------------------------------------------------------------------
async def _nothing_processing(pool: asyncpg.Pool) -> bool:
    left = await pool.fetchval("SELECT count(*) FROM payment_intent WHERE status = 'processing'")
    assert left == 0, f"{left} intents still processing"
    return True


def _invariant_counts(ledger: list[dict[str, Any]], transactions: list[asyncpg.Record],
                      processing: int) -> dict[str, int]:
    approved = [e["reference"] for e in ledger
                if e["type"] == "charge" and e["status"] == "approved"]
    intent_of = {t["network_reference"]: t["payment_intent_id"] for t in transactions}
    succeeded = {t["network_reference"] for t in transactions if t["status"] == "succeeded"}
    charges_per_intent = Counter(intent_of.get(ref, f"unknown:{ref}") for ref in approved)
    return {
        "charged_twice": sum(1 for n in charges_per_intent.values() if n > 1),
        "network_charge_missing_here": sum(1 for ref in approved if ref not in succeeded),
        "succeeded_without_network_charge": len(succeeded - set(approved)),
        "stuck_processing": int(processing),
    }
