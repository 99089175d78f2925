"""bench/statements.py and bench/summary.py: statements per operation as a reader sees them,
and which processes make up the Python tier."""

from __future__ import annotations

import argparse

import pytest

from bench.charges import phase_seconds
from bench.statements import OWN_MARK, READ, RESET, StatementCount, StatementUse, shorten
from bench.summary import python_tier_ms

FK_CHECK = 'SELECT 1 FROM ONLY "public"."merchant" x WHERE "id" = $1 FOR KEY SHARE OF x'


def test_a_statement_is_shown_on_one_line_and_cut_to_width() -> None:
    assert shorten("SELECT a,\n       b\n  FROM t  ") == "SELECT a, b FROM t"
    cut = shorten("SELECT " + "x, " * 50 + "y FROM t", width=20)
    assert len(cut) == 20 and cut.endswith("…") and cut.startswith("SELECT x, x,")


def test_statements_per_operation_count_every_call() -> None:
    use = StatementUse(
        [
            StatementCount("BEGIN", 30, False),
            StatementCount("COMMIT", 20, False),
            StatementCount(FK_CHECK, 40, True),
        ],
        operations=10,
    )
    assert use.total == 90
    assert use.per_operation == 9.0
    assert "9.0" in use.line()


def test_the_top_statements_merge_one_text_and_mark_nested_ones() -> None:
    use = StatementUse(
        [
            StatementCount("BEGIN", 10, False),
            StatementCount("COMMIT", 4, False),
            StatementCount("BEGIN", 6, False),
            StatementCount(FK_CHECK, 8, True),
        ],
        operations=4,
    )
    assert use.top(2) == [("BEGIN", 4.0), (shorten(FK_CHECK) + " (nested)", 2.0)]


def test_the_bench_leaves_its_own_statements_out() -> None:
    # Postgres keeps a statement's aliases in the text it stores (not its comments or
    # constants): the reset and the read carry the mark that the read filters on.
    assert f"AS {OWN_MARK}" in RESET and f"AS {OWN_MARK}" in READ
    assert f"NOT LIKE '%{OWN_MARK}%'" in READ


def test_the_python_tier_is_the_api_the_workers_and_postgres() -> None:
    per_op = {
        "api": 20.0,
        "worker-1": 30.0,
        "worker-2": 10.0,
        "postgres": 15.0,
        "temporal": 35.0,
        "cardnet": 2.0,
        "codec": 0.2,
        "bench": 4.0,
        "bare-worker": 1.0,
    }
    assert python_tier_ms(per_op) == 75.0


def test_burst_phases_are_three_positive_durations() -> None:
    assert phase_seconds("15,20,20") == (15.0, 20.0, 20.0)
    for wrong in ("15,20", "15,20,x", "15,0,20"):
        with pytest.raises(argparse.ArgumentTypeError):
            phase_seconds(wrong)
