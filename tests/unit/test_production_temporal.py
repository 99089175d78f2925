"""DURAPAY_ENV=production refuses to start unless Temporal can authenticate Durapay (mutual
TLS or an API key), and a client certificate without its key, or the reverse, is refused in
every environment. Settings are read from the environment, as every process reads them."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from cli import main as cli_main
from cli.devstack import DevStack
from core.settings import Settings, get_settings

# Strong, as production requires (tests/unit/test_production_settings.py).
SECRETS = {
    "DURAPAY_MASTER_KEY": base64.b64encode(hashlib.sha256(b"master").digest()).decode(),
    "DURAPAY_ADMIN_TOKEN": hashlib.sha256(b"admin token").hexdigest(),
}
TLS_NAMES = (
    "DURAPAY_TEMPORAL_TLS_CERT",
    "DURAPAY_TEMPORAL_TLS_KEY",
    "DURAPAY_TEMPORAL_TLS_CA",
    "DURAPAY_TEMPORAL_API_KEY",
)
# Presence is what the settings check; the files are read when connecting (core/temporal_client).
CERT, KEY, CA = "/certs/cert.pem", "/certs/key.pem", "/certs/ca.pem"


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    for name in (*TLS_NAMES, *SECRETS, "DURAPAY_ENV"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DURAPAY_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def production(environ: pytest.MonkeyPatch, **values: str) -> Settings:
    for name, value in {"DURAPAY_ENV": "production", **SECRETS, **values}.items():
        environ.setenv(name, value)
    return Settings()


@pytest.mark.parametrize(
    "given",
    [
        {
            "DURAPAY_TEMPORAL_TLS_CERT": CERT,
            "DURAPAY_TEMPORAL_TLS_KEY": KEY,
            "DURAPAY_TEMPORAL_TLS_CA": CA,
        },
        # Temporal Cloud's mTLS: its server certificate chains to the system roots.
        {"DURAPAY_TEMPORAL_TLS_CERT": CERT, "DURAPAY_TEMPORAL_TLS_KEY": KEY},
        {"DURAPAY_TEMPORAL_API_KEY": "tc-key"},
    ],
    ids=["mtls-private-ca", "mtls-system-roots", "api-key"],
)
def test_production_starts_when_temporal_can_authenticate_it(
    environ: pytest.MonkeyPatch, given: dict[str, str]
) -> None:
    settings = production(environ, **given)
    assert settings.env == "production"


@pytest.mark.parametrize(
    "given",
    [
        {},
        {"DURAPAY_TEMPORAL_TLS_CERT": "", "DURAPAY_TEMPORAL_TLS_KEY": " "},
    ],
    ids=["nothing", "blank"],
)
def test_production_refuses_a_plaintext_connection(
    environ: pytest.MonkeyPatch, given: dict[str, str]
) -> None:
    with pytest.raises(ValidationError) as refused:
        production(environ, **given)
    message = str(refused.value)
    assert "DURAPAY_ENV=production refuses an unauthenticated connection to Temporal" in message
    # The message names the fix: both ways of authenticating, and the command that makes certs.
    for name in (
        "DURAPAY_TEMPORAL_TLS_CERT",
        "DURAPAY_TEMPORAL_TLS_KEY",
        "DURAPAY_TEMPORAL_API_KEY",
        "durapay certs",
    ):
        assert name in message


def test_production_refuses_a_ca_without_a_client_certificate(environ: pytest.MonkeyPatch) -> None:
    """Server-authenticated TLS encrypts, but Temporal would still accept any client."""
    with pytest.raises(
        ValidationError,
        match="DURAPAY_TEMPORAL_TLS_CA alone verifies the "
        "server, but Temporal would still accept any",
    ):
        production(environ, DURAPAY_TEMPORAL_TLS_CA=CA)


@pytest.mark.parametrize("env", ["development", "production"])
@pytest.mark.parametrize(
    ("present", "absent"),
    [
        ("DURAPAY_TEMPORAL_TLS_CERT", "DURAPAY_TEMPORAL_TLS_KEY"),
        ("DURAPAY_TEMPORAL_TLS_KEY", "DURAPAY_TEMPORAL_TLS_CERT"),
    ],
)
def test_half_a_client_certificate_is_refused_in_every_environment(
    environ: pytest.MonkeyPatch, env: str, present: str, absent: str
) -> None:
    environ.setenv(present, CERT if present.endswith("CERT") else KEY)
    environ.setenv("DURAPAY_TEMPORAL_TLS_CA", CA)
    # Even beside an API key: a half pair is a configuration mistake, never a choice.
    environ.setenv("DURAPAY_TEMPORAL_API_KEY", "tc-key")
    with pytest.raises(ValidationError, match=f"{present} is set but {absent} is not"):
        production(environ) if env == "production" else Settings()


def test_development_may_connect_in_plaintext(environ: pytest.MonkeyPatch) -> None:
    """The local stack's embedded dev server has no TLS."""
    assert Settings().temporal_tls_cert is None
    assert Settings(temporal_tls_ca=CA).env == "development"


def test_the_secrets_refusal_comes_first(environ: pytest.MonkeyPatch) -> None:
    """A production host missing everything hears about its secrets first, then about TLS."""
    environ.setenv("DURAPAY_ENV", "production")
    with pytest.raises(ValidationError, match="DURAPAY_MASTER_KEY and DURAPAY_ADMIN_TOKEN must"):
        Settings()


def test_every_process_refuses_at_start_through_the_cli(
    environ: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for name, value in {"DURAPAY_ENV": "production", **SECRETS}.items():
        environ.setenv(name, value)
    assert cli_main.main(["migrate"]) == 2
    err = capsys.readouterr().err
    assert "refuses an unauthenticated connection to Temporal" in err
    assert SECRETS["DURAPAY_MASTER_KEY"] not in err
    assert not (tmp_path / "home").exists()


async def test_the_local_stack_refuses_tls_settings_for_its_plaintext_dev_server(
    environ: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Production settings always name a client certificate or an API key; the embedded dev
    server has no TLS, so `durapay dev` says so before it starts anything."""
    settings = production(environ, DURAPAY_TEMPORAL_TLS_CERT=CERT, DURAPAY_TEMPORAL_TLS_KEY=KEY)
    assert await DevStack(settings).run() == 1
    assert "the embedded Temporal dev server has no TLS" in capsys.readouterr().err
    assert not (tmp_path / "home").exists()
