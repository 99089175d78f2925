"""Durapay's configuration: one settings object read from the environment.

Every process (launcher, API, workers, CLI) reads the same names, so an operator configures the
stack once. `DATABASE_URL` and `TEMPORAL_ADDRESS` carry no prefix because they are the names every
hosting platform already uses; when set, the launcher uses those external services instead of
starting embedded ones.
"""

from __future__ import annotations

import base64
import itertools
import math
import secrets
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Literal, Self
from urllib.parse import quote

from pydantic import AliasChoices, Field, PrivateAttr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.keyring import (
    MASTER_KEY_FILE,
    KeyFiles,
    KeyRing,
    decode_key,
    decode_keys,
    encode_key,
    new_master_key,
)
from core.secret_files import read_or_create_secret, read_secret
from core.vault_epochs import CARD_NUMBER_RETENTION, EpochKeys

# Under the state dir: the embedded PostgreSQL superuser's password, written by `durapay dev`
# when it creates (or upgrades) the cluster, read by every process that connects to it.
LOCAL_POSTGRES_PASSWORD_FILE = "postgres-password"
# Under the state dir unless DURAPAY_VAULT_KEY_DIR says otherwise: the card vault's epoch keys.
VAULT_KEY_DIR = "vault-epochs"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DURAPAY_", extra="ignore")
    # The generated secrets, read from the state dir once (see the resolved_* methods).
    _admin_token_from_file: str | None = PrivateAttr(default=None)
    _master_key_bytes: bytes | None = PrivateAttr(default=None)
    _key_ring: KeyRing | None = PrivateAttr(default=None)
    _key_ring_config: tuple[object, ...] = PrivateAttr(default=())
    _epoch_keys: EpochKeys | None = PrivateAttr(default=None)

    home: Path = Path(".durapay")
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    cardnet_port: int = 8081
    cardnet_url: str | None = None
    temporal_port: int = 7233
    temporal_ui_port: int = 8233
    postgres_port: int = 55432
    # The embedded Postgres loads pg_stat_statements and counts every statement (nested ones,
    # such as foreign-key checks, and BEGIN/COMMIT included), so `make bench` can say how many
    # statements an operation costs. Off by default: the counting costs Postgres CPU (about
    # 0.6 ms per create + charge, ~5 % of its share, measured).
    postgres_track_statements: bool = False
    admin_token: str | None = None
    master_key: str | None = None
    # Master keys that no longer encrypt anything but still decrypt (comma-separated base64):
    # rows not yet re-encrypted by `durapay keys rotate --reencrypt-only`, and the Temporal
    # histories of runs still open. Without DURAPAY_MASTER_KEY, `durapay keys rotate` keeps
    # the local stack's in `$DURAPAY_HOME/retired-master-keys` instead.
    retired_master_keys: str = ""
    # The card vault (core/vault_epochs.py): card numbers are encrypted under the key of their
    # epoch too, which is destroyed this long after the epoch ends plus a day (the retention of
    # a card number); the keys live in this directory, which the API and every worker must
    # share (one volume across containers): docs/operations.md, "Card numbers".
    vault_epoch_seconds: int = Field(default=3600, gt=0)
    vault_epoch_key_margin_seconds: int = Field(default=3600, ge=0)
    vault_key_dir: Path | None = None
    workers: int = 1
    # Production workers run workflow code outside Temporal's sandbox: the sandbox re-imports
    # and recompiles the workflow's modules for every run, which `make bench` measured as the
    # largest single cost of a charge in the worker. Determinism is still checked under the
    # sandbox by every workflow and replay test; set true to run it in production too.
    workflow_sandbox: bool = False
    # What one worker process takes on at once; the rest waits in Temporal's task queue, where
    # any worker can pick it up, instead of in this process's event loop and connection pool.
    # An activity mostly waits (the card network holds a charge up to about 2 s; a record takes
    # a pooled connection for a few ms), so by Little's law ~40 charges/s per worker with a
    # network call in flight each for up to 2 s is ~80 activities: 100 leaves headroom without
    # letting a burst pile up thousands of coroutines in one process.
    worker_max_concurrent_activities: int = Field(default=100, ge=1)
    # Workflow tasks are short bursts of CPU on one core: more at once only queue in-process.
    worker_max_concurrent_workflow_tasks: int = Field(default=100, ge=2)
    task_queue: str = "durapay-payments"
    temporal_namespace: str = "default"
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "DURAPAY_DATABASE_URL")
    )
    temporal_address: str | None = Field(
        default=None, validation_alias=AliasChoices("TEMPORAL_ADDRESS", "DURAPAY_TEMPORAL_ADDRESS")
    )
    # The adapter waits this long for the network; past it the outcome is unknown, never a guess.
    network_timeout_seconds: float = 5.0
    # How long a charge request waits for the network's first answer before answering 202.
    charge_wait_seconds: float = 10.0
    # Signed requests older or newer than this are refused; nonces are kept this long.
    signature_tolerance_seconds: int = 300
    # Reconciliation of unknown outcomes: status queries after 2 s, 4 s, 8 s … capped at the
    # max delay; past the horizon the intent is flagged for manual review (and still polled).
    reconcile_first_delay_seconds: float = 2.0
    reconcile_max_delay_seconds: float = 300.0
    reconcile_horizon_seconds: float = 86_400.0
    # A status query's `not_found` is believed ("never reached the network") only for an attempt
    # at least this old: a network's status index may lag its authorizations. Keep it above the
    # network's longest hold plus its status lag (the simulator: 15 s + 30 s).
    reconcile_not_found_safe_age_seconds: float = 900.0
    # Whether the card network takes reversals (cardnet does). With them, a charge whose answer
    # was lost and that the network keeps answering `not_found` to is reversed by reference
    # once the attempt is this old, and settles `failed` at once; without them, only the
    # not-found safe age settles it. Keep it above the network's status lag plus its holds.
    network_reversals: bool = True
    reconcile_reversal_after_seconds: float = 60.0
    # Manual capture: an authorization not captured within this period is voided (`expired`).
    authorization_expiry_seconds: float = 604_800.0
    # A succeeded payment takes refunds this long (180 days); then its workflow ends.
    refund_window_seconds: float = 15_552_000.0
    # The scheduled sweep that compares our transactions with the network's ledger.
    reconcile_sweep_interval_seconds: int = 900
    reconcile_sweep_window_seconds: int = 172_800
    # A pending/timeout transaction older than this is a `stuck_unsettled` discrepancy.
    reconcile_stuck_after_seconds: int = 3600
    # How often the audit chains' heads are checkpointed (durapay-audit-checkpoint schedule).
    audit_checkpoint_interval_seconds: int = Field(default=300, gt=0)
    # How often expired nonces, Idempotency-Key records and card numbers are deleted
    # (durapay-housekeeping schedule): what waits for deletion is at most this much older.
    housekeeping_interval_seconds: int = Field(default=60, gt=0)
    # The event stream (`durapay events stream`): its replication slot, and Kafka when set.
    event_stream_slot: str = Field(default="durapay_events", pattern=r"^[a-z0-9_]{1,63}$")
    kafka_bootstrap: str | None = None
    kafka_topic: str = "durapay.events"
    # Webhooks: URLs resolving to loopback/private/link-local addresses (and plain http) are
    # refused unless this is set; the local dev stack sets it. Metadata addresses never pass.
    webhook_allow_private_networks: bool = False
    # Retry schedule: about 5 s, 25 s, 125 s … capped at 1 h between attempts, for 3 days.
    webhook_first_delay_seconds: float = 5.0
    webhook_backoff_factor: float = 5.0
    webhook_max_delay_seconds: float = 3600.0
    webhook_horizon_seconds: float = 259_200.0
    # The webhook reaper (durapay-webhook-reaper schedule) starts, this often, every delivery
    # left pending without an attempt for longer than the grace period (nobody started it).
    webhook_reaper_interval_seconds: int = Field(default=300, gt=0)
    webhook_reaper_grace_seconds: int = Field(default=300, gt=0)
    # A 2xx within this budget (connect, send, read) is success; anything slower is a failure.
    webhook_timeout_seconds: float = 10.0
    # After a secret rotation the old secret keeps signing this long unless the request says.
    webhook_rotation_grace_seconds: int = 86_400

    # --- Security. The names are binding: operators and the black-box suite use them.
    # `production` refuses generated secrets (DURAPAY_MASTER_KEY and DURAPAY_ADMIN_TOKEN must
    # be given) and turns the codec listener and the demo merchant off.
    env: Literal["development", "production"] = "development"
    # Connection to Temporal: TLS (CA to verify the server), mTLS (client cert + key), or an
    # API key (Temporal Cloud). Each TLS value is a path to a PEM file or the PEM text itself.
    temporal_tls_cert: str | None = None
    temporal_tls_key: str | None = None
    temporal_tls_ca: str | None = None
    temporal_api_key: str | None = None
    # Request bodies above this size are refused (413) before anything parses them.
    max_body_bytes: int = 65_536
    # The Web UI's codec endpoint runs on its own listener, never the merchant-facing one;
    # bound anywhere but loopback it requires `Authorization: Bearer <DURAPAY_CODEC_TOKEN>`.
    codec_host: str = "127.0.0.1"
    codec_port: int = 8089
    codec_token: str | None = None
    # Per-key token bucket: this many requests a second, bursts of twice that.
    rate_limit_per_second: float = 100.0
    max_webhook_endpoints: int = 16
    # Manual redeliveries (`POST /events/{id}/redeliver`) of one event to one endpoint.
    max_redeliveries: int = 10
    # Idempotency records (and their stored responses) are kept this long, as Stripe does.
    idempotency_retention_seconds: int = 86_400
    # Webhook URLs may use only these ports unless the operator allows others (`durapay dev`
    # allows any: its receivers listen on free ports).
    webhook_allowed_ports: str = "443"

    # Where a worker writes its pid once it polls its task queue (set by `durapay dev`).
    worker_ready_file: Path | None = None
    # Each worker serves /metrics, /livez and /readyz on host:port + its index (0 for the
    # first; `durapay dev` numbers its workers). Loopback by default: the metrics say how much
    # business flows; a container sets 0.0.0.0 and its network decides who scrapes.
    worker_metrics_host: str = "127.0.0.1"
    worker_metrics_port: int = Field(default=9464, ge=1, le=65535)
    worker_index: int = Field(default=0, ge=0)
    # Web UI origins, besides the local UI's, that may call the codec listener (api/codec_app.py)
    codec_ui_origins: str = ""  # comma-separated, e.g. https://temporal-ui.internal

    @model_validator(mode="after")
    def _production_secrets_are_given(self) -> Self:
        """Every process reads settings first, so this is where each refuses to start."""
        if self.env == "production":
            missing = [
                name
                for name, value in (
                    ("DURAPAY_MASTER_KEY", self.master_key),
                    ("DURAPAY_ADMIN_TOKEN", self.admin_token),
                )
                if not value
            ]
            if missing:
                raise ValueError(_production_refusal(missing))
        return self

    # --- The connection to Temporal must authenticate Durapay in production. Whoever reaches
    # Temporal's frontend can send Updates to payment workflows, so production refuses to start
    # unless the server can tell Durapay's processes from anyone else: a client certificate
    # and its key (mutual TLS), or a Temporal Cloud API key. A CA alone is refused: it lets
    # Durapay verify the server, but the server still accepts anyone. A certificate without its
    # key (or a key without its certificate) is a mistake in every environment.
    @model_validator(mode="after")
    def _temporal_connection_is_authenticated(self) -> Self:
        given = {
            name: bool(value and value.strip())
            for name, value in (
                ("DURAPAY_TEMPORAL_TLS_CERT", self.temporal_tls_cert),
                ("DURAPAY_TEMPORAL_TLS_KEY", self.temporal_tls_key),
                ("DURAPAY_TEMPORAL_TLS_CA", self.temporal_tls_ca),
                ("DURAPAY_TEMPORAL_API_KEY", self.temporal_api_key),
            )
        }
        cert, key = given["DURAPAY_TEMPORAL_TLS_CERT"], given["DURAPAY_TEMPORAL_TLS_KEY"]
        if cert != key:
            present, absent = (
                ("DURAPAY_TEMPORAL_TLS_CERT", "DURAPAY_TEMPORAL_TLS_KEY")
                if cert
                else ("DURAPAY_TEMPORAL_TLS_KEY", "DURAPAY_TEMPORAL_TLS_CERT")
            )
            raise ValueError(
                f"{present} is set but {absent} is not: mutual TLS to Temporal "
                "needs the client certificate and its private key"
            )
        if self.env == "production" and not (cert or given["DURAPAY_TEMPORAL_API_KEY"]):
            ca_only = (
                " (DURAPAY_TEMPORAL_TLS_CA alone verifies the server, but Temporal "
                "would still accept any client)"
                if given["DURAPAY_TEMPORAL_TLS_CA"]
                else ""
            )
            raise ValueError(
                "DURAPAY_ENV=production refuses an unauthenticated connection to Temporal"
                f"{ca_only}: set DURAPAY_TEMPORAL_TLS_CERT and DURAPAY_TEMPORAL_TLS_KEY "
                "(mutual TLS; with DURAPAY_TEMPORAL_TLS_CA for a private CA, e.g. one made by "
                "`durapay certs`) or DURAPAY_TEMPORAL_API_KEY (Temporal Cloud)"
            )
        return self

    # --- Abuse limits and production hardening (checked by `_production_is_hardened`).
    # Failed admin-token attempts a client address may make a minute (all addresses together:
    # ten times that) before admin requests answer 429; 0 turns the throttle off (not in
    # production). Per API process, in memory: api/admin_throttle.py.
    admin_rate_limit_per_minute: float = 10.0
    # A request body must arrive within this many seconds of the request's headers, or the API
    # answers 408 and closes the connection: a client trickling a body cannot hold a
    # connection (and its worker slot) open.
    request_body_timeout_seconds: float = 10.0
    # Connections (and requests) one API process serves at once; past it uvicorn answers 503
    # (its `limit_concurrency`). Set by `python -m api.serve`, which every launcher runs.
    api_max_connections: int = 1000
    # Admission control (api/in_flight.py, api/concurrency_limit.py): the requests one API
    # process answers at once, an adaptive limit between these two bounds (equal bounds: a
    # fixed one); past it a request is refused at once with 503 and Retry-After. The ceiling
    # stays below the connection limit, so this one answers.
    api_max_in_flight: int = 256
    # The floor: a slow machine (CPU shared with others) slows every answer alike, which the
    # limit cannot tell from queueing; a few concurrent clients must never be refused for it.
    # Answers admitted below it teach the calm latency, so it is about what one process
    # answers at calm latency (docs/operations.md); a higher floor is a standing queue.
    api_min_in_flight: int = 4
    # The limit shrinks while the median answer takes more than this many times its route's
    # calm latency, and may grow while it does not.
    api_latency_tolerance: float = 2.0
    # Production webhooks are https on 443: a DURAPAY_WEBHOOK_ALLOWED_PORTS with any other
    # port is refused at start unless this says the operator means it.
    webhook_allow_nonstandard_ports: bool = False

    @model_validator(mode="after")
    def _production_is_hardened(self) -> Self:
        """In production, refuse settings that would leave a door open: each refusal names
        the variable and how to fix it."""
        if self.env == "production":
            problems = _weak_production_settings(self)
            if problems:
                raise ValueError(
                    "DURAPAY_ENV=production refuses weak settings:\n- " + "\n- ".join(problems)
                )
        return self

    @property
    def codec_allowed_origins(self) -> frozenset[str]:
        """The Web UI origins that may call the codec endpoint (the local UI's, and any set)."""
        local = {f"http://{host}:{self.temporal_ui_port}" for host in ("127.0.0.1", "localhost")}
        configured = {o.strip() for o in self.codec_ui_origins.split(",") if o.strip()}
        return frozenset(local | configured)

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def effective_database_url(self) -> str:
        """SQLAlchemy URL (asyncpg driver) of the database every process uses."""
        if self.database_url:
            return to_asyncpg_url(self.database_url)
        return to_asyncpg_url(self.local_postgres_url())

    @property
    def local_postgres_password_file(self) -> Path:
        return self.home_dir / LOCAL_POSTGRES_PASSWORD_FILE

    def local_postgres_url(self, database: str = "durapay") -> str:
        """`postgresql://` URL of the embedded PostgreSQL that `durapay dev` runs, with its
        password (password auth: SCRAM, see cli/local_postgres.py)."""
        password = read_secret(self.local_postgres_password_file)
        if password is None:
            raise LocalPostgresPasswordMissing(
                f"no password for the local PostgreSQL at {self.local_postgres_password_file}: "
                "`durapay dev` writes it when it creates the database; is DURAPAY_HOME the "
                "state dir it uses? (Or set DATABASE_URL.)"
            )
        return (
            f"postgresql://postgres:{quote(password, safe='')}@127.0.0.1:"
            f"{self.postgres_port}/{database}"
        )

    @property
    def effective_temporal_address(self) -> str:
        return self.temporal_address or f"127.0.0.1:{self.temporal_port}"

    @property
    def effective_cardnet_url(self) -> str:
        return self.cardnet_url or f"http://127.0.0.1:{self.cardnet_port}"

    def resolved_admin_token(self) -> str:
        """The admin token from config, else (development only) the one generated once under
        the state dir."""
        if self.admin_token:
            return self.admin_token
        if self._admin_token_from_file is None:
            self._admin_token_from_file = self._generated_secret(
                "admin-token", "DURAPAY_ADMIN_TOKEN", lambda: secrets.token_urlsafe(32)
            )
        return self._admin_token_from_file

    def resolved_master_key(self) -> bytes:
        """The current master key as this process started with it (base64 in config or file).

        Resolved once per Settings: the API asks for it on every idempotent request. What
        encrypts at rest and in Temporal is the key ring (`resolved_key_ring`), whose subkeys
        derive from it."""
        if self._master_key_bytes is None:
            encoded = self.master_key or self._generated_secret(
                MASTER_KEY_FILE, "DURAPAY_MASTER_KEY", lambda: encode_key(new_master_key())
            )
            key = base64.b64decode(encoded)
            if len(key) != 32:
                raise ValueError("DURAPAY_MASTER_KEY must be 32 bytes, base64-encoded")
            self._master_key_bytes = key
        return self._master_key_bytes

    @property
    def master_key_from_files(self) -> bool:
        """Whether the master keys live in the state dir (no DURAPAY_MASTER_KEY), where
        `durapay keys rotate` can replace them."""
        return not self.master_key

    def resolved_key_ring(self) -> KeyRing:
        """The current master key and the retired ones, one ring per Settings (so per
        process). With the keys in the state dir, the ring follows a rotation made by
        `durapay keys rotate` while this process runs (see core/keyring.py)."""
        # A copy with other keys (`model_copy` keeps private attributes) gets a ring of its own.
        config = (self.master_key, self.retired_master_keys, self.home_dir)
        if self._key_ring is None or self._key_ring_config != config:
            if self.master_key_from_files:
                self._generated_secret(
                    MASTER_KEY_FILE, "DURAPAY_MASTER_KEY", lambda: encode_key(new_master_key())
                )
                ring = KeyRing.from_source(self.key_files())
            else:
                ring = KeyRing(
                    decode_key(self.master_key or "", where="DURAPAY_MASTER_KEY"),
                    decode_keys(self.retired_master_keys, where="DURAPAY_RETIRED_MASTER_KEYS"),
                )
            self._key_ring, self._key_ring_config = ring, config
        return self._key_ring

    def vault_epoch_keys(self) -> EpochKeys:
        """The card vault's epoch keys, one store per Settings (so per process)."""
        directory = (
            self.vault_key_dir.expanduser().resolve()
            if self.vault_key_dir
            else self.home_dir / VAULT_KEY_DIR
        )
        keys = self._epoch_keys
        if (
            keys is None
            or keys.directory != directory
            or keys.epoch_seconds != self.vault_epoch_seconds
        ):
            keys = self._epoch_keys = EpochKeys(
                directory,
                epoch_seconds=self.vault_epoch_seconds,
                keep_after_end=CARD_NUMBER_RETENTION
                + timedelta(seconds=self.vault_epoch_key_margin_seconds),
            )
        return keys

    def key_files(self) -> KeyFiles:
        """The local stack's key files (meaningful only with `master_key_from_files`)."""
        return KeyFiles(
            self.home_dir,
            configured_retired=decode_keys(
                self.retired_master_keys, where="DURAPAY_RETIRED_MASTER_KEYS"
            ),
        )

    def _generated_secret(self, file_name: str, variable: str, make: Callable[[], str]) -> str:
        """A secret generated once into the state dir (0600, in a 0700 dir). Never in
        production: the validator above refuses such settings, and this guards copies made
        without validation (`model_copy`)."""
        if self.env == "production":
            raise ValueError(_production_refusal([variable]))
        return read_or_create_secret(self.home_dir / file_name, make)


class LocalPostgresPasswordMissing(RuntimeError):
    """The state dir holds no password for the embedded PostgreSQL."""


def _production_refusal(missing: list[str]) -> str:
    return (
        f"DURAPAY_ENV=production: {' and '.join(missing)} must be set; generated secrets "
        "are for development only"
    )


# --- Production hardening: what `Settings._production_is_hardened` refuses.
MIN_ADMIN_TOKEN_CHARS = 32
# A token's characters carry at least this many bits by their own frequencies (Shannon): a
# random 32-character hex token has about 110, `abcd` repeated has 64.
MIN_ADMIN_TOKEN_BITS = 80
MIN_KEY_DISTINCT_BYTES = 16  # 32 random bytes have about 30 distinct values
PRODUCTION_WEBHOOK_PORTS = frozenset({443})


def _weak_production_settings(settings: Settings) -> list[str]:
    problems: list[str] = []
    token = settings.admin_token or ""
    if token and _is_weak_secret(
        token, min_length=MIN_ADMIN_TOKEN_CHARS, min_bits=MIN_ADMIN_TOKEN_BITS
    ):
        problems.append(
            f"DURAPAY_ADMIN_TOKEN is shorter than {MIN_ADMIN_TOKEN_CHARS} "
            "characters or guessable (repeated or patterned characters): set a "
            "random one, e.g. `openssl rand -hex 32`"
        )
    keys = [("DURAPAY_MASTER_KEY", settings.master_key or "")] + [
        (f"DURAPAY_RETIRED_MASTER_KEYS (key {n})", key)
        for n, key in enumerate(
            (k for k in settings.retired_master_keys.replace("\n", ",").split(",") if k.strip()), 1
        )
    ]
    for name, encoded in keys:
        try:
            key = base64.b64decode(encoded.strip(), validate=True)
        except ValueError:
            continue  # malformed: decoding it at start-up names the variable
        if key and _is_weak_key(key):
            problems.append(
                f"{name} is trivially weak (a repeated byte or a pattern): "
                "generate one with `openssl rand -base64 32`"
            )
    if settings.webhook_allow_private_networks:
        problems.append(
            "DURAPAY_WEBHOOK_ALLOW_PRIVATE_NETWORKS=true lets merchants aim "
            "webhooks at internal services: unset it (development only)"
        )
    if settings.rate_limit_per_second <= 0:
        problems.append(
            "DURAPAY_RATE_LIMIT_PER_SECOND must be above 0 (0 turns the per-key rate limit off)"
        )
    if settings.admin_rate_limit_per_minute <= 0:
        problems.append(
            "DURAPAY_ADMIN_RATE_LIMIT_PER_MINUTE must be above 0 (0 lets anyone "
            "guess the admin token at full speed)"
        )
    if settings.request_body_timeout_seconds <= 0:
        problems.append(
            "DURAPAY_REQUEST_BODY_TIMEOUT_SECONDS must be above 0 (a slow client "
            "would hold a connection forever)"
        )
    if settings.api_max_connections <= 0:
        problems.append("DURAPAY_API_MAX_CONNECTIONS must be above 0")
    if not 0 < settings.api_max_in_flight < max(settings.api_max_connections, 1):
        problems.append(
            "DURAPAY_API_MAX_IN_FLIGHT must be above 0 and below "
            "DURAPAY_API_MAX_CONNECTIONS (else the HTTP server's plain 503, without "
            "Retry-After, answers first)"
        )
    if not 0 < settings.api_min_in_flight <= settings.api_max_in_flight:
        problems.append(
            "DURAPAY_API_MIN_IN_FLIGHT must be above 0 and at most DURAPAY_API_MAX_IN_FLIGHT"
        )
    if settings.api_latency_tolerance <= 1:
        problems.append(
            "DURAPAY_API_LATENCY_TOLERANCE must be above 1 (at 1, every answer "
            "slower than calm would shrink the limit)"
        )
    if not settings.webhook_allow_nonstandard_ports and not _ports_within(
        settings.webhook_allowed_ports, PRODUCTION_WEBHOOK_PORTS
    ):
        problems.append(
            "DURAPAY_WEBHOOK_ALLOWED_PORTS allows ports other than 443: set it to "
            "443 (webhooks are https), or set "
            "DURAPAY_WEBHOOK_ALLOW_NONSTANDARD_PORTS=true if you mean it"
        )
    if not 0 < settings.signature_tolerance_seconds <= 300:
        problems.append(
            "DURAPAY_SIGNATURE_TOLERANCE_SECONDS must be 1 to 300 (a longer "
            "window keeps a captured request replayable longer)"
        )
    return problems


def _is_weak_secret(secret: str, *, min_length: int, min_bits: float) -> bool:
    if len(secret) < min_length or _is_patterned(secret.encode()):
        return True
    counts = Counter(secret)
    bits = -sum(n * math.log2(n / len(secret)) for n in counts.values())
    return bits < min_bits


def _is_weak_key(key: bytes) -> bool:
    return len(set(key)) < MIN_KEY_DISTINCT_BYTES or _is_patterned(key)


def _is_patterned(data: bytes) -> bool:
    """A repetition of a shorter block, or a run where most steps between neighbours are the
    same (`abcdef…`, 0x00 0x01 0x02 …): chance does neither to a random secret."""
    if any(
        data == data[:period] * (len(data) // period) + data[: len(data) % period]
        for period in range(1, len(data) // 2 + 1)
    ):
        return True
    steps = Counter((b - a) % 256 for a, b in itertools.pairwise(data))
    return bool(steps) and steps.most_common(1)[0][1] > (len(data) - 1) // 2


def _ports_within(configured: str, allowed: frozenset[int]) -> bool:
    entries = [p.strip() for p in configured.split(",") if p.strip()]
    return bool(entries) and all(p.isdigit() and int(p) in allowed for p in entries)


def to_asyncpg_url(url: str) -> str:
    """Accept the usual `postgres://` / `postgresql://` forms and pin the asyncpg driver."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ValueError("DATABASE_URL must be a postgresql:// URL")


@lru_cache
def get_settings() -> Settings:
    return Settings()
