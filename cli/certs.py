"""`durapay certs DIR`: a small private PKI for mutual TLS between Temporal and its clients.

    durapay certs DIR [--san NAME]... [--client ROLE]... [--owner ROLE=UID[:GID]]... [--force]

Writes, under DIR:
    ca/ca.pem, ca/ca.key          the CA (its key never leaves this directory: mount nothing
                                  from it)
    temporal/                     the Temporal server's certificate, for the names given with
                                  --san (default: temporal, localhost, 127.0.0.1)
    <role>/                       one client certificate per role (default: api, worker, cli,
                                  admin-tools, ui)
Each role directory holds what that role mounts and nothing else: `cert.pem`, `key.pem` and
`ca.pem` (the CA's certificate, to verify the other side). Keys are 0600 and directories 0700.

Run it again at will: what exists and is still good is kept (issued by this CA, not within
RENEW_BEFORE of expiry, the server's names as asked), anything else is issued, and nothing is
overwritten unless --force, which starts over with a new CA. `--owner` hands a role's
directory to the user its container runs as (needs root, as the compose file's one-shot `certs`
service runs it).

The server certificate carries both TLS uses: Temporal's frontend presents it to clients, and
its internal services present it to one another and to the frontend, as clients (internode
mTLS). Keys are ECDSA P-256, which the Temporal server, its Web UI, its CLI and Durapay's SDK
all accept.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_ROLE = "temporal"
CA_DIR = "ca"
DEFAULT_SERVER_NAMES = ("temporal", "localhost", "127.0.0.1")
DEFAULT_CLIENTS = ("api", "worker", "cli", "admin-tools", "ui")
CA_DAYS = 3650
LEAF_DAYS = 365
# A certificate this close to its end is renewed on the next run (the compose file runs this
# at every `up`); the processes holding it read the new one when restarted.
RENEW_BEFORE = datetime.timedelta(days=30)
# Clocks of the containers may trail this one's a little.
BACKDATE = datetime.timedelta(minutes=5)
ROLE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
CERT, KEY, CA_CERT, CA_KEY = "cert.pem", "key.pem", "ca.pem", "ca.key"


class CertsError(ValueError):
    """The request cannot be carried out as given (a bad role, a missing permission)."""


@dataclass(frozen=True)
class Owner:
    uid: int
    gid: int = -1  # -1: leave the group as it is


@dataclass(frozen=True)
class Authority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def add_parser(commands: Any) -> None:
    certs = commands.add_parser(
        "certs",
        help="write a CA and mTLS certificates for Temporal and its clients",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    certs.add_argument("directory", type=Path)
    certs.add_argument(
        "--san",
        action="append",
        dest="server_names",
        metavar="NAME",
        help="a DNS name or IP address of the Temporal server (repeat; default: "
        + ", ".join(DEFAULT_SERVER_NAMES)
        + ")",
    )
    certs.add_argument(
        "--client",
        action="append",
        dest="clients",
        metavar="ROLE",
        help="a client role to issue a certificate for (repeat; default: "
        + ", ".join(DEFAULT_CLIENTS)
        + ")",
    )
    certs.add_argument(
        "--owner",
        action="append",
        default=[],
        metavar="ROLE=UID[:GID]",
        help="give ROLE's directory and files to this user (needs root)",
    )
    certs.add_argument("--force", action="store_true", help="replace everything, the CA included")


def run(args: argparse.Namespace) -> int:
    """Run before settings are read: this is how a production host gets the certificates
    whose absence its settings refuse."""
    try:
        clients = tuple(args.clients or DEFAULT_CLIENTS)
        report = make_pki(
            args.directory,
            server_names=tuple(args.server_names or DEFAULT_SERVER_NAMES),
            clients=clients,
            owners=parse_owners(args.owner, clients),
            force=args.force,
        )
    except (CertsError, OSError) as error:
        print(f"durapay certs: {error}", file=sys.stderr)
        return 1
    for role, outcome in report.items():
        print(f"{role:<12} {outcome}")
    return 0


def parse_owners(values: Sequence[str], clients: Sequence[str]) -> dict[str, Owner]:
    owners = {}
    for value in values:
        match = re.fullmatch(r"([a-z0-9-]+)=(\d+)(?::(\d+))?", value)
        if match is None:
            raise CertsError(f"--owner {value}: expected ROLE=UID or ROLE=UID:GID")
        role, uid, gid = match.groups()
        if role not in (SERVER_ROLE, *clients):
            raise CertsError(
                f"--owner {value}: no role {role} (roles: {SERVER_ROLE}, {', '.join(clients)})"
            )
        owners[role] = Owner(int(uid), int(gid) if gid else -1)
    return owners


def make_pki(
    directory: Path,
    *,
    server_names: Sequence[str],
    clients: Sequence[str],
    owners: Mapping[str, Owner],
    force: bool = False,
    now: datetime.datetime | None = None,
) -> dict[str, str]:
    """Bring DIRECTORY to a CA, a server certificate and one client certificate per role;
    returns each one's outcome (created, issued, renewed, kept) in order."""
    for role in clients:
        if not ROLE.fullmatch(role) or role in (SERVER_ROLE, CA_DIR):
            raise CertsError(
                f"{role!r} cannot name a client role (lower-case letters, digits "
                f"and '-'; not {SERVER_ROLE} or {CA_DIR})"
            )
    sans = [_san(name) for name in server_names]
    now = now or datetime.datetime.now(datetime.UTC)
    _private_dir(directory)
    report: dict[str, str] = {}
    authority, report[CA_DIR] = _authority(directory / CA_DIR, now, force)
    new_ca = report[CA_DIR] == "created"
    for role in (SERVER_ROLE, *clients):
        server = role == SERVER_ROLE
        report[role] = _leaf(
            directory / role,
            authority,
            now,
            force=force or new_ca,
            sans=sans if server else None,
            owner=owners.get(role),
        )
    return report


def _authority(path: Path, now: datetime.datetime, force: bool) -> tuple[Authority, str]:
    _private_dir(path)
    if not force and (path / CA_CERT).exists() and (path / CA_KEY).exists():
        cert = x509.load_pem_x509_certificate((path / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((path / CA_KEY).read_bytes(), None)
        if (
            isinstance(key, ec.EllipticCurvePrivateKey)
            and _same_key(cert, key)
            and cert.not_valid_after_utc - RENEW_BEFORE > now
        ):
            return Authority(cert, key), "kept"
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Durapay"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Durapay Temporal CA"),
        ]
    )
    cert = (
        _builder(name, name, key.public_key(), now, CA_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(path / CA_KEY, _key_pem(key), 0o600)
    _write(path / CA_CERT, _cert_pem(cert), 0o644)
    return Authority(cert, key), "created"


def _leaf(
    path: Path,
    authority: Authority,
    now: datetime.datetime,
    *,
    force: bool,
    sans: list[x509.GeneralName] | None,
    owner: Owner | None,
) -> str:
    _private_dir(path)
    ca_pem = _cert_pem(authority.cert)
    if not (path / CA_CERT).exists() or (path / CA_CERT).read_bytes() != ca_pem:
        _write(path / CA_CERT, ca_pem, 0o644)
    state = "issued" if force else _leaf_state(path, authority, now, sans)
    if state != "kept":
        _issue(path, authority, now, sans, role=path.name)
    if owner is not None:
        _give(path, owner)
    return state if sans is None else f"{state} ({', '.join(_names(sans))})"


def _leaf_state(
    path: Path, authority: Authority, now: datetime.datetime, sans: list[x509.GeneralName] | None
) -> str:
    """`kept` when the pair on disk is whole, from this CA and good for a while, else why it
    is issued again."""
    if not (path / CERT).exists() or not (path / KEY).exists():
        return "issued"
    try:
        cert = x509.load_pem_x509_certificate((path / CERT).read_bytes())
        key = serialization.load_pem_private_key((path / KEY).read_bytes(), None)
        cert.verify_directly_issued_by(authority.cert)
    except (ValueError, TypeError, InvalidSignature):
        return "reissued (not from this CA, or unreadable)"
    if not _same_key(cert, key):
        return "reissued (the key does not match)"
    if cert.not_valid_after_utc - RENEW_BEFORE <= now:
        return "renewed"
    if sans is not None and set(_names(sans)) != set(_names(_sans_of(cert))):
        return "reissued (server names changed)"
    return "kept"


def _issue(
    path: Path,
    authority: Authority,
    now: datetime.datetime,
    sans: list[x509.GeneralName] | None,
    *,
    role: str,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    server = sans is not None
    common_name = _names(sans)[0] if sans else f"durapay-{role}"
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Durapay"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    usages = (
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        if server
        else [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    builder = (
        _builder(subject, authority.cert.subject, key.public_key(), now, LEAF_DAYS)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()),
            critical=False,
        )
    )
    # A client is named in its SAN too, as a SPIFFE-style URI: verifiers that follow RFC 5280
    # profiles strictly read identities from the SAN only.
    names = sans or [x509.UniformResourceIdentifier(f"spiffe://durapay/{role}")]
    builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(authority.key, hashes.SHA256())
    # The key first: a crash between the two leaves a pair that does not match, which the
    # next run finds and issues again.
    _write(path / KEY, _key_pem(key), 0o600)
    _write(path / CERT, _cert_pem(cert), 0o644)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime.datetime,
    days: int,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    if not re.fullmatch(r"(?=.{1,253}$)[A-Za-z0-9*]([A-Za-z0-9.-]*[A-Za-z0-9])?", name):
        raise CertsError(f"--san {name!r}: not a DNS name or IP address")
    return x509.DNSName(name.lower())


def _sans_of(cert: x509.Certificate) -> list[x509.GeneralName]:
    try:
        return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return []


def _names(sans: Sequence[x509.GeneralName]) -> list[str]:
    return [str(san.value) for san in sans]


def _same_key(cert: x509.Certificate, key: Any) -> bool:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(
        cert.public_key().public_bytes(serialization.Encoding.PEM, spki)
        == key.public_key().public_bytes(serialization.Encoding.PEM, spki)
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Created with its final mode (never briefly readable by others), then renamed over the
    old file, so a reader sees the old content or the new, whole."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
    os.chmod(temporary, mode)  # the umask may have taken bits off
    os.replace(temporary, path)


def _give(path: Path, owner: Owner) -> None:
    try:
        for item in (path, *(path / name for name in (CERT, KEY, CA_CERT))):
            os.chown(item, owner.uid, owner.gid)
    except PermissionError:
        raise CertsError(
            f"--owner: cannot give {path} to uid {owner.uid} (run as root, as "
            "the compose file's `certs` service does)"
        ) from None
