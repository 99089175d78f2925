"""The table of magic test card numbers and what the simulated network does with each."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Behaviour(StrEnum):
    """How the network treats a charge/authorize for a given card number."""

    APPROVE = "approve"
    DECLINE = "decline"
    # Answers 503 without charging, every time.
    PROCESSING_ERROR = "processing_error"
    # Holds the request past the caller's timeout, then commits the card's decision.
    HOLD = "hold"
    # Commits the decision, then drops the connection before the response is complete.
    DROP = "drop"
    # Answers 503 for the first FLAKY_FAILURES attempts of a reference, then approves.
    FLAKY = "flaky"
    # Holds, then stays pending until the status of the reference is queried enough times.
    SLOW_STATUS = "slow_status"
    # The bad-day cards: each commits its approval on the first request, and then every answer
    # to that reference (first request and retries alike) goes wrong on the way back.
    # A gateway in front of the network answers 502.
    GATEWAY_ERROR = "gateway_error"
    # The body is not the protocol (truncated JSON under a 200).
    GARBAGE = "garbage"
    # The body trickles in slower than the caller's timeout.
    TRICKLE = "trickle"
    # Holds, then approves; the status API answers not_found for a while after the commit.
    LAGGING_STATUS = "lagging_status"


# How many attempts of a reference the flaky card answers with 503 before approving.
FLAKY_FAILURES = 2
# How many status queries of a reference the slow-status card answers `pending` to.
SLOW_STATUS_PENDING_QUERIES = 5


@dataclass(frozen=True)
class CardPlan:
    """What the network will do with a card: its behaviour and eventual decision."""

    behaviour: Behaviour
    approved: bool = True
    decline_code: str | None = None


_TEST_CARDS: dict[str, CardPlan] = {
    "4242424242424242": CardPlan(Behaviour.APPROVE),
    "5555555555554444": CardPlan(Behaviour.APPROVE),
    "4000000000000002": CardPlan(Behaviour.DECLINE, False, "generic_decline"),
    "4000000000009995": CardPlan(Behaviour.DECLINE, False, "insufficient_funds"),
    "4000000000000069": CardPlan(Behaviour.DECLINE, False, "expired_card"),
    "4000000000000127": CardPlan(Behaviour.DECLINE, False, "incorrect_cvc"),
    "4000000000000119": CardPlan(Behaviour.PROCESSING_ERROR),
    "4000000000001018": CardPlan(Behaviour.HOLD),
    "4000000000001026": CardPlan(Behaviour.HOLD, False, "generic_decline"),
    "4000000000001034": CardPlan(Behaviour.DROP),
    "4000000000001042": CardPlan(Behaviour.FLAKY),
    "4000000000001059": CardPlan(Behaviour.SLOW_STATUS),
    "4000000000001067": CardPlan(Behaviour.GATEWAY_ERROR),
    "4000000000001075": CardPlan(Behaviour.GARBAGE),
    "4000000000001083": CardPlan(Behaviour.TRICKLE),
    "4000000000001091": CardPlan(Behaviour.LAGGING_STATUS),
}

_DEFAULT_PLAN = CardPlan(Behaviour.APPROVE)


def plan_for(number: str) -> CardPlan:
    """Return the plan for a card number; unknown numbers are simply approved."""
    return _TEST_CARDS.get(number, _DEFAULT_PLAN)


def brand_for(number: str) -> str:
    """Infer the card brand from the number's prefix (IIN ranges, simplified)."""
    if number.startswith("4"):
        return "visa"
    if number[:2] in {"51", "52", "53", "54", "55"}:
        return "mastercard"
    if len(number) >= 4 and 2221 <= int(number[:4]) <= 2720:
        return "mastercard"
    if number[:2] in {"34", "37"}:
        return "amex"
    if number.startswith("6011") or number.startswith("65"):
        return "discover"
    return "unknown"
