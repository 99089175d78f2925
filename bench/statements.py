"""Database statements per operation of a bench step, as Postgres counts them.

The bench's stack runs its embedded Postgres with pg_stat_statements preloaded and
`pg_stat_statements.track = all` (DURAPAY_POSTGRES_TRACK_STATEMENTS): every statement any
process runs is counted, the nested ones (the foreign-key checks Postgres runs for an INSERT or
UPDATE) and BEGIN, COMMIT and ROLLBACK included. A step resets the counts after its warm-up and
sums `calls` after its last operation; divided by the operations, that is what one operation
costs the database in round trips and statements, whichever process sent them.

The bench's own statements here carry `durapay_bench` in their text (a column alias: a
comment or a constant would not survive the normalised text) and are left out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import asyncpg

# Who sent it cannot be told from pg_stat_statements, so the bench marks its own statements.
OWN_MARK = "durapay_bench"
RESET = f"SELECT pg_stat_statements_reset() AS {OWN_MARK}_reset"
READ = f"""
SELECT s.query AS {OWN_MARK}_query, s.calls, s.toplevel
FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
WHERE d.datname = current_database() AND s.query NOT LIKE '%{OWN_MARK}%'
"""
QUERY_WIDTH = 90


@dataclass(frozen=True)
class StatementCount:
    query: str  # normalised by Postgres: constants are $1, $2, …
    calls: int
    nested: bool  # run inside another statement (a foreign-key check, a function's query)


@dataclass(frozen=True)
class StatementUse:
    """The statements that ran over a step of `operations` operations."""

    statements: list[StatementCount]
    operations: int

    @property
    def total(self) -> int:
        return sum(statement.calls for statement in self.statements)

    @property
    def per_operation(self) -> float:
        return self.total / self.operations if self.operations else float("nan")

    def top(self, count: int) -> list[tuple[str, float]]:
        """The `count` statements run most often, as (shortened text, calls per operation);
        the same text run at top level and nested is one line."""
        calls: dict[str, int] = {}
        for statement in self.statements:
            text = shorten(statement.query) + (" (nested)" if statement.nested else "")
            calls[text] = calls.get(text, 0) + statement.calls
        ranked = sorted(calls.items(), key=lambda item: (-item[1], item[0]))[:count]
        return [
            (text, n / self.operations if self.operations else float("nan")) for text, n in ranked
        ]

    def line(self) -> str:
        return f"    statements/op  {self.per_operation:.1f}  ({self.total} over the step)"


def shorten(query: str, width: int = QUERY_WIDTH) -> str:
    """One line of at most `width` characters: whitespace runs collapsed, the rest cut."""
    flat = re.sub(r"\s+", " ", query).strip()
    return flat if len(flat) <= width else flat[: width - 1] + "…"


class StatementCounter:
    """Resets and reads pg_stat_statements on the stack's database, over one connection."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._connection = connection

    @classmethod
    async def connect(cls, database_url: str) -> StatementCounter:
        """The extension's views live in a database once it is created there; the library
        itself must already be preloaded (the stack's Postgres is started with it)."""
        connection = await asyncpg.connect(database_url)
        try:
            await connection.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        except BaseException:
            await connection.close()
            raise
        return cls(connection)

    async def reset(self) -> None:
        await self._connection.fetchval(RESET)

    async def read(self, operations: int) -> StatementUse:
        rows = await self._connection.fetch(READ)
        return StatementUse(
            [
                StatementCount(
                    str(row[f"{OWN_MARK}_query"]), int(row["calls"]), not row["toplevel"]
                )
                for row in rows
            ],
            operations,
        )

    async def close(self) -> None:
        await self._connection.close()
