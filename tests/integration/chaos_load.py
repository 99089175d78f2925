"""The chaos run's merchant: closed-loop load over every operation of a PaymentIntent.

Each intent lives one merchant story: create it (automatic or manual capture), charge it
(another card after a decline), then for manual capture capture all or part of it or cancel
it, and refund some of what succeeded (partial, full, several at once). Every request is
retried as a merchant would: with the SAME Idempotency-Key after a connection error, a 5xx, a
429, or a 409 that says "in progress", bounded in count and time. What came back is counted in
`Load`; nothing here asserts, the test judges the counts.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from client import DurapayClient
from tests.integration.conftest import card

APPROVING = ["4242424242424242"] * 6 + ["5555555555554444", "4111111111111111"]
DECLINING = ["4000000000000002", "4000000000009995", "4000000000000069", "4000000000000127"]
# Held/approved, held/declined, lost response, two 503s, slow status, processing_error.
FAULT_CARDS = [
    "4000000000001018",
    "4000000000001026",
    "4000000000001034",
    "4000000000001042",
    "4000000000001059",
    "4000000000000119",
]
# A network's bad day: 502 after commit, garbage body, trickled body, lagging status index.
BAD_DAY_CARDS = ["4000000000001067", "4000000000001075", "4000000000001083", "4000000000001091"]
# What a customer pays with: mostly good cards, some declines, one in five a troubled one.
CARD_MIX = APPROVING * 4 + DECLINING * 2 + FAULT_CARDS + BAD_DAY_CARDS
MANUAL_CAPTURE_SHARE = 0.4
CURRENCIES = ["usd", "eur", "gbp"]

# A merchant's patience for one request (all its retries): longer than the API's 60 s before
# it takes over the Idempotency-Key of a request whose API process died.
RETRY_BUDGET_SECONDS = 75.0
MAX_ATTEMPTS = 60
# ... and for a 202 to settle before it moves on.
SETTLE_PATIENCE_SECONDS = 20.0
# 409 codes that mean "still running, ask again", not "not allowed".
IN_PROGRESS_CODES = frozenset({"attempt_in_flight", "idempotency_key_in_use"})
EXPECTED_STATUSES = frozenset({200, 201, 202, 402, 409})
# Concurrent partial refunds that no longer fit are refused with this 400 (see the API docs).
EXPECTED_400_CODES = frozenset({"amount_too_large"})


@dataclass
class Load:
    """What the merchant saw over the whole run."""

    requests: Counter[str] = field(default_factory=Counter)  # logical requests per operation
    answers: Counter[str] = field(default_factory=Counter)  # every answer, retries included
    final: dict[str, Counter[str]] = field(default_factory=dict)  # per operation, last answer
    defects: list[str] = field(default_factory=list)  # every 500
    unexpected: list[str] = field(default_factory=list)  # answers outside the contract
    gave_up: list[str] = field(default_factory=list)  # retried past the merchant's patience
    unavailable_without_retry_after: int = 0
    still_processing_for_merchant: int = 0  # a 202 that did not settle within our patience
    # How long the merchant polled before an operation it was answered 202 for had settled.
    settle_waits: list[float] = field(default_factory=list)
    intent_ids: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    done_after: list[float] = field(default_factory=list)  # seconds into the load, per story

    @property
    def intents_done(self) -> int:
        return len(self.done_after)

    @property
    def attempts(self) -> int:
        return sum(self.answers.values())

    def seconds_until_done(self, share: float) -> float:
        """When `share` of the stories had ended: the tail of a run, made visible."""
        ordered = sorted(self.done_after)
        return ordered[max(0, int(len(ordered) * share) - 1)] if ordered else 0.0

    def record_final(self, operation: str, label: str) -> None:
        self.final.setdefault(operation, Counter())[label] += 1


async def run_load(
    durapay: DurapayClient, *, seed: int, intents: int, concurrency: int, load: Load
) -> None:
    """`intents` merchant stories, at most `concurrency` at a time, reproducible from `seed`
    (the network's faults and the kills' timing still vary from run to run)."""
    rng = random.Random(seed)
    limit = asyncio.Semaphore(concurrency)
    merchant = Merchant(durapay, load)

    async def story(index: int, story_rng: random.Random) -> None:
        async with limit:
            try:
                await merchant.live_intent(index, story_rng)
            finally:
                load.done_after.append(time.monotonic() - load.started)

    await asyncio.gather(*(story(i, random.Random(rng.getrandbits(64))) for i in range(intents)))


def answer_label(response: httpx.Response | None) -> str:
    """`200`, `409 attempt_in_flight`, `transport` …: how answers are counted."""
    if response is None:
        return "transport"
    if response.status_code in (400, 409, 503):
        return f"{response.status_code} {_error_code(response)}"
    return str(response.status_code)


def _error_code(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "?"


class Merchant:
    """One merchant's integration: the requests it sends and how it retries them."""

    def __init__(self, durapay: DurapayClient, load: Load) -> None:
        self.durapay = durapay
        self.load = load

    # ---- one intent's story --------------------------------------------------------------------
    async def live_intent(self, index: int, rng: random.Random) -> None:
        manual = rng.random() < MANUAL_CAPTURE_SHARE
        amount = rng.randint(100, 50_000)
        intent_id = await self.create_intent(index, amount, rng.choice(CURRENCIES), manual)
        if intent_id is None:
            return
        self.load.intent_ids.append(intent_id)
        status = await self.charge(index, intent_id, rng)
        if status == "requires_capture":
            status = await self.capture_or_cancel(index, intent_id, amount, rng)
        if status == "succeeded":
            await self.refund(index, intent_id, rng)

    async def create_intent(
        self, index: int, amount: int, currency: str, manual: bool
    ) -> str | None:
        body = {
            "amountInCents": amount,
            "currency": currency,
            "captureMethod": "manual" if manual else "automatic",
            "metadata": {"order": str(index)},
        }
        response = await self.send(
            "create", "POST", "/payment-intents", body, key=f"{index}-create"
        )
        if response is None or response.status_code != 201:
            return None
        return str(response.json()["id"])

    async def charge(self, index: int, intent_id: str, rng: random.Random) -> str | None:
        """Pay; after a decline (at once, or once a 202 settles) the customer tries another
        card, at most three. Returns the intent's status as the merchant last saw it."""
        path = f"/payment-intents/{intent_id}/transactions"
        status: str | None = None
        for attempt in range(1, 4):
            body = {
                "type": "charge",
                "card": card(rng.choice(CARD_MIX) if attempt < 3 else APPROVING[0]),
            }
            key = f"{index}-charge-{attempt}"
            if rng.random() < 0.1:  # a double-clicked "Pay": the same request twice at once
                await asyncio.gather(
                    self.send("charge", "POST", path, body, key=key),
                    self.send("charge", "POST", path, body, key=key),
                )
            else:
                await self.send("charge", "POST", path, body, key=key)
            status = await self.settled_status(intent_id)
            if status != "failed":
                break
        return status

    async def capture_or_cancel(
        self, index: int, intent_id: str, amount: int, rng: random.Random
    ) -> str | None:
        path = f"/payment-intents/{intent_id}"
        partial = {"amountInCents": rng.randint(1, amount - 1)}
        choice = rng.random()
        if choice < 0.35:
            await self.send("capture", "POST", f"{path}/capture", {}, key=f"{index}-capture")
        elif choice < 0.65:
            await self.send("capture", "POST", f"{path}/capture", partial, key=f"{index}-capture")
        elif choice < 0.85:
            await self.send("cancel", "POST", f"{path}/cancel", {}, key=f"{index}-cancel")
        else:  # the shop's back office cancels while the checkout captures: one wins
            await asyncio.gather(
                self.send("capture", "POST", f"{path}/capture", {}, key=f"{index}-capture"),
                self.send("cancel", "POST", f"{path}/cancel", {}, key=f"{index}-cancel"),
            )
        return await self.settled_status(intent_id)

    async def refund(self, index: int, intent_id: str, rng: random.Random) -> None:
        intent = await self.intent(intent_id)
        received = int(intent["amountReceived"]) if intent else 0
        if received < 2:
            return
        path = f"/payment-intents/{intent_id}/refunds"
        choice = rng.random()
        if choice < 0.25:
            return
        if choice < 0.45:
            await self.send(
                "refund",
                "POST",
                path,
                {"amountInCents": rng.randint(1, received - 1)},
                key=f"{index}-refund-1",
            )
        elif choice < 0.6:
            await self.send("refund", "POST", path, {}, key=f"{index}-refund-1")
        elif choice < 0.75:  # part now, the rest later
            await self.send(
                "refund", "POST", path, {"amountInCents": received // 2}, key=f"{index}-refund-1"
            )
            if await self.settled_status(intent_id) == "partially_refunded":
                await self.send("refund", "POST", path, {}, key=f"{index}-refund-2")
        else:  # several refunds at once: together they may ask for more than was received
            amounts = [
                max(1, int(received * rng.uniform(0.3, 0.6))) for _ in range(rng.randint(2, 3))
            ]
            await asyncio.gather(
                *(
                    self.send(
                        "refund", "POST", path, {"amountInCents": a}, key=f"{index}-refund-{n}"
                    )
                    for n, a in enumerate(amounts, 1)
                )
            )
        await self.settled_status(intent_id)

    # ---- reading the intent ----------------------------------------------------------------------
    async def intent(self, intent_id: str) -> dict[str, Any] | None:
        response = await self.send("retrieve", "GET", f"/payment-intents/{intent_id}")
        if response is None or response.status_code != 200:
            return None
        return response.json()

    async def settled_status(self, intent_id: str) -> str | None:
        """The intent's status once no operation on it is pending, as a merchant would poll
        after a 202; None if it stays unsettled longer than the merchant's patience."""
        started = time.monotonic()
        deadline = started + SETTLE_PATIENCE_SECONDS
        polls = 0
        while True:
            intent = await self.intent(intent_id)
            if intent is not None and not _in_flight(intent):
                if polls:
                    self.load.settle_waits.append(time.monotonic() - started)
                return str(intent["status"])
            polls += 1
            if time.monotonic() >= deadline:
                self.load.still_processing_for_merchant += 1
                return None
            await asyncio.sleep(0.5)  # the merchant's polling interval

    # ---- sending with retries ------------------------------------------------------------------
    async def send(
        self,
        operation: str,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        key: str | None = None,
    ) -> httpx.Response | None:
        """One logical request, retried with the same Idempotency-Key while the answer says
        "try again"; the last answer, or None if only retryable answers came back in time."""
        self.load.requests[operation] += 1
        started = time.monotonic()
        delay = 0.25
        labels: Counter[str] = Counter()
        for _ in range(MAX_ATTEMPTS):
            response: httpx.Response | None
            try:
                response = await self.durapay.request(method, path, body, idempotency_key=key)
            except httpx.TransportError:
                response = None
            label = answer_label(response)
            labels[label] += 1
            self.load.answers[label] += 1
            self._judge(operation, path, response, label)
            if response is not None and not _retryable(response):
                if operation != "retrieve":
                    self.load.record_final(operation, label)
                return response
            wait = _retry_after(response, delay)
            if time.monotonic() + wait > started + RETRY_BUDGET_SECONDS:
                break
            await asyncio.sleep(wait)  # the merchant's backoff
            delay = min(delay * 2, 2.0)
        self.load.record_final(operation, "gave up")
        self.load.gave_up.append(
            f"{operation} {path} after {time.monotonic() - started:.0f}s: {dict(labels)}"
        )
        return None

    def _judge(
        self, operation: str, path: str, response: httpx.Response | None, label: str
    ) -> None:
        if response is None:
            return
        code = response.status_code
        if code == 500:
            self.load.defects.append(f"{operation} {path}: {response.text[:300]}")
        elif code == 503 and "retry-after" not in response.headers:
            self.load.unavailable_without_retry_after += 1
        elif (
            code not in EXPECTED_STATUSES
            and code not in (429, 502, 503, 504)
            and not (code == 400 and _error_code(response) in EXPECTED_400_CODES)
        ):
            self.load.unexpected.append(f"{operation} {path}: {label} {response.text[:300]}")


def _in_flight(intent: dict[str, Any]) -> bool:
    return intent["status"] == "processing" or any(
        t["status"] in ("pending", "timeout") for t in intent.get("transactions", [])
    )


def _retryable(response: httpx.Response) -> bool:
    if response.status_code >= 500 or response.status_code == 429:
        return True
    return response.status_code == 409 and _error_code(response) in IN_PROGRESS_CODES


def _retry_after(response: httpx.Response | None, backoff: float) -> float:
    """Honour Retry-After (capped, so one long ask does not stall the run), else back off."""
    raw = response.headers.get("retry-after") if response is not None else None
    try:
        return min(max(float(raw), 0.1), 5.0) if raw else backoff
    except ValueError:
        return backoff
