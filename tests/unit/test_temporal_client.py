"""How every process connects to Temporal: TLS, mTLS and API key options built from settings.
(A real TLS handshake with them: tests/integration/test_temporal_tls.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from temporalio.service import TLSConfig

from core.settings import Settings
from core.temporal_client import TemporalConfigError, temporal_connect_options

CA = "-----BEGIN CERTIFICATE-----\nY2E=\n-----END CERTIFICATE-----\n"
CERT = "-----BEGIN CERTIFICATE-----\nY2VydA==\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleQ==\n-----END PRIVATE KEY-----\n"


def _settings(**values: Any) -> Settings:
    return Settings(temporal_address="temporal.internal:7233", **values)


def test_without_tls_settings_the_connection_is_plain() -> None:
    options = temporal_connect_options(_settings(temporal_namespace="payments"))
    assert options == {
        "target_host": "temporal.internal:7233",
        "namespace": "payments",
        "tls": False,
        "api_key": None,
    }


def test_mtls_from_pem_files(tmp_path: Path) -> None:
    for name, pem in (("ca.pem", CA), ("client.pem", CERT), ("client.key", KEY)):
        (tmp_path / name).write_text(pem)
    options = temporal_connect_options(
        _settings(
            temporal_tls_ca=str(tmp_path / "ca.pem"),
            temporal_tls_cert=str(tmp_path / "client.pem"),
            temporal_tls_key=str(tmp_path / "client.key"),
        )
    )
    assert options["tls"] == TLSConfig(
        server_root_ca_cert=CA.encode(), client_cert=CERT.encode(), client_private_key=KEY.encode()
    )
    assert options["api_key"] is None


def test_mtls_from_inline_pem_text() -> None:
    options = temporal_connect_options(
        _settings(temporal_tls_ca=CA, temporal_tls_cert=CERT, temporal_tls_key=KEY)
    )
    assert options["tls"] == TLSConfig(
        server_root_ca_cert=CA.encode(), client_cert=CERT.encode(), client_private_key=KEY.encode()
    )


def test_a_ca_alone_verifies_the_server_without_a_client_certificate() -> None:
    tls = temporal_connect_options(_settings(temporal_tls_ca=CA))["tls"]
    assert tls == TLSConfig(server_root_ca_cert=CA.encode())


def test_an_api_key_goes_over_tls_with_the_system_roots() -> None:
    options = temporal_connect_options(
        _settings(temporal_api_key="tc-key", temporal_namespace="durapay.a1b2c")
    )
    assert (options["tls"], options["api_key"], options["namespace"]) == (
        True,
        "tc-key",
        "durapay.a1b2c",
    )
    with_ca = temporal_connect_options(_settings(temporal_api_key="tc-key", temporal_tls_ca=CA))
    assert with_ca["tls"] == TLSConfig(server_root_ca_cert=CA.encode())
    assert with_ca["api_key"] == "tc-key"


def test_an_empty_api_key_is_no_api_key() -> None:
    assert temporal_connect_options(_settings(temporal_api_key=""))["tls"] is False


@pytest.mark.parametrize(
    ("given", "missing"),
    [({"temporal_tls_cert": CERT}, "the certificate"), ({"temporal_tls_key": KEY}, "the key")],
)
def test_half_of_a_client_certificate_is_a_configuration_error(
    given: dict[str, Any], missing: str
) -> None:
    # Settings refuse this when read (tests/unit/test_production_temporal.py); the connection
    # refuses it too, for settings made without validation.
    unchecked = Settings.model_construct(temporal_address="temporal.internal:7233", **given)
    with pytest.raises(
        TemporalConfigError,
        match=f"both DURAPAY_TEMPORAL_TLS_CERT and DURAPAY_TEMPORAL_TLS_KEY; only {missing}",
    ):
        temporal_connect_options(unchecked)


def test_an_unreadable_pem_file_is_named_by_its_variable(tmp_path: Path) -> None:
    with pytest.raises(TemporalConfigError, match="DURAPAY_TEMPORAL_TLS_CA: cannot read"):
        temporal_connect_options(_settings(temporal_tls_ca=str(tmp_path / "absent.pem")))
    (tmp_path / "key.txt").write_text("not a key")
    with pytest.raises(TemporalConfigError, match="DURAPAY_TEMPORAL_TLS_KEY: .* not PEM") as bad:
        temporal_connect_options(
            _settings(temporal_tls_cert=CERT, temporal_tls_key=str(tmp_path / "key.txt"))
        )
    assert "not a key" not in str(bad.value)


def test_the_documented_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (
        ("DURAPAY_TEMPORAL_TLS_CA", CA),
        ("DURAPAY_TEMPORAL_TLS_CERT", CERT),
        ("DURAPAY_TEMPORAL_TLS_KEY", KEY),
        ("DURAPAY_TEMPORAL_API_KEY", "k"),
        ("DURAPAY_TEMPORAL_NAMESPACE", "durapay.a1b2c"),
        ("TEMPORAL_ADDRESS", "durapay.a1b2c.tmprl.cloud:7233"),
    ):
        monkeypatch.setenv(name, value)
    options = temporal_connect_options(Settings())
    assert options == {
        "target_host": "durapay.a1b2c.tmprl.cloud:7233",
        "namespace": "durapay.a1b2c",
        "api_key": "k",
        "tls": TLSConfig(
            server_root_ca_cert=CA.encode(),
            client_cert=CERT.encode(),
            client_private_key=KEY.encode(),
        ),
    }


def test_inline_pem_flattened_to_one_line_is_restored() -> None:
    flattened = KEY.strip().replace("\n", "\\n")
    tls = temporal_connect_options(_settings(temporal_tls_cert=CERT, temporal_tls_key=flattened))[
        "tls"
    ]
    assert tls.client_private_key == KEY.encode()
