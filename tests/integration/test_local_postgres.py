"""The embedded PostgreSQL of `durapay dev`: password (SCRAM) auth for every connection, the
password 0600 in the state dir, and a cluster made before that (`trust`) upgraded in place."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import pytest

from cli.local_postgres import postgres_argv, postgres_bin_dir, postgres_data_dir, run_as
from core.secret_files import POSTGRES_SYSTEM_USER
from tests.stack import (
    RunningStack,
    free_port,
    private_dir,
    stop_process,
    wait_until_postgres_accepts,
)

pytestmark = pytest.mark.integration


@contextmanager
def running(data: Path, password_file: Path) -> Iterator[int]:
    """The server of `data` on a free port, as `durapay dev` starts it; stopped at the end."""
    port = free_port()
    server = subprocess.Popen(
        postgres_argv(data, port, password_file=password_file),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        **run_as(data),
    )
    try:
        wait_until_postgres_accepts(server, port)
        yield port
    finally:
        stop_process(server)


async def _connect(port: int, password: str | None) -> asyncpg.Connection:
    return await asyncpg.connect(
        host="127.0.0.1",
        port=port,
        user="postgres",
        password=password,
        database="postgres",
        timeout=10,
    )


async def _refused_without_password(port: int) -> None:
    # asyncpg would read PGPASSWORD or ~/.pgpass; an empty password is what "none" sends.
    with pytest.raises(asyncpg.PostgresError, match="password"):
        await _connect(port, "")
    with pytest.raises(asyncpg.InvalidPasswordError):
        await _connect(port, "not-the-password")


async def test_local_postgres_refuses_connections_without_the_password() -> None:
    home = private_dir("pw") / "home"
    home.mkdir(mode=0o700)
    password_file = home / "postgres-password"
    with running(postgres_data_dir(home), password_file) as port:
        assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
        await _refused_without_password(port)
        connection = await _connect(port, password_file.read_text())
        try:
            assert await connection.fetchval("SHOW password_encryption") == "scram-sha-256"
            rules = await connection.fetch("SELECT auth_method FROM pg_hba_file_rules")
            assert {r["auth_method"] for r in rules} == {"scram-sha-256"}
        finally:
            await connection.close()


async def test_trust_cluster_from_before_is_upgraded_with_its_data() -> None:
    home = private_dir("trust") / "home"
    home.mkdir(mode=0o700)
    data = postgres_data_dir(home)
    data.mkdir()
    # A state dir made by the previous launcher: initdb --auth=trust, no password file.
    initdb = subprocess.run(
        [
            str(postgres_bin_dir() / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-instructions",
        ],
        capture_output=True,
        check=False,
        **run_as(data),
    )
    assert initdb.returncode == 0, initdb.stderr
    port = free_port()
    server = subprocess.Popen(
        [
            str(postgres_bin_dir() / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "unix_socket_directories=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        **run_as(data),
    )
    try:
        wait_until_postgres_accepts(server, port)
        connection = await _connect(port, None)  # trust: no password asked
        await connection.execute(
            "CREATE TABLE kept (note text); INSERT INTO kept VALUES ('from before')"
        )
        await connection.close()
    finally:
        stop_process(server)

    password_file = home / "postgres-password"
    with running(data, password_file) as port:
        await _refused_without_password(port)
        connection = await _connect(port, password_file.read_text())
        try:
            assert await connection.fetchval("SELECT note FROM kept") == "from before"
        finally:
            await connection.close()


def test_the_state_dir_is_exactly_0700_while_the_stack_runs(stack: RunningStack) -> None:
    # As root, the embedded PostgreSQL runs as its own user; its data lives beside the state
    # dir, so the state dir (master key, admin token) is opened to no one, not even to traverse.
    assert stat.S_IMODE(stack.home.stat().st_mode) == 0o700
    data = postgres_data_dir(stack.home)
    assert (data / "PG_VERSION").exists()
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    if os.geteuid() == 0:
        assert not data.is_relative_to(stack.home)
        assert data.stat().st_uid == pwd.getpwnam(POSTGRES_SYSTEM_USER).pw_uid
