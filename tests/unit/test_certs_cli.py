"""`durapay certs DIR`: the chain verifies as RFC 5280 path validation does it (cryptography's
verifier: signature, validity, key usages, EKU, SANs), keys are private, and a second run keeps
what is still good. A real handshake with these certificates: tests/integration/
test_temporal_tls.py."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from cli import certs
from cli import main as cli_main

CLIENTS = ("api", "worker", "cli", "admin-tools", "ui")


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def policy(pki: Path) -> PolicyBuilder:
    return PolicyBuilder().store(Store([load(pki / "ca" / "ca.pem")]))


def contents(pki: Path) -> dict[str, bytes]:
    return {str(p.relative_to(pki)): p.read_bytes() for p in sorted(pki.rglob("*")) if p.is_file()}


@pytest.fixture
def pki(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    directory = tmp_path / "pki"
    assert cli_main.main(["certs", str(directory)]) == 0
    out = capsys.readouterr().out
    assert "ca           created" in out and "temporal     issued" in out
    return directory


def test_client_certificates_verify_for_client_auth_only(pki: Path) -> None:
    for role in CLIENTS:
        leaf = load(pki / role / "cert.pem")
        verified = policy(pki).build_client_verifier().verify(leaf, [])
        assert verified.chain[-1] == load(pki / "ca" / "ca.pem")
        assert verified.subjects == [x509.UniformResourceIdentifier(f"spiffe://durapay/{role}")]
        assert leaf.extensions.get_extension_for_class(
            x509.ExtendedKeyUsage
        ).value == x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
        # A client certificate cannot pose as the server.
        with pytest.raises(VerificationError):
            policy(pki).build_server_verifier(x509.DNSName("temporal")).verify(leaf, [])
        # Each role directory carries the CA that verifies the other side.
        assert (pki / role / "ca.pem").read_bytes() == (pki / "ca" / "ca.pem").read_bytes()


def test_the_server_certificate_names_its_addresses_and_serves_both_uses(pki: Path) -> None:
    leaf = load(pki / "temporal" / "cert.pem")
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["temporal", "localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    for name in (
        x509.DNSName("temporal"),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ):
        policy(pki).build_server_verifier(name).verify(leaf, [])
    with pytest.raises(VerificationError):
        policy(pki).build_server_verifier(x509.DNSName("elsewhere.example")).verify(leaf, [])
    # Temporal's services present it to one another (internode mTLS) and to the frontend.
    policy(pki).build_client_verifier().verify(leaf, [])


def test_the_ca_signs_certificates_and_nothing_else(pki: Path) -> None:
    ca = load(pki / "ca" / "ca.pem")
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    for role in ("temporal", *CLIENTS):
        load(pki / role / "cert.pem").verify_directly_issued_by(ca)
        leaf = load(pki / role / "cert.pem")
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_another_pkis_certificates_do_not_verify(pki: Path, tmp_path: Path) -> None:
    assert (
        certs.make_pki(tmp_path / "other", server_names=["temporal"], clients=["api"], owners={})[
            "ca"
        ]
        == "created"
    )
    stranger = load(tmp_path / "other" / "api" / "cert.pem")
    with pytest.raises(VerificationError):
        policy(pki).build_client_verifier().verify(stranger, [])


def test_keys_are_private_and_pair_with_their_certificates(pki: Path) -> None:
    assert stat.S_IMODE(pki.stat().st_mode) == 0o700
    assert stat.S_IMODE((pki / "ca" / "ca.key").stat().st_mode) == 0o600
    for role in ("ca", "temporal", *CLIENTS):
        assert stat.S_IMODE((pki / role).stat().st_mode) == 0o700, role
    for role in ("temporal", *CLIENTS):
        assert stat.S_IMODE((pki / role / "key.pem").stat().st_mode) == 0o600, role
        assert stat.S_IMODE((pki / role / "cert.pem").stat().st_mode) == 0o644, role
        # OpenSSL refuses a certificate whose key does not match.
        ssl.create_default_context().load_cert_chain(
            pki / role / "cert.pem", pki / role / "key.pem"
        )
    # The CA's key is in its own directory only: no role directory holds it.
    ca_key = (pki / "ca" / "ca.key").read_bytes()
    assert [p for p in pki.rglob("*.pem") if p.read_bytes() == ca_key] == []


def test_a_second_run_keeps_everything(pki: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = contents(pki)
    assert cli_main.main(["certs", str(pki)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [
        [role, "kept"] for role in ("ca", "temporal", *CLIENTS)
    ]
    assert contents(pki) == before


def test_force_starts_over_with_a_new_ca(pki: Path) -> None:
    before = contents(pki)
    assert cli_main.main(["certs", str(pki), "--force"]) == 0
    after = contents(pki)
    assert set(after) == set(before)
    assert all(after[name] != before[name] for name in after)
    load(pki / "api" / "cert.pem").verify_directly_issued_by(load(pki / "ca" / "ca.pem"))


def test_only_what_is_missing_changed_or_expiring_is_issued(pki: Path) -> None:
    before = contents(pki)
    (pki / "worker" / "key.pem").unlink()
    report = certs.make_pki(pki, server_names=["temporal", "10.0.0.5"], clients=CLIENTS, owners={})
    assert report["ca"] == "kept" and report["api"] == "kept"
    assert report["worker"] == "issued"
    assert report["temporal"] == "reissued (server names changed) (temporal, 10.0.0.5)"
    after = contents(pki)
    assert after["api/cert.pem"] == before["api/cert.pem"]
    assert after["worker/cert.pem"] != before["worker/cert.pem"]
    # Within a month of its end a certificate is renewed; the CA lasts ten years.
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=340)
    report = certs.make_pki(
        pki, server_names=["temporal", "10.0.0.5"], clients=["api"], owners={}, now=later
    )
    assert (report["ca"], report["api"]) == ("kept", "renewed")


def test_a_certificate_from_another_ca_is_replaced(pki: Path, tmp_path: Path) -> None:
    certs.make_pki(tmp_path / "other", server_names=["temporal"], clients=["api"], owners={})
    for name in ("cert.pem", "key.pem"):
        (pki / "api" / name).write_bytes((tmp_path / "other" / "api" / name).read_bytes())
    report = certs.make_pki(
        pki, server_names=certs.DEFAULT_SERVER_NAMES, clients=CLIENTS, owners={}
    )
    assert report["api"] == "reissued (not from this CA, or unreadable)"
    load(pki / "api" / "cert.pem").verify_directly_issued_by(load(pki / "ca" / "ca.pem"))


def test_owner_hands_a_role_directory_to_its_user(tmp_path: Path) -> None:
    uid, gid = os.getuid(), os.getgid()
    assert (
        cli_main.main(
            [
                "certs",
                str(tmp_path / "pki"),
                "--client",
                "api",
                "--owner",
                f"api={uid}:{gid}",
                "--owner",
                f"temporal={uid}",
            ]
        )
        == 0
    )
    for item in ("", "cert.pem", "key.pem", "ca.pem"):
        info = (tmp_path / "pki" / "api" / item).stat()
        assert (info.st_uid, info.st_gid) == (uid, gid)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--owner", "nobody=1000"], "no role nobody"),
        (["--owner", "api=alice"], "expected ROLE=UID"),
        (["--client", "ca"], "cannot name a client role"),
        (["--client", "Temporal UI"], "cannot name a client role"),
        (["--san", "not a name"], "not a DNS name or IP address"),
    ],
)
def test_bad_requests_are_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert cli_main.main(["certs", str(tmp_path / "pki"), *argv]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "pki").exists()


def test_certs_runs_where_production_settings_are_still_incomplete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refusal tells a production host to run `durapay certs`: it must run there."""
    monkeypatch.setenv("DURAPAY_ENV", "production")
    for name in (
        "DURAPAY_MASTER_KEY",
        "DURAPAY_ADMIN_TOKEN",
        "DURAPAY_TEMPORAL_TLS_CERT",
        "DURAPAY_TEMPORAL_TLS_KEY",
        "DURAPAY_TEMPORAL_API_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    assert cli_main.main(["certs", str(tmp_path / "pki")]) == 0
    assert (tmp_path / "pki" / "api" / "key.pem").exists()
