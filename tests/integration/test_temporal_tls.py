"""mTLS to Temporal for real: `temporal server start-dev` has no TLS, so a TLS-terminating
proxy that requires a client certificate from our test CA stands in front of one, as a
production frontend (or Temporal Cloud) does. Durapay's own connection (`connect_temporal`,
settings only) gets through; one without a client certificate, with another CA's certificate,
or that cannot verify the server, does not. The same holds with the PKI `durapay certs` writes
(the compose file's): each role's directory connects, another PKI's client certificate does
not."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import ipaddress
import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from temporalio.testing import WorkflowEnvironment

from core.settings import Settings
from core.temporal_client import connect_temporal
from tests.stack import BIN

pytestmark = pytest.mark.integration


@dataclass
class Issued:
    cert: str
    key: str


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    subject: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    server: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer[0].subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
    )
    if issuer is None:  # a CA
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=None), True
        ).add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), True
        )
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            False,
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                False,
            )
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256()), key


def _pem(pair: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]) -> Issued:
    cert, key = pair
    return Issued(
        cert.public_bytes(serialization.Encoding.PEM).decode(),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
    )


@dataclass
class Pki:
    ca: Issued
    server: Issued
    client: Issued
    stranger: Issued  # a client certificate from a CA the server does not trust


def _pki() -> Pki:
    ca, other_ca = _issue("durapay test CA", None), _issue("someone else's CA", None)
    return Pki(
        _pem(ca),
        _pem(_issue("temporal", ca, server=True)),
        _pem(_issue("durapay-worker", ca)),
        _pem(_issue("intruder", other_ca)),
    )


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError, ssl.SSLError):
        pass
    finally:
        with contextlib.suppress(ConnectionError, OSError, ssl.SSLError):
            writer.close()


@pytest.fixture(scope="module")
def pki() -> Pki:
    return _pki()


@pytest.fixture(scope="module")
async def dev_server() -> AsyncIterator[tuple[str, int]]:
    server = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(Path(sys.executable).parent / "temporal"),
        dev_server_log_level="error",
    )
    host, port = server.client.service_client.config.target_host.rsplit(":", 1)
    try:
        yield host, int(port)
    finally:
        await server.shutdown()


@contextlib.asynccontextmanager
async def mtls_proxy(
    upstream: tuple[str, int], *, ca: str, cert_file: Path, key_file: Path
) -> AsyncIterator[str]:
    """host:port of a proxy in front of the dev server that terminates TLS with this server
    certificate and requires a client certificate from this CA (gRPC over HTTP/2: ALPN h2)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    context.load_verify_locations(cadata=ca)
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*upstream)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    proxy = await asyncio.start_server(relay, "127.0.0.1", 0, ssl=context)
    try:
        yield f"127.0.0.1:{proxy.sockets[0].getsockname()[1]}"
    finally:
        proxy.close()


@pytest.fixture(scope="module")
async def mtls_address(
    pki: Pki, dev_server: tuple[str, int], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    files = tmp_path_factory.mktemp("tls")
    (files / "server.pem").write_text(pki.server.cert)
    (files / "server.key").write_text(pki.server.key)
    async with mtls_proxy(
        dev_server, ca=pki.ca.cert, cert_file=files / "server.pem", key_file=files / "server.key"
    ) as address:
        yield address


def _settings(address: str, **tls: Any) -> Settings:
    return Settings(
        temporal_address=address, master_key=base64.b64encode(os.urandom(32)).decode(), **tls
    )


async def test_durapay_connects_with_its_client_certificate(
    mtls_address: str, pki: Pki, tmp_path: Path
) -> None:
    (tmp_path / "client.pem").write_text(pki.client.cert)  # a path for one, inline for others
    client = await connect_temporal(
        _settings(
            mtls_address,
            temporal_tls_ca=pki.ca.cert,
            temporal_tls_cert=str(tmp_path / "client.pem"),
            temporal_tls_key=pki.client.key,
        )
    )
    assert (await client.count_workflows()).count == 0


@pytest.mark.parametrize("case", ["no-client-certificate", "another-ca", "server-unverified"])
async def test_a_connection_without_the_right_certificates_is_refused(
    mtls_address: str, pki: Pki, case: str
) -> None:
    tls = {
        "no-client-certificate": {"temporal_tls_ca": pki.ca.cert},
        "another-ca": {
            "temporal_tls_ca": pki.ca.cert,
            "temporal_tls_cert": pki.stranger.cert,
            "temporal_tls_key": pki.stranger.key,
        },
        # The client's system roots do not know the test CA.
        "server-unverified": {
            "temporal_tls_cert": pki.client.cert,
            "temporal_tls_key": pki.client.key,
        },
    }[case]
    with pytest.raises(RuntimeError, match="Failed client connect"):
        async with asyncio.timeout(60):
            client = await connect_temporal(_settings(mtls_address, **tls))
            await client.count_workflows()


# ---------------------------------------------------------------- certificates of `durapay certs`


def _durapay_certs(directory: Path) -> Path:
    done = subprocess.run(
        [str(BIN / "durapay"), "certs", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return directory


@pytest.fixture(scope="module")
async def certs_address(
    dev_server: tuple[str, int],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[str, Path]]:
    """The dev server behind a TLS proxy that presents the server certificate `durapay certs`
    made for `temporal` (its SANs include localhost and 127.0.0.1) and requires a client
    certificate from that CA, as docker-compose.temporal.yml's Temporal does."""
    pki = _durapay_certs(tmp_path_factory.mktemp("durapay-certs") / "pki")
    server = pki / "temporal"
    async with mtls_proxy(
        dev_server,
        ca=(server / "ca.pem").read_text(),
        cert_file=server / "cert.pem",
        key_file=server / "key.pem",
    ) as address:
        yield address, pki


def _role(address: str, role_dir: Path) -> Settings:
    """A process's settings as the compose file gives them: paths into its role directory."""
    return _settings(
        address,
        temporal_tls_ca=str(role_dir / "ca.pem"),
        temporal_tls_cert=str(role_dir / "cert.pem"),
        temporal_tls_key=str(role_dir / "key.pem"),
    )


@pytest.mark.parametrize("role", ["api", "worker", "cli"])
async def test_durapay_certs_make_a_working_mtls_connection(
    certs_address: tuple[str, Path], role: str
) -> None:
    address, pki = certs_address
    client = await connect_temporal(_role(address, pki / role))
    assert (await client.count_workflows()).count >= 0


async def test_a_client_certificate_from_another_durapay_certs_ca_is_refused(
    certs_address: tuple[str, Path], tmp_path: Path
) -> None:
    address, pki = certs_address
    other = _durapay_certs(tmp_path / "other")
    # The right CA to verify the server, another PKI's client certificate: the server refuses.
    settings = _settings(
        address,
        temporal_tls_ca=str(pki / "api" / "ca.pem"),
        temporal_tls_cert=str(other / "api" / "cert.pem"),
        temporal_tls_key=str(other / "api" / "key.pem"),
    )
    with pytest.raises(RuntimeError, match="Failed client connect"):
        async with asyncio.timeout(60):
            client = await connect_temporal(settings)
            await client.count_workflows()
