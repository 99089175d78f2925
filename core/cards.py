"""Card checks done before anything is sent to the network (pure functions)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date


@dataclass(frozen=True)
class CardProblem:
    param: str
    code: str
    message: str


def ascii_digits(value: str) -> bool:
    """Only 0-9: str.isdigit() also takes other scripts' digits ('٤', '４') and superscripts
    ('²'), which int() then reads as numbers or refuses with an exception."""
    return value.isascii() and value.isdigit()


def card_brand(number: str) -> str:
    if not ascii_digits(number):
        return "unknown"
    if number.startswith("4"):
        return "visa"
    if number[:2] in {"51", "52", "53", "54", "55"} or 2221 <= int(number[:4]) <= 2720:
        return "mastercard"
    if number[:2] in {"34", "37"}:
        return "amex"
    if number.startswith("6011") or number.startswith("65"):
        return "discover"
    return "unknown"


def luhn_valid(number: str) -> bool:
    if not ascii_digits(number):
        return False
    total = 0
    for index, char in enumerate(reversed(number)):
        digit = int(char)
        if index % 2 == 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def card_problem(
    *, number: str, exp_month: int, exp_year: int, cvc: str, today: date
) -> CardProblem | None:
    """The first thing wrong with a card, or None. Messages never repeat the card data."""
    if not ascii_digits(number) or not 12 <= len(number) <= 19:
        return CardProblem(
            "card.number", "invalid_number", "The card number must be 12 to 19 digits."
        )
    if not luhn_valid(number):
        return CardProblem("card.number", "invalid_number", "The card number is not valid.")
    if not 1 <= exp_month <= 12:
        return CardProblem(
            "card.expMonth", "invalid_expiry_month", "The expiration month must be 1 to 12."
        )
    if not 2000 <= exp_year <= 2100:
        return CardProblem(
            "card.expYear", "invalid_expiry_year", "The expiration year must be a four-digit year."
        )
    if (exp_year, exp_month) < (today.year, today.month):
        return CardProblem("card.expYear", "expired_card", "The card has expired.")
    if not ascii_digits(cvc) or not 3 <= len(cvc) <= 4:
        return CardProblem("card.cvc", "invalid_cvc", "The CVC must be 3 or 4 digits.")
    return None
