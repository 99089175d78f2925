"""cli/local_postgres.py's `postgres_data_dir`: where the embedded cluster of a state dir lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cli.local_postgres import postgres_data_dir

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the layout as root")


def test_as_ourselves_the_data_is_inside_the_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert postgres_data_dir(tmp_path / "home") == tmp_path / "home" / "postgres"


@as_root
def test_as_root_the_data_is_beside_the_state_dir(tmp_path: Path) -> None:
    assert postgres_data_dir(tmp_path / ".durapay") == tmp_path / ".durapay-postgres"


@as_root
def test_as_root_a_cluster_left_inside_the_state_dir_is_moved_beside_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "postgres").mkdir(parents=True)
    (home / "postgres" / "PG_VERSION").write_text("17\n")
    data = postgres_data_dir(home)
    assert data == tmp_path / "home-postgres"
    assert (data / "PG_VERSION").read_text() == "17\n"
    assert not (home / "postgres").exists()
    assert postgres_data_dir(home) == data  # nothing left to move
