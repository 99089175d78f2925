"""`durapay keys` where the operator holds the keys (DURAPAY_MASTER_KEY): the command never
makes up a key of its own, and says what to do instead."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cli import keys
from core.keyring import encode_key
from core.settings import Settings


def _configured(tmp_path: Path) -> Settings:
    return Settings(
        home=tmp_path / "home",
        master_key=encode_key(os.urandom(32)),
        retired_master_keys=encode_key(os.urandom(32)),
        database_url="postgresql://nobody@127.0.0.1:1/none",
    )


async def test_rotate_refuses_to_replace_a_configured_master_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = _configured(tmp_path)
    assert await keys.rotate(settings) == keys.EXIT_FAILED
    assert "DURAPAY_RETIRED_MASTER_KEYS" in capsys.readouterr().err
    assert not (tmp_path / "home").exists()  # no key file written, no database reached
    assert settings.resolved_key_ring().current.material == settings.resolved_master_key()


async def test_drop_of_a_configured_key_says_where_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = _configured(tmp_path)
    retired = settings.resolved_key_ring().retired[0].key_id
    assert await keys.drop(settings, retired) == keys.EXIT_FAILED
    assert "remove the key from the latter and restart" in capsys.readouterr().err
