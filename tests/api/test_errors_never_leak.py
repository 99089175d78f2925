"""Unexpected failures: a database error names no bound value anywhere it can be logged, and
the catch-all 500 is the API's error object with `Cache-Control: no-store` and a Request-Id."""

from __future__ import annotations

import logging
import traceback
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from api.deps import SessionDep
from api.main import create_app
from core.db.session import create_engine
from core.settings import Settings, to_asyncpg_url

pytestmark = pytest.mark.api

MARKER = "marker-4242424242424242-secret"
# Fails on its own (division by zero) whatever its parameter: only the parameter holds MARKER.
FAILING = text("SELECT 1 / 0 WHERE CAST(:value AS text) IS NOT NULL")


def _everything_logged(records: list[logging.LogRecord]) -> str:
    """Every record as a handler would write it: message, arguments and traceback."""
    formatter = logging.Formatter()
    return "\n".join(formatter.format(record) for record in records)


async def test_a_database_error_names_no_bound_value(database_url: str) -> None:
    engine = create_engine(to_asyncpg_url(database_url), pool_size=1)
    try:
        async with engine.connect() as connection:
            with pytest.raises(sa_exc.DBAPIError) as raised:
                await connection.execute(FAILING, {"value": MARKER})
    finally:
        await engine.dispose()
    assert "division by zero" in str(raised.value)
    assert MARKER not in str(raised.value)
    assert MARKER not in "".join(traceback.format_exception(raised.value))


@pytest.fixture
async def failing_app(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app with two routes that fail as a bug would: a statement that errors (with MARKER
    bound) and a plain exception."""
    app = create_app(settings)

    async def failing_statement(session: SessionDep) -> None:
        # sqlmodel types exec() for its select() and DML only; it runs text() the same way.
        await session.exec(FAILING, params={"value": MARKER})  # type: ignore[call-overload]

    async def failing_code() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/test-only/statement", failing_statement)
    app.add_api_route("/test-only/code", failing_code)
    # raise_app_exceptions=False: Starlette re-raises a 500's exception after answering it.
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
            base_url="http://durapay.test",
        ) as http,
    ):
        yield http


async def test_a_database_error_in_a_request_logs_no_bound_value(
    failing_app: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        response = await failing_app.get("/test-only/statement")
    assert response.status_code == 500, response.text
    assert response.json()["error"]["code"] == "internal_error"
    logged = _everything_logged(caplog.records)
    assert "unhandled error" in logged and "division by zero" in logged  # it was logged
    assert MARKER not in logged
    assert MARKER not in response.text


@pytest.mark.parametrize("path", ["/test-only/statement", "/test-only/code"])
async def test_a_500_is_not_stored_and_carries_its_request_id(
    failing_app: httpx.AsyncClient, path: str
) -> None:
    response = await failing_app.get(path)
    assert response.status_code == 500, response.text
    assert response.json() == {
        "error": {
            "type": "api_error",
            "code": "internal_error",
            "message": "An internal error occurred; it has been logged.",
            "param": None,
        }
    }
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Request-Id"].startswith("req_")
