"""What went wrong, said in one line: the `durapay` command's failures as its user can fix them.

`main` turns every exception a command lets out into one line on stderr and a non-zero exit,
never a traceback: the services it talks to (API, database, Temporal) unreachable or refusing,
and bad input. Anything unforeseen is still one line, naming the exception; `--traceback`
shows where it came from.
"""

from __future__ import annotations

import asyncpg
import httpx
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from temporalio.service import RPCError

from client import APIConnectionError, DurapayError
from core.settings import Settings

EXIT_FAILED = 1
# The exit status of a shell whose command was interrupted by SIGINT (128 + 2).
EXIT_INTERRUPTED = 130
TRACEBACK_HINT = "run it again with `durapay --traceback …` to see where"


class Refused(Exception):
    """A failure whose message already says what happened and how to fix it."""


class ApiUnreachable(Refused):
    """No answer from the merchant API at a URL: where it was looked for, and how to point the
    command elsewhere."""

    def __init__(self, url: str, error: BaseException) -> None:
        super().__init__(
            f"no answer from the API at {url} ({_first_line(error) or type(error).__name__}): "
            "is `durapay dev` running? Otherwise point the command at the API with --api-url, "
            "DURAPAY_API_URL or the profile's api_url (the local stack's port: "
            "DURAPAY_API_PORT)"
        )


API_CONNECTION_ERRORS = (httpx.TransportError, APIConnectionError)
DATABASE_ERRORS = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    DBAPIError,
    InterfaceError,
    OperationalError,
)


def describe(error: BaseException, *, settings: Settings | None) -> str | None:
    """The one line for `error` (without the `durapay: ` prefix), or None for a failure this
    module does not know."""
    if isinstance(error, Refused):
        return str(error)
    if isinstance(error, DurapayError):  # the API's error object: HTTP status, code, message
        return str(error)
    if _is_temporal_unreachable(error) and settings is not None:
        return (
            f"cannot reach Temporal at {settings.effective_temporal_address} "
            f"({_first_line(error)}): is `durapay dev` running? (Or set TEMPORAL_ADDRESS.)"
        )
    if isinstance(error, RPCError):
        return f"Temporal refused the request: {error.status.name}: {_first_line(error)}"
    if isinstance(error, DATABASE_ERRORS) and settings is not None:
        cause = _cause(error)
        if isinstance(cause, asyncpg.UndefinedTableError):
            fix = "apply the migrations: `durapay migrate`"
        elif isinstance(cause, OSError | asyncpg.InvalidPasswordError | asyncpg.InterfaceError):
            fix = (
                "is `durapay dev` running, with the same DURAPAY_HOME and "
                "DURAPAY_POSTGRES_PORT? (Or set DATABASE_URL.)"
            )
        else:
            fix = "the database refused it"
        return (
            f"cannot use the database at {_database(settings)} ({type(cause).__name__}: "
            f"{_first_line(cause)}): {fix}"
        )
    return None


def unexpected(error: BaseException) -> str:
    return f"unexpected {type(error).__name__}: {_first_line(error)}; {TRACEBACK_HINT}"


def _is_temporal_unreachable(error: BaseException) -> bool:
    # The SDK says it this way when the connection cannot be made (no exception class of its own).
    return isinstance(error, RuntimeError) and str(error).startswith("Failed client connect")


def _cause(error: BaseException) -> BaseException:
    """The driver's error inside SQLAlchemy's wrapper, which says it with the statement."""
    orig = getattr(error, "orig", None)
    return orig if isinstance(orig, BaseException) else error


def _database(settings: Settings) -> str:
    try:
        return make_url(settings.effective_database_url).render_as_string(hide_password=True)
    except Exception:  # the URL itself may be what is wrong: say so rather than fail again
        return "DATABASE_URL (unparsable)"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""
