"""`make bench`: how fast the real stack charges cards, as ratios against baselines measured
in the same run on the same machine (absolute numbers vary with the machine; ratios less so).

It starts its own stack (free ports, temp state dir, stopped at the end), then measures at a
fixed concurrency:
  1. network baseline: authorizations sent straight to the simulator (no Durapay at all);
  2. API baseline: signed `GET /payment-intents/{id}` (auth + one query, no workflow);
  3. create: signed `POST /payment-intents` (DB insert, event, workflow start);
  4. charge: signed `POST …/transactions` with 4242 (update-with-start, 3 activities, the
     network call, the answer back synchronously): the figure that matters.
Each step prints throughput and latency percentiles; the summary prints the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from client import DurapayClient
from tests.stack import start_stack

CARD = {"number": "4242424242424242", "expMonth": 12, "expYear": 2030, "cvc": "123"}


@dataclass
class Measurement:
    name: str
    count: int
    seconds: float
    latencies: list[float]
    errors: int

    @property
    def per_second(self) -> float:
        return self.count / self.seconds

    def line(self) -> str:
        q = statistics.quantiles(self.latencies, n=100)
        return (f"{self.name:<22} {self.per_second:8.1f}/s   p50 {q[49] * 1000:7.1f} ms   "
                f"p95 {q[94] * 1000:7.1f} ms   errors {self.errors}")


async def measure(name: str, count: int, concurrency: int,
                  operation: Callable[[int], Awaitable[bool]]) -> Measurement:
    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(count):
        queue.put_nowait(index)

    async def run() -> None:
        nonlocal errors
        while not queue.empty():
            index = queue.get_nowait()
            started = time.perf_counter()
            ok = await operation(index)
            latencies.append(time.perf_counter() - started)
            errors += 0 if ok else 1

    started = time.perf_counter()
    await asyncio.gather(*(run() for _ in range(concurrency)))
    result = Measurement(name, count, time.perf_counter() - started, latencies, errors)
    print(result.line(), flush=True)
    return result


async def bench(count: int, concurrency: int, workers: int) -> None:
    with tempfile.TemporaryDirectory(prefix="dpb") as tmp:
        stack = start_stack(Path(tmp) / "home", workers=workers)
        try:
            await _run(stack.api_url, stack.cardnet_url, stack.admin_token, count, concurrency)
        finally:
            stack.stop()


async def _run(api_url: str, cardnet_url: str, admin_token: str, count: int,
               concurrency: int) -> None:
    async with httpx.AsyncClient(base_url=api_url, timeout=60, headers={
            "Authorization": f"Bearer {admin_token}"}) as admin:
        merchant = (await admin.post("/merchants", json={"name": "Bench"})).json()
    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(base_url=cardnet_url, timeout=60, limits=limits) as network, \
            DurapayClient(api_url, merchant["publicKey"], merchant["secretKey"]) as durapay:
        run_id = uuid.uuid4().hex[:8]

        async def authorize_at_network(index: int) -> bool:
            response = await network.post("/v1/operations", json={
                "reference": f"bench-{run_id}-{index}", "type": "charge",
                "amountInCents": 1000, "currency": "usd", "card": CARD})
            return response.status_code == 200

        intents: list[str] = []

        async def create_intent(index: int) -> bool:
            response = await durapay.post("/payment-intents",
                                          {"amountInCents": 1000, "currency": "usd"})
            if response.status_code == 201:
                intents.append(response.json()["id"])
            return response.status_code == 201

        async def retrieve_intent(index: int) -> bool:
            response = await durapay.get(f"/payment-intents/{intents[index % len(intents)]}")
            return response.status_code == 200

        async def charge_intent(index: int) -> bool:
            response = await durapay.post(f"/payment-intents/{intents[index]}/transactions",
                                          {"type": "charge", "card": CARD})
            return response.status_code == 200

        print(f"\n{count} operations per step, concurrency {concurrency}\n")
        network_baseline = await measure("network authorize", count, concurrency,
                                         authorize_at_network)
        create = await measure("create intent", count, concurrency, create_intent)
        api_baseline = await measure("retrieve intent", count, concurrency, retrieve_intent)
        charge = await measure("charge (end to end)", len(intents), concurrency, charge_intent)

    print("\nratios (same run, same machine):")
    print(f"  charge / network authorize  {charge.per_second / network_baseline.per_second:6.3f}"
          "   (throughput: what orchestration + durability cost over the bare network call)")
    print(f"  charge / retrieve intent    {charge.per_second / api_baseline.per_second:6.3f}"
          "   (throughput: a charge against the API's cheapest signed read)")
    print(f"  create / retrieve intent    {create.per_second / api_baseline.per_second:6.3f}")
    slower = statistics.median(charge.latencies) / statistics.median(network_baseline.latencies)
    print(f"  charge p50 / network p50    {slower:6.1f}x"
          "   (latency a cardholder waits, against the network's own)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(bench(args.count, args.concurrency, args.workers))


if __name__ == "__main__":
    main()
