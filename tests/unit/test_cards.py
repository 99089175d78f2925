from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from core.cards import card_brand, card_problem, luhn_valid

TODAY = date(2026, 11, 25)


@pytest.mark.parametrize(
    "number",
    [
        "4242424242424242",
        "5555555555554444",
        "4000000000000002",
        "378282246310005",
        "6011111111111117",
    ],
)
def test_luhn_accepts_real_test_numbers(number: str) -> None:
    assert luhn_valid(number)


@pytest.mark.parametrize("number", ["4242424242424241", "1234567812345678", "42424242a4242424", ""])
def test_luhn_rejects_wrong_check_digit_and_non_digits(number: str) -> None:
    assert not luhn_valid(number)


def test_brand_comes_from_the_prefix() -> None:
    assert card_brand("4242424242424242") == "visa"
    assert card_brand("5555555555554444") == "mastercard"
    assert card_brand("2223003122003222") == "mastercard"
    assert card_brand("378282246310005") == "amex"
    assert card_brand("6011111111111117") == "discover"


def _problem(**overrides: object) -> str | None:
    card: dict[str, Any] = {
        "number": "4242424242424242",
        "exp_month": 12,
        "exp_year": 2030,
        "cvc": "123",
        **overrides,
    }
    problem = card_problem(today=TODAY, **card)
    return problem.param if problem else None


def test_valid_card_has_no_problem() -> None:
    assert _problem() is None
    assert _problem(exp_month=11, exp_year=2026) is None  # valid through the end of the month
    assert _problem(cvc="1234") is None


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({"number": "4242"}, "card.number"),
        ({"number": "42424242424242424242"}, "card.number"),
        ({"number": "4242424242424241"}, "card.number"),
        ({"exp_month": 0}, "card.expMonth"),
        ({"exp_month": 13}, "card.expMonth"),
        ({"exp_month": 10, "exp_year": 2026}, "card.expYear"),
        ({"exp_year": 26}, "card.expYear"),
        ({"cvc": "12"}, "card.cvc"),
        ({"cvc": "12345"}, "card.cvc"),
        ({"cvc": "12a"}, "card.cvc"),
    ],
)
def test_each_problem_names_its_param(overrides: dict[str, object], param: str) -> None:
    assert _problem(**overrides) == param


def test_messages_never_repeat_the_number() -> None:
    problem = card_problem(
        number="4242424242424241", exp_month=1, exp_year=2030, cvc="123", today=TODAY
    )
    assert problem is not None and "4242" not in problem.message


# Python's isdigit()/int() also take other scripts' digits ('٤', '４') and superscripts ('²');
# each of these numbers passes Luhn if its odd digit is read as the ASCII one.
NON_ASCII_DIGITS = [
    "\u0664242424242424242",
    "\uff14242424242424242",
    "424242424242424\u00b2",
    "4242424242424\u00b2\u00b2\u00b2",
]


@pytest.mark.parametrize("number", NON_ASCII_DIGITS)
def test_only_ascii_digits_are_card_digits(number: str) -> None:
    assert not luhn_valid(number)
    assert _problem(number=number) == "card.number"


@pytest.mark.parametrize("cvc", ["\u0661\u0662\u0663", "\uff11\uff12\uff13", "12\u00b3"])
def test_only_ascii_digits_are_cvc_digits(cvc: str) -> None:
    assert _problem(cvc=cvc) == "card.cvc"


@pytest.mark.parametrize("number", ["2\u00b2\u00b21000000000000", "", "abcd"])
def test_brand_of_a_non_number_is_unknown_not_an_exception(number: str) -> None:
    assert card_brand(number) == "unknown"
