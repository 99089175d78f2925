"""mTLS to Temporal for real: `temporal server start-dev` has no TLS, so a TLS-terminating
proxy that requires a client certificate from our test CA stands in front of one, as a
production frontend (or Temporal Cloud) does. Durapay's own connection (`connect_temporal`,
settings only) gets through; one without a client certificate, with another CA's certificate,
or that cannot verify the server, does not."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import ipaddress
import os
import ssl
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

pytestmark = pytest.mark.integration


@dataclass
class Issued:
    cert: str
    key: str


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(subject: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None, *,
           server: bool = False) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject))
               .issuer_name(issuer[0].subject if issuer else _name(subject))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(hours=1)))
    if issuer is None:  # a CA
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True) \
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False,
                                         False), True)
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        builder = builder.add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            False)
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256()), key


def _pem(pair: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]) -> Issued:
    cert, key = pair
    return Issued(cert.public_bytes(serialization.Encoding.PEM).decode(),
                  key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode())


@dataclass
class Pki:
    ca: Issued
    server: Issued
    client: Issued
    stranger: Issued  # a client certificate from a CA the server does not trust


def _pki() -> Pki:
    ca, other_ca = _issue("durapay test CA", None), _issue("someone else's CA", None)
    return Pki(_pem(ca), _pem(_issue("temporal", ca, server=True)),
               _pem(_issue("durapay-worker", ca)), _pem(_issue("intruder", other_ca)))


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
async def mtls_address(pki: Pki, tmp_path_factory: pytest.TempPathFactory,
                       ) -> AsyncIterator[str]:
    """host:port of a dev server behind a proxy that terminates TLS and requires a client
    certificate from the test CA (gRPC over HTTP/2: ALPN h2)."""
    server = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(Path(sys.executable).parent / "temporal"),
        dev_server_log_level="error")
    upstream = server.client.service_client.config.target_host.rsplit(":", 1)
    files = tmp_path_factory.mktemp("tls")
    (files / "server.pem").write_text(pki.server.cert)
    (files / "server.key").write_text(pki.server.key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files / "server.pem", files / "server.key")
    context.load_verify_locations(cadata=pki.ca.cert)
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(upstream[0], int(upstream[1]))
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    proxy = await asyncio.start_server(relay, "127.0.0.1", 0, ssl=context)
    port = proxy.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        proxy.close()
        await server.shutdown()


def _settings(address: str, **tls: Any) -> Settings:
    return Settings(temporal_address=address,
                    master_key=base64.b64encode(os.urandom(32)).decode(), **tls)


async def test_durapay_connects_with_its_client_certificate(mtls_address: str, pki: Pki,
                                                            tmp_path: Path) -> None:
    (tmp_path / "client.pem").write_text(pki.client.cert)  # a path for one, inline for others
    client = await connect_temporal(_settings(
        mtls_address, temporal_tls_ca=pki.ca.cert, temporal_tls_cert=str(tmp_path / "client.pem"),
        temporal_tls_key=pki.client.key))
    assert (await client.count_workflows()).count == 0


@pytest.mark.parametrize("case", ["no-client-certificate", "another-ca", "server-unverified"])
async def test_a_connection_without_the_right_certificates_is_refused(
        mtls_address: str, pki: Pki, case: str) -> None:
    tls = {
        "no-client-certificate": {"temporal_tls_ca": pki.ca.cert},
        "another-ca": {"temporal_tls_ca": pki.ca.cert, "temporal_tls_cert": pki.stranger.cert,
                       "temporal_tls_key": pki.stranger.key},
        # The client's system roots do not know the test CA.
        "server-unverified": {"temporal_tls_cert": pki.client.cert,
                              "temporal_tls_key": pki.client.key},
    }[case]
    with pytest.raises(RuntimeError, match="Failed client connect"):
        async with asyncio.timeout(60):
            client = await connect_temporal(_settings(mtls_address, **tls))
            await client.count_workflows()
