"""docker-compose.temporal.yml cannot run here (no Docker engine): what can be checked without
one is checked here, against the Compose Specification's JSON schema and against the code the
containers run (settings, health endpoints, metrics ports, shutdown timeouts). The proxy's
nginx config and the Postgres init script run for real where their programs exist."""

from __future__ import annotations

import argparse
import ast
import base64
import contextlib
import dataclasses
import importlib.util
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import asyncpg
import pytest
import yaml
from pydantic import ValidationError

from api.codec_app import CODEC_PATH, startup_refusal
from cardnet import settings as cardnet_settings
from cli import certs
from cli.local_postgres import postgres_argv, postgres_bin_dir, postgres_data_dir, run_as
from core import search_attributes
from core.settings import Settings
from core.temporal_client import temporal_connect_options
from tests.stack import free_port, private_dir, stop_process, wait_until_postgres_accepts

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.temporal.yml"
RAW = COMPOSE_FILE.read_text()
COMPOSE: dict[str, Any] = yaml.safe_load(RAW)
SERVICES: dict[str, Any] = COMPOSE["services"]
DEPLOY = ROOT / "deploy"
PROXY_TEMPLATE = DEPLOY / "proxy" / "durapay.conf.template"
DOCKERFILE = (ROOT / "Dockerfile").read_text()
# Instructions, one a line (continuations joined), without comments.
DOCKERFILE_LINES = [
    line
    for line in re.sub(r"\s*\\\n\s*", " ", DOCKERFILE).splitlines()
    if line.strip() and not line.lstrip().startswith("#")
]

# Durapay's own image (`build: .`): the API, the workers, the simulator, the codec, migrations.
OURS = {name for name, service in SERVICES.items() if "build" in service}
PRODUCTION = ("api", "worker", "migrate")
SECRETS = (
    "DURAPAY_MASTER_KEY",
    "DURAPAY_ADMIN_TOKEN",
    "DURAPAY_CODEC_TOKEN",
    "POSTGRES_PASSWORD",
    "POSTGRES_TEMPORAL_PASSWORD",
    "POSTGRES_DURAPAY_PASSWORD",
)
# Interpolated by compose only, never passed to a Durapay process.
COMPOSE_ONLY = {"DURAPAY_IMAGE"}
# Long-running services without a healthcheck, and why.
NO_PROBE = {"otel-collector": "the image is FROM scratch: nothing inside to run a probe with"}
INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def setting_names() -> set[str]:
    """Every environment name core/settings.py reads (its prefix, or its aliases)."""
    prefix = Settings.model_config.get("env_prefix", "")
    names = set()
    for field_name, field in Settings.model_fields.items():
        aliases = getattr(field.validation_alias, "choices", None)
        names |= set(aliases) if aliases else {f"{prefix}{field_name}".upper()}
    return names


def cardnet_names() -> set[str]:
    return {value for key, value in vars(cardnet_settings).items() if key.startswith("ENV_")}


def fake_secret(name: str) -> str:
    if name == "DURAPAY_MASTER_KEY":
        return base64.b64encode(os.urandom(32)).decode()
    return os.urandom(16).hex()


def resolve(value: object) -> str:
    """A value as compose would pass it: required variables get a made-up secret, defaults
    their default, `$$` a single `$`."""

    def substitute(match: re.Match[str]) -> str:
        name, operator, argument = match.groups()
        if operator in (":?", "?"):
            return fake_secret(name)
        return argument if operator in (":-", "-") else ""

    return INTERPOLATION.sub(substitute, str(value)).replace("$$", "$")


def environment(name: str) -> dict[str, str]:
    env = SERVICES[name].get("environment", {})
    assert isinstance(env, dict), f"{name}: environment as a mapping, please"
    return {key: resolve(value) for key, value in env.items()}


def duration_seconds(text: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a compose duration: {text}"
    return sum(float(number) * units[unit] for number, unit in parts)


def published(service: Mapping[str, Any]) -> list[tuple[str, int, int]]:
    """(host ip, host port, container port) of every published port, either syntax."""
    result = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            result.append(
                (str(port.get("host_ip", "")), int(port["published"]), int(port["target"]))
            )
            continue
        parts = str(port).split(":")
        assert len(parts) == 3, f"{port}: name the host address (127.0.0.1:host:container)"
        result.append((parts[0], int(parts[1]), int(parts[2].split("/")[0])))
    return result


@dataclasses.dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool
    subpath: str | None = None


def mounts(service: Mapping[str, Any]) -> list[Mount]:
    """Every volume or bind mount of a service, either syntax."""
    result = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            result.append(
                Mount(
                    volume["source"],
                    volume["target"],
                    bool(volume.get("read_only")),
                    volume.get("volume", {}).get("subpath"),
                )
            )
            continue
        source, target, *options = str(volume).split(":")
        result.append(Mount(source, target, "ro" in options))
    return result


def is_one_shot(name: str) -> bool:
    return SERVICES[name].get("restart") == "no"


def has_healthcheck(name: str) -> bool:
    check = SERVICES[name].get("healthcheck")
    if check is not None:
        return not check.get("disable", False)
    return name in OURS and any(
        re.match(r"HEALTHCHECK\s.*\sCMD\s", line) for line in DOCKERFILE_LINES
    )


def load_probe() -> ModuleType:
    spec = importlib.util.spec_from_file_location("durapay_healthcheck", DEPLOY / "healthcheck.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ the specification


def check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.processes
def test_the_file_follows_the_compose_specification() -> None:
    result = check_compose_schema(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.processes
def test_the_schema_check_catches_a_misspelt_key(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yml"
    broken.write_text(RAW.replace("stop_grace_period: 30s", "stop_grace_periods: 30s", 1))
    result = check_compose_schema(broken)
    assert result.returncode != 0 and "stop_grace_periods" in result.stdout + result.stderr


# ------------------------------------------------------------------ Temporal


def test_temporal_runs_on_the_images_temporal_recommends() -> None:
    assert "auto-setup" not in RAW
    assert SERVICES["temporal"]["image"].startswith("temporalio/server:")
    for job in ("temporal-schema", "temporal-setup"):
        assert SERVICES[job]["image"].startswith("temporalio/admin-tools:"), job
        assert is_one_shot(job), job
    assert environment("temporal")["DB"] == environment("temporal-schema")["DB"] == "postgres12"
    schema_script = (DEPLOY / "temporal" / "setup-schema.sh").read_text()
    assert "--plugin postgres12" in schema_script
    assert "setup-schema -v 0.0" in schema_script and "update-schema -d" in schema_script
    assert (
        "temporal operator namespace create"
        in (DEPLOY / "temporal" / "setup-namespace.sh").read_text()
    )
    assert SERVICES["temporal"]["depends_on"]["temporal-schema"]["condition"] == (
        "service_completed_successfully"
    )
    dynamic_config = environment("temporal")["DYNAMIC_CONFIG_FILE_PATH"]
    assert any(
        dynamic_config.startswith(mount.target + "/")
        and (ROOT / mount.source / Path(dynamic_config).name).exists()
        for mount in mounts(SERVICES["temporal"])
    ), dynamic_config


def test_search_attributes_match_core() -> None:
    namespace = environment("temporal-setup")["NAMESPACE"]
    for name in PRODUCTION:
        assert environment(name)["DURAPAY_TEMPORAL_NAMESPACE"] == namespace, name
    assert environment("temporal-ui")["TEMPORAL_DEFAULT_NAMESPACE"] == namespace
    registered = dict(
        pair.split("=") for pair in environment("temporal-setup")["SEARCH_ATTRIBUTES"].split()
    )
    flags = search_attributes.registration_flags()[1::2]
    assert registered == dict(flag.split("=") for flag in flags)


def test_databases_match_the_postgres_init_script() -> None:
    init = (DEPLOY / "postgres-init" / "10-roles.sh").read_text()
    owned = dict(re.findall(r"CREATE DATABASE (\w+) OWNER (\w+);", init))
    temporal = environment("temporal")
    assert temporal["POSTGRES_SEEDS"] == "postgresql" and "postgresql" in SERVICES
    for database in (temporal["DBNAME"], temporal["VISIBILITY_DBNAME"]):
        assert owned[database] == temporal["POSTGRES_USER"] == "temporal", database
    assert environment("temporal-schema")["POSTGRES_USER"] == "temporal"
    url = re.fullmatch(
        r"postgresql://(\w+):[^@]+@postgresql:5432/(\w+)", environment("api")["DATABASE_URL"]
    )
    assert url and owned[url[2]] == url[1] == "durapay"


# ------------------------------------------------------------------ Durapay's settings


def test_every_durapay_variable_is_a_setting() -> None:
    known = setting_names()
    for name, service in SERVICES.items():
        for variable in service.get("environment", {}):
            if variable.startswith("DURAPAY_"):
                allowed = known | (cardnet_names() if name == "cardnet" else set())
                assert variable in allowed, (name, variable)
    for variable, _, _ in INTERPOLATION.findall(RAW):
        if variable.startswith("DURAPAY_"):
            assert variable in known | COMPOSE_ONLY, variable


def test_secrets_are_required_from_the_environment_never_defaulted() -> None:
    for secret in SECRETS:
        uses = [m for m in INTERPOLATION.finditer(RAW) if m[1] == secret]
        assert uses, f"{secret} is never asked for"
        assert all(m[2] == ":?" for m in uses), f"{secret} must be ${{{secret}:?…}}"
    for name, service in SERVICES.items():
        for variable, value in service.get("environment", {}).items():
            if variable in SECRETS:
                assert str(value).startswith(f"${{{variable}:?"), (name, variable, value)


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for variable in list(os.environ):
        if variable.startswith("DURAPAY_") or variable in ("DATABASE_URL", "TEMPORAL_ADDRESS"):
            monkeypatch.delenv(variable)
    yield monkeypatch


def settings_of(monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str]) -> Settings:
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    return Settings()


@pytest.mark.parametrize("service", PRODUCTION)
def test_production_services_refuse_generated_secrets(
    clean_environ: pytest.MonkeyPatch, service: str
) -> None:
    env = environment(service)
    assert env["DURAPAY_ENV"] == "production"
    settings = settings_of(clean_environ, env)
    assert settings.effective_temporal_address == "temporal:7233"
    assert settings.effective_cardnet_url == "http://cardnet:8081"
    assert settings.effective_database_url.startswith("postgresql+asyncpg://durapay:")
    clean_environ.delenv("DURAPAY_MASTER_KEY")
    with pytest.raises(ValidationError, match="DURAPAY_MASTER_KEY must be set"):
        Settings()


def test_the_codec_listener_holds_the_keys_and_nothing_else(
    clean_environ: pytest.MonkeyPatch,
) -> None:
    env = environment("codec")
    # api/codec_app.py refuses to run under DURAPAY_ENV=production, on purpose; it runs here
    # with no database, no Temporal address and no admin token.
    assert env["DURAPAY_ENV"] == "development"
    assert not {"DATABASE_URL", "TEMPORAL_ADDRESS", "DURAPAY_ADMIN_TOKEN"} & set(env)
    settings = settings_of(clean_environ, env)
    assert startup_refusal(settings) is None
    assert settings.resolved_key_ring() is not None  # from DURAPAY_MASTER_KEY, no files
    clean_environ.delenv("DURAPAY_CODEC_TOKEN")
    refusal = startup_refusal(Settings())
    assert refusal and "DURAPAY_CODEC_TOKEN" in refusal


def test_the_web_ui_reaches_the_codec_through_the_proxy(clean_environ: pytest.MonkeyPatch) -> None:
    ui_port = next(host for _, host, target in published(SERVICES["proxy"]) if target == 8233)
    assert "set $ui_upstream http://temporal-ui:8080;" in PROXY_TEMPLATE.read_text()
    codec_port = int(environment("codec")["DURAPAY_CODEC_PORT"])
    proxy_ports = {target: host for _, host, target in published(SERVICES["proxy"])}
    # The browser calls the endpoint itself: it must be the proxy's published loopback port.
    assert environment("temporal-ui")["TEMPORAL_CODEC_ENDPOINT"] == (
        f"http://127.0.0.1:{proxy_ports[8089]}{CODEC_PATH}"
    )
    template = PROXY_TEMPLATE.read_text()
    assert f"set $codec_upstream http://codec:{codec_port};" in template
    assert f"location {CODEC_PATH}/" in template
    assert 'proxy_set_header Authorization "Bearer ${DURAPAY_CODEC_TOKEN}";' in template
    assert "DURAPAY_CODEC_TOKEN" in environment("proxy")["NGINX_ENVSUBST_FILTER"]
    # The UI's origin may read the codec's answers (CORS).
    settings = settings_of(clean_environ, environment("codec"))
    assert f"http://127.0.0.1:{ui_port}" in settings.codec_allowed_origins


def test_the_api_and_every_worker_share_the_vault_epoch_keys(
    clean_environ: pytest.MonkeyPatch,
) -> None:
    """The API encrypts card numbers under the epoch keys and the workers decrypt them: one
    volume, at the directory the settings name, private to the image's user."""
    volumes = {}
    for name in ("api", "worker"):
        directory = environment(name)["DURAPAY_VAULT_KEY_DIR"]
        mounted = [
            (v["source"], v["target"]) if isinstance(v, dict) else tuple(v.split(":")[:2])
            for v in SERVICES[name]["volumes"]
        ]
        [source] = [source for source, target in mounted if target == directory]
        volumes[name] = source
        settings = settings_of(clean_environ, environment(name))
        assert settings.vault_epoch_keys().directory == Path(directory)
    assert volumes["api"] == volumes["worker"] and volumes["api"] in COMPOSE["volumes"]
    directory = environment("api")["DURAPAY_VAULT_KEY_DIR"]
    [setup] = [line for line in DOCKERFILE_LINES if f"mkdir -p /data {directory}" in line]
    assert f"chown durapay /data {directory}" in setup
    assert f"chmod 700 /data {directory}" in setup


# ------------------------------------------------------------------ ports and scaling


def test_every_published_port_is_on_loopback() -> None:
    for name, service in SERVICES.items():
        for host_ip, _, _ in published(service):
            assert host_ip == "127.0.0.1", name


def test_only_the_proxy_publishes_the_api() -> None:
    for name in OURS:
        assert "ports" not in SERVICES[name], f"{name}: scaled containers cannot share a port"
        assert "container_name" not in SERVICES[name], f"{name}: a fixed name cannot scale"
    api_port = int(SERVICES["api"]["command"][SERVICES["api"]["command"].index("--port") + 1])
    proxy = {target: host for _, host, target in published(SERVICES["proxy"])}
    assert proxy[api_port] == 8000
    assert f"set $api_upstream http://api:{api_port};" in PROXY_TEMPLATE.read_text()


def test_the_worker_outlives_its_graceful_shutdown() -> None:
    tree = ast.parse((ROOT / "workers" / "main.py").read_text())
    timeouts = [
        keyword.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        for keyword in node.keywords
        if keyword.arg == "graceful_shutdown_timeout"
    ]
    assert len(timeouts) == 1, "one Worker(graceful_shutdown_timeout=…) in workers/main.py"
    call = timeouts[0]
    assert isinstance(call, ast.Call) and ast.unparse(call.func) == "timedelta"
    graceful = sum(
        ast.literal_eval(k.value) * {"seconds": 1, "minutes": 60}[k.arg or ""]
        for k in call.keywords
    )
    assert graceful > 0
    assert duration_seconds(SERVICES["worker"]["stop_grace_period"]) > graceful
    charge_wait = Settings.model_fields["charge_wait_seconds"].default
    assert duration_seconds(SERVICES["api"]["stop_grace_period"]) > charge_wait


# ------------------------------------------------------------------ Temporal's mTLS, networks

PKI = "temporal-pki"
# What each kind of image reads for its client certificate: (CA, certificate, key).
CLIENT_TLS = {
    "durapay": ("DURAPAY_TEMPORAL_TLS_CA", "DURAPAY_TEMPORAL_TLS_CERT", "DURAPAY_TEMPORAL_TLS_KEY"),
    # The `temporal` CLI, 1.4 and later (temporalio/cli, cliext/option-sets.yaml).
    "temporalio/admin-tools": (
        "TEMPORAL_TLS_SERVER_CA_CERT_PATH",
        "TEMPORAL_TLS_CLIENT_CERT_PATH",
        "TEMPORAL_TLS_CLIENT_KEY_PATH",
    ),
    # temporalio/ui, server/docker/config-template.yaml.
    "temporalio/ui": ("TEMPORAL_TLS_CA", "TEMPORAL_TLS_CERT", "TEMPORAL_TLS_KEY"),
}
# The TLS names temporalio/server's embedded config template reads (temporalio/temporal
# v1.30.1, common/config/config_template_embedded.yaml): a misspelt one is silently ignored.
SERVER_TLS_NAMES = {
    "TEMPORAL_TLS_REQUIRE_CLIENT_AUTH",
    "TEMPORAL_TLS_SERVER_CA_CERT",
    "TEMPORAL_TLS_SERVER_CERT",
    "TEMPORAL_TLS_SERVER_KEY",
    "TEMPORAL_TLS_FRONTEND_CERT",
    "TEMPORAL_TLS_FRONTEND_KEY",
    "TEMPORAL_TLS_CLIENT1_CA_CERT",
    "TEMPORAL_TLS_CLIENT2_CA_CERT",
    "TEMPORAL_TLS_INTERNODE_SERVER_NAME",
    "TEMPORAL_TLS_FRONTEND_SERVER_NAME",
    "TEMPORAL_TLS_INTERNODE_DISABLE_HOST_VERIFICATION",
    "TEMPORAL_TLS_FRONTEND_DISABLE_HOST_VERIFICATION",
    "TEMPORAL_TLS_REFRESH_INTERVAL",
}


def image_kind(name: str) -> str:
    return "durapay" if name in OURS else SERVICES[name]["image"].split(":")[0]


def temporal_clients() -> list[str]:
    return sorted(name for name in SERVICES if "TEMPORAL_ADDRESS" in environment(name))


def pki_mount(name: str) -> Mount | None:
    found = [m for m in mounts(SERVICES[name]) if m.source == PKI]
    assert len(found) <= 1, name
    return found[0] if found else None


def certs_args() -> argparse.Namespace:
    """The compose `certs` service's command, parsed by `durapay certs`' own parser."""
    command = SERVICES["certs"]["command"]
    assert command[:2] == ["durapay", "certs"]
    parser = argparse.ArgumentParser()
    certs.add_parser(parser.add_subparsers())
    return parser.parse_args(command[1:])


@pytest.fixture(scope="module")
def compose_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the `certs` service writes, made here with its arguments (no --owner: that takes
    root, and the owners are checked separately)."""
    args = certs_args()
    directory = tmp_path_factory.mktemp("compose") / "pki"
    certs.make_pki(directory, server_names=args.server_names, clients=args.clients, owners={})
    return directory


def in_pki(name: str, path: str, pki: Path) -> Path:
    """The file a container path names, in the PKI as `certs` writes it."""
    mount = pki_mount(name)
    assert mount is not None and mount.subpath, f"{name} mounts no role directory"
    assert path.startswith(mount.target + "/"), (name, path)
    return pki / mount.subpath / path.removeprefix(mount.target + "/")


def test_temporal_requires_client_certificates(compose_pki: Path) -> None:
    env = environment("temporal")
    assert env["TEMPORAL_TLS_REQUIRE_CLIENT_AUTH"] == "true"
    assert {n for n in env if n.startswith("TEMPORAL_TLS_")} <= SERVER_TLS_NAMES
    assert pki_mount("temporal") == Mount(PKI, "/certs", True, certs.SERVER_ROLE)
    files = {
        name: in_pki("temporal", env[name], compose_pki)
        for name in (
            "TEMPORAL_TLS_SERVER_CA_CERT",
            "TEMPORAL_TLS_CLIENT1_CA_CERT",
            "TEMPORAL_TLS_CLIENT2_CA_CERT",
            "TEMPORAL_TLS_SERVER_CERT",
            "TEMPORAL_TLS_SERVER_KEY",
            "TEMPORAL_TLS_FRONTEND_CERT",
            "TEMPORAL_TLS_FRONTEND_KEY",
        )
    }
    ca = (compose_pki / "ca" / "ca.pem").read_bytes()
    # Clients are accepted only if this PKI's CA signed them, and internode peers likewise.
    for name in (
        "TEMPORAL_TLS_SERVER_CA_CERT",
        "TEMPORAL_TLS_CLIENT1_CA_CERT",
        "TEMPORAL_TLS_CLIENT2_CA_CERT",
    ):
        assert files[name].read_bytes() == ca, name
    assert files["TEMPORAL_TLS_FRONTEND_CERT"].name == "cert.pem"
    assert files["TEMPORAL_TLS_FRONTEND_KEY"].name == "key.pem"
    # Its services verify one another under a name its certificate carries, as do clients.
    for name in ("TEMPORAL_TLS_INTERNODE_SERVER_NAME", "TEMPORAL_TLS_FRONTEND_SERVER_NAME"):
        assert env[name] in certs_args().server_names, name
    for client in temporal_clients():
        host = environment(client)["TEMPORAL_ADDRESS"].rsplit(":", 1)[0]
        assert host == "temporal" and host in certs_args().server_names, client


def test_every_temporal_client_has_its_own_certificate(
    compose_pki: Path, clean_environ: pytest.MonkeyPatch
) -> None:
    clients = temporal_clients()
    # One certificate per role, so that one can be revoked (re-issued from a new CA) or told
    # apart in the server's logs; `migrate` and `events` are `durapay` commands like the CLI.
    roles = {
        "api": "api",
        "worker": "worker",
        "migrate": "cli",
        "events": "cli",
        "cli": "cli",
        "temporal-setup": "admin-tools",
        "temporal-cli": "admin-tools",
        "temporal-ui": "ui",
    }
    assert set(clients) == set(roles)
    issued = set(certs_args().clients)
    for name in clients:
        env = environment(name)
        mount = pki_mount(name)
        assert mount is not None and mount.read_only and mount.subpath == roles[name], name
        assert mount.subpath in issued, name
        assert SERVICES[name]["depends_on"]["certs"]["condition"] == (
            "service_completed_successfully"
        ), name
        ca, cert, key = (
            in_pki(name, env[variable], compose_pki) for variable in CLIENT_TLS[image_kind(name)]
        )
        assert (ca.name, cert.name, key.name) == ("ca.pem", "cert.pem", "key.pem"), name
        assert ssl_pair_loads(cert, key), name
    ui = environment("temporal-ui")
    assert ui["TEMPORAL_TLS_ENABLE_HOST_VERIFICATION"] == "true"
    assert ui["TEMPORAL_TLS_SERVER_NAME"] in certs_args().server_names
    # Durapay's processes: their settings, pointed at these files, give a mutual TLS connection.
    for name in (n for n in clients if image_kind(n) == "durapay"):
        env = environment(name)
        for variable in CLIENT_TLS["durapay"]:
            env[variable] = str(in_pki(name, env[variable], compose_pki))
        tls = temporal_connect_options(settings_of(clean_environ, env))["tls"]
        assert tls.client_cert == Path(env["DURAPAY_TEMPORAL_TLS_CERT"]).read_bytes(), name
        assert tls.server_root_ca_cert == (compose_pki / "ca" / "ca.pem").read_bytes(), name


def ssl_pair_loads(cert: Path, key: Path) -> bool:
    ssl.create_default_context().load_cert_chain(cert, key)  # raises if they do not match
    return True


def test_the_pki_volume_gives_each_service_its_role_only() -> None:
    args = certs_args()
    for name in SERVICES:
        mount = pki_mount(name)
        if name == "certs":
            assert mount == Mount(PKI, args.directory.as_posix(), False)
            continue
        if mount is not None:  # never the CA's directory, never the whole volume
            assert mount.read_only and mount.subpath not in (None, certs.CA_DIR), name
    # The codec listener never talks to Temporal: no certificate for it.
    assert pki_mount("codec") is None and "TEMPORAL_ADDRESS" not in environment("codec")


def test_the_certs_service_hands_each_role_to_its_containers_user() -> None:
    service, args = SERVICES["certs"], certs_args()
    assert is_one_shot("certs") and service["network_mode"] == "none"
    assert service["user"] == "0:0" and set(service["cap_add"]) == {"CHOWN", "DAC_OVERRIDE"}
    assert service["cap_drop"] == ["ALL"]
    owners = certs.parse_owners(args.owner, args.clients)
    ours = re.search(r"^USER\s+(\d+):(\d+)", DOCKERFILE, re.M)
    assert ours is not None
    for name in SERVICES:
        mount = pki_mount(name)
        if mount is None or name == "certs":
            continue
        assert mount.subpath is not None
        owner = owners[mount.subpath]  # every mounted role is handed to someone
        if image_kind(name) == "durapay":
            assert (owner.uid, owner.gid) == (int(ours[1]), int(ours[2])), name
        if "user" in SERVICES[name]:
            assert SERVICES[name]["user"].split(":")[0] == str(owner.uid), name


def service_networks(name: str) -> set[str]:
    networks = SERVICES[name].get("networks", [])
    return set(networks if isinstance(networks, list) else networks)


def test_only_the_proxy_is_on_the_edge_and_publishes_ports() -> None:
    networks = COMPOSE["networks"]
    assert networks["internal"]["internal"] is True
    for name in SERVICES:
        if SERVICES[name].get("network_mode") == "none":
            assert not service_networks(name), name
            continue
        # Named, so that no service lands on compose's default network (not internal).
        assert service_networks(name) and service_networks(name) <= set(networks), name
        assert "internal" in service_networks(name), name
        if name != "proxy":
            assert "edge" not in service_networks(name), name
            assert "ports" not in SERVICES[name], f"{name}: publish through the proxy"
    assert service_networks("proxy") == {"internal", "edge"}
    assert {target for _, _, target in published(SERVICES["proxy"])} == {
        8000,
        8089,
        8233,
        16686,
        9090,
    }
    # Temporal and Postgres are reachable from the internal network only.
    assert service_networks("temporal") == service_networks("postgresql") == {"internal"}
    # The workers alone get a way out (merchants' webhook URLs); it publishes nothing.
    assert [n for n in SERVICES if "egress" in service_networks(n)] == ["worker"]
    assert not networks["egress"].get("internal")


def test_the_proxy_serves_the_consoles_on_their_published_ports() -> None:
    template = PROXY_TEMPLATE.read_text()
    for port, upstream in (
        (8233, "http://temporal-ui:8080"),
        (16686, "http://jaeger:16686"),
        (9090, "http://prometheus:9090"),
    ):
        assert f"listen {port} default_server;" in template, port  # other Host names: 421
        block = template.split(f"listen {port};", 1)[1].split("\nserver {", 1)[0]
        assert "server_name 127.0.0.1 localhost;" in block and upstream in block, port
    for name, exposed in (("temporal-ui", "8080"), ("jaeger", "16686"), ("prometheus", "9090")):
        assert exposed in [str(p) for p in SERVICES[name]["expose"]], name


# ------------------------------------------------------------------ health and start order


def test_every_long_running_service_has_a_healthcheck() -> None:
    for name in SERVICES:
        if not is_one_shot(name) and name not in NO_PROBE:
            assert has_healthcheck(name), name
    assert set(NO_PROBE) <= set(SERVICES)


def test_services_wait_for_health_or_completion() -> None:
    for name, service in SERVICES.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: give each dependency a condition"
        for dependency, rule in depends_on.items():
            condition = rule["condition"]
            if is_one_shot(dependency):
                assert condition == "service_completed_successfully", (name, dependency)
            else:
                assert condition == "service_healthy", (name, dependency)
                assert has_healthcheck(dependency), (name, dependency)
            profiles = SERVICES[dependency].get("profiles", [])
            assert not profiles or set(profiles) <= set(service.get("profiles", [])), (
                f"{name} would not start without the {profiles} profile"
            )
    for name in ("api", "worker"):
        assert {"migrate", "temporal-setup"} <= set(SERVICES[name]["depends_on"]), name


def test_the_image_probe_finds_each_role_port() -> None:
    assert "COPY deploy/healthcheck.py /opt/durapay/healthcheck.py" in DOCKERFILE
    assert '"/opt/durapay/healthcheck.py"' in DOCKERFILE
    probe = load_probe()
    command = {name: [str(arg) for arg in SERVICES[name]["command"]] for name in OURS}

    def url(name: str) -> str | None:
        # Under `init: true` PID 1 is docker-init, followed by the command.
        argv = ["/sbin/docker-init", "--", *command[name]]
        return probe.probe_url(argv, environment(name))

    worker_port = environment("worker")["DURAPAY_WORKER_METRICS_PORT"]
    assert url("worker") == f"http://127.0.0.1:{worker_port}/livez"
    assert url("api") == "http://127.0.0.1:8000/livez"
    assert url("cardnet") == "http://127.0.0.1:8081/healthz"
    assert url("codec") == f"http://127.0.0.1:{environment('codec')['DURAPAY_CODEC_PORT']}/healthz"
    assert url("migrate") is None
    # …and those are the endpoints the code serves.
    assert '"/livez"' in (ROOT / "api" / "routers" / "health.py").read_text()
    assert "/livez" in (ROOT / "workers" / "health_server.py").read_text()
    assert '"/healthz"' in (ROOT / "cardnet" / "app.py").read_text()
    assert '"/healthz"' in (ROOT / "api" / "codec_app.py").read_text()


def test_the_image_is_multi_stage_non_root_and_probed() -> None:
    stages = re.split(r"^FROM\s", "\n".join(DOCKERFILE_LINES), flags=re.M)[1:]
    assert len(stages) >= 2, "a builder stage and a runtime stage"
    builder, runtime = stages[0], stages[-1]
    # Dependencies in their own layer, before any code is copied.
    assert builder.index("--require-hashes -r requirements.lock") < builder.index("COPY api")
    assert "COPY --from=builder /opt/venv /opt/venv" in runtime
    assert "requirements.lock" not in runtime and "COPY api" not in runtime
    user = re.findall(r"^USER\s+(\S+)", runtime, re.M)
    assert user and user[-1].split(":")[0] not in ("0", "root"), user
    assert re.search(r"^HEALTHCHECK\s.*\sCMD\s", runtime, re.M)
    # The build context holds only what the Dockerfile copies: no .env, state, tests or .git.
    ignore = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert ignore[0] == "*"
    included = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = {
        source.rstrip("/")
        for line in DOCKERFILE_LINES
        if line.startswith("COPY ") and "--from" not in line
        for source in line.split()[1:-1]
    }
    assert copied == included, (copied, included)


# ------------------------------------------------------------------ observability profiles


def test_prometheus_scrapes_every_scaled_container() -> None:
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    worker = jobs["durapay-worker"]["dns_sd_configs"][0]
    assert worker["names"] == ["worker"] and worker["type"] == "A"
    assert worker["port"] == int(environment("worker")["DURAPAY_WORKER_METRICS_PORT"])
    assert environment("worker")["DURAPAY_WORKER_METRICS_HOST"] == "0.0.0.0"
    api = jobs["durapay-api"]
    assert api["dns_sd_configs"][0]["names"] == ["api"] and api["dns_sd_configs"][0]["port"] == 8000
    assert api["authorization"]["credentials_file"] == "/run/secrets/admin_token"
    assert "admin_token" in SERVICES["prometheus"]["secrets"]
    assert COMPOSE["secrets"]["admin_token"] == {"environment": "DURAPAY_ADMIN_TOKEN"}
    temporal_metrics = environment("temporal")["PROMETHEUS_ENDPOINT"].rsplit(":", 1)[1]
    assert jobs["temporal-server"]["static_configs"][0]["targets"] == [
        f"temporal:{temporal_metrics}"
    ]
    assert SERVICES["prometheus"]["profiles"] == ["metrics"]


def test_the_event_stream_reads_a_logical_slot_into_kafka() -> None:
    """Profile `kafka`: the consumer runs `durapay events stream` into the compose Kafka, on a
    Postgres whose WAL carries logical decoding, as a role allowed to replicate."""
    command = SERVICES["postgresql"]["command"]
    assert "wal_level=logical" in command and any(
        c.startswith("max_slot_wal_keep_size=") for c in command
    )
    assert "LOGIN REPLICATION" in (ROOT / "deploy/postgres-init/10-roles.sh").read_text()
    events, kafka = SERVICES["events"], SERVICES["kafka"]
    assert events["profiles"] == kafka["profiles"] == ["kafka"]
    assert events["command"][:3] == ["durapay", "events", "stream"]
    assert "deploy" not in events or events["deploy"].get("replicas", 1) == 1
    env = environment("events")
    assert env["DURAPAY_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert env["DURAPAY_ENV"] == "production"
    assert kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    assert events["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert not kafka.get("ports")


def test_traces_go_through_the_collector_to_jaeger() -> None:
    collector = yaml.safe_load((DEPLOY / "otel-collector" / "config.yaml").read_text())
    http = collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    assert http == "0.0.0.0:4318"  # the collector's default is localhost: unreachable
    assert "http://otel-collector:4318" in RAW
    exporters = collector["service"]["pipelines"]["traces"]["exporters"]
    assert [collector["exporters"][e]["endpoint"] for e in exporters] == ["jaeger:4317"]
    assert SERVICES["otel-collector"]["profiles"] == SERVICES["jaeger"]["profiles"] == ["tracing"]
    for name in PRODUCTION:  # off unless an endpoint is given; http/protobuf when on
        env = environment(name)
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == ""
        assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"


# ------------------------------------------------------------------ the programs, for real


class EchoHandler(threading.Thread):
    """An upstream that answers with the request head it received, byte for byte."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]

    def run(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            with connection:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = connection.recv(4096)
                    if not chunk:
                        break
                    head += chunk
                body = head.split(b"\r\n\r\n")[0]
                connection.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n"
                    b"Connection: close\r\n\r\n%s" % (len(body), body)
                )

    def close(self) -> None:
        # shutdown() wakes the accept() blocked in run(); close() alone leaves the listening
        # socket alive in the kernel until that accept returns (Linux).
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        self.join(timeout=5)


def http(method: str, url: str, headers: Mapping[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(
        url, method=method, headers=dict(headers or {}), data=b"{}" if method == "POST" else None
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.mark.processes
@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed here")
def test_the_proxy_passes_requests_unchanged_and_guards_the_codec(tmp_path: Path) -> None:
    upstream = EchoHandler()
    upstream.start()
    api, codec, health = free_port(), free_port(), free_port()
    consoles = [(port, free_port()) for port in (8233, 16686, 9090)]  # UI, Jaeger, Prometheus
    # The template as the nginx image renders it, with local ports and upstreams.
    config = PROXY_TEMPLATE.read_text().replace("${DURAPAY_CODEC_TOKEN}", "codec-token")
    for old, new in (
        ("listen 8000;", f"listen 127.0.0.1:{api};"),
        ("listen 8089 default_server;", f"listen 127.0.0.1:{codec} default_server;"),
        ("listen 8089;", f"listen 127.0.0.1:{codec};"),
        *(
            (f"listen {console} default_server;", f"listen 127.0.0.1:{local} default_server;")
            for console, local in consoles
        ),
        *((f"listen {console};", f"listen 127.0.0.1:{local};") for console, local in consoles),
        ("listen 127.0.0.1:8080;", f"listen 127.0.0.1:{health};"),
        ("http://api:8000", f"http://127.0.0.1:{upstream.port}"),
        ("http://codec:8089", f"http://127.0.0.1:{upstream.port}"),
        # The slow-client bounds, shortened for the test.
        ("client_header_timeout 10s;", "client_header_timeout 1s;"),
        ("client_body_timeout 10s;", "client_body_timeout 1s;"),
    ):
        assert old in config, old
        config = config.replace(old, new)
    (tmp_path / "durapay.conf").write_text(config)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log; events {{}}\n"
        f"http {{ access_log off; client_body_temp_path {tmp_path}/body; "
        f"proxy_temp_path {tmp_path}/proxy; include {tmp_path}/durapay.conf; }}\n"
    )
    nginx = subprocess.Popen(
        ["nginx", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-g", "daemon off;"],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while not listening(health):
            assert nginx.poll() is None and time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.1)
        # The signature covers the raw path and query: they reach the API as sent.
        raw = "/payment-intents/pi_a%2Db/../x?limit=1%30"
        status, echoed = http("GET", f"http://127.0.0.1:{api}{raw}")
        assert status == 200 and echoed.startswith(f"GET {raw} HTTP/1.1\r\n"), echoed
        assert http("GET", f"http://127.0.0.1:{api}/metrics")[0] == 404
        # The codec: the proxy's token replaces the caller's; other host names are refused.
        status, echoed = http(
            "POST", f"http://127.0.0.1:{codec}/codec/decode", {"Authorization": "Bearer forged"}
        )
        assert status == 200 and "Authorization: Bearer codec-token\r\n" in echoed, echoed
        assert "forged" not in echoed
        assert http("POST", f"http://localhost:{codec}/codec/decode")[0] == 200
        assert (
            http(
                "POST",
                f"http://127.0.0.1:{codec}/codec/decode",
                {"Host": f"rebound.example:{codec}"},
            )[0]
            == 421
        )
        assert http("GET", f"http://127.0.0.1:{codec}/metrics")[0] == 404
        # A client stalling in its headers, or in its body, is cut off at the bound.
        for stalled in (
            b"GET /payment-intents HTTP/1.1\r\nHost: x\r\n",
            b"POST /payment-intents HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789",
        ):
            with socket.create_connection(("127.0.0.1", api), timeout=10) as sock:
                started = time.monotonic()
                sock.sendall(stalled)
                answer = b""
                while chunk := sock.recv(4096):  # until nginx closes the connection
                    answer += chunk
                assert 0.9 < time.monotonic() - started < 8, answer
                assert answer in (b"",) or answer.startswith(b"HTTP/1.1 408"), answer
        # No API container answering: the API's error shape, retryable.
        upstream.close()
        status, body = http("GET", f"http://127.0.0.1:{api}/payment-intents")
        assert status == 503 and '"code":"service_unavailable"' in body
    finally:
        upstream.close()
        stop_process(nginx)


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.integration
async def test_postgres_init_gives_each_tenant_its_own_databases() -> None:
    state = private_dir("pginit") / "home"  # as `durapay dev` lays out its state dir
    state.mkdir(mode=0o700)
    data, password_file = postgres_data_dir(state), state / "postgres-password"
    port = free_port()
    server = subprocess.Popen(
        postgres_argv(data, port, password_file=password_file),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        **run_as(data),
    )
    # Quotes, a space and a `$`: psql's :'name' quoting must carry them intact.
    passwords = {"postgres": "", "temporal": "t'emporal $pw", "durapay": os.urandom(16).hex()}

    async def connect(user: str, database: str) -> Any:
        return await asyncpg.connect(
            host="127.0.0.1",
            port=port,
            user=user,
            password=passwords[user],
            database=database,
            timeout=10,
        )

    try:
        wait_until_postgres_accepts(server, port)
        passwords["postgres"] = password_file.read_text().strip()
        env = {
            **os.environ,
            "PATH": f"{postgres_bin_dir()}:{os.environ['PATH']}",
            "PGHOST": "127.0.0.1",
            "PGPORT": str(port),
            "PGPASSWORD": passwords["postgres"],
            "POSTGRES_USER": "postgres",
            "POSTGRES_TEMPORAL_PASSWORD": passwords["temporal"],
            "POSTGRES_DURAPAY_PASSWORD": passwords["durapay"],
        }
        init = subprocess.run(
            ["sh", str(DEPLOY / "postgres-init" / "10-roles.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert init.returncode == 0, init.stderr

        for user, databases in (
            ("temporal", ("temporal", "temporal_visibility")),
            ("durapay", ("durapay",)),
        ):
            for database in databases:  # each owns its databases: it can create tables there
                connection = await connect(user, database)
                await connection.execute("CREATE TABLE t (x int); DROP TABLE t;")
                await connection.close()
        for user, database in (
            ("durapay", "temporal"),
            ("durapay", "temporal_visibility"),
            ("temporal", "durapay"),
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await connect(user, database)
        connection = await connect("postgres", "temporal_visibility")
        try:
            assert (
                await connection.fetchval(
                    "SELECT count(*) FROM pg_extension WHERE extname = 'btree_gin'"
                )
                == 1
            )
            verifiers = await connection.fetch(
                "SELECT rolpassword FROM pg_authid WHERE rolname IN ('temporal', 'durapay')"
            )
        finally:
            await connection.close()
        assert len(verifiers) == 2
        assert all(row["rolpassword"].startswith("SCRAM-SHA-256$") for row in verifiers)

        # Run again (a volume that is not empty never runs it, but a mistake must not pass
        # silently): the roles exist, so it fails loudly.
        again = subprocess.run(
            ["sh", str(DEPLOY / "postgres-init" / "10-roles.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert again.returncode != 0 and "already exists" in again.stderr
    finally:
        stop_process(server)
