"""A scratch PostgreSQL cluster: the embedded binaries on a free port, their state in a private
dir, the `durapay` database migrated to head, stopped on exit. The API tests' session database
and benchmarks that need only a database (bench/rate_limit.py) start theirs here."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from cli.local_postgres import postgres_argv, postgres_data_dir, run_as
from core.db.migrate import upgrade
from core.settings import to_asyncpg_url
from tests.stack import free_port, private_dir, stop_process


@asynccontextmanager
async def scratch_postgres(settings: dict[str, str] | None = None) -> AsyncIterator[str]:
    """A fresh PostgreSQL cluster with the `durapay` database at the migrations' head; yields
    its URL (`postgresql://…`, for asyncpg; `to_asyncpg_url` makes it SQLAlchemy's).
    `settings`: server settings on its command line (`shared_preload_libraries`, say)."""
    extra = [arg for name, value in (settings or {}).items() for arg in ("-c", f"{name}={value}")]
    # Laid out as `durapay dev` does: the password in a private state dir, the data where
    # postgres_data_dir puts it (beside that dir when we run as root).
    state = private_dir("pg") / "state"
    state.mkdir(mode=0o700)
    data = postgres_data_dir(state)
    password_file = state / "postgres-password"  # written by postgres_argv (SCRAM auth)
    for _ in range(3):  # a port picked as free can be taken before postgres binds it
        port = free_port()
        log = open(data.parent / "postgres.log", "ab")  # noqa: SIM115 (the server owns it)
        server = subprocess.Popen(
            [*postgres_argv(data, port, password_file=password_file), *extra],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **run_as(data),
        )
        log.close()
        password = password_file.read_text()
        if await _postgres_answers(server, port, password):
            break
        stop_process(server)
    else:
        raise RuntimeError(
            "PostgreSQL did not start:\n"
            + (data.parent / "postgres.log").read_text(errors="replace")
        )
    try:
        admin = await asyncpg.connect(
            host="127.0.0.1", port=port, user="postgres", password=password, database="postgres"
        )
        await admin.execute("CREATE DATABASE durapay")
        await admin.close()
        url = f"postgresql://postgres:{password}@127.0.0.1:{port}/durapay"  # URL-safe password
        # Alembic's env.py runs its own event loop: keep it off this one.
        await asyncio.to_thread(upgrade, to_asyncpg_url(url))
        yield url
    finally:
        stop_process(server)  # SIGTERM: PostgreSQL's "smart" shutdown, quick with no clients


async def _postgres_answers(server: subprocess.Popen[bytes], port: int, password: str) -> bool:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and server.poll() is None:
        try:
            connection = await asyncpg.connect(
                host="127.0.0.1",
                port=port,
                user="postgres",
                password=password,
                database="postgres",
                timeout=2,
            )
        except (OSError, asyncpg.PostgresError, TimeoutError):
            await asyncio.sleep(0.1)
            continue
        await connection.close()
        return True
    return False
