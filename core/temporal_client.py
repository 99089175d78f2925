"""One way to connect to Temporal, so every process (API, workers, CLI) authenticates to it and
encrypts payloads the same way.

Temporal trusts whoever reaches its frontend, so in production that connection is
authenticated (core/settings.py refuses to start otherwise): a client certificate and key for
mTLS (`DURAPAY_TEMPORAL_TLS_CERT`, `DURAPAY_TEMPORAL_TLS_KEY`, with the server's CA in
`DURAPAY_TEMPORAL_TLS_CA` when it is private), or an API key (`DURAPAY_TEMPORAL_API_KEY`,
Temporal Cloud), in the namespace `DURAPAY_TEMPORAL_NAMESPACE`. Nothing else calls
`Client.connect` (tests/unit/test_temporal_connections.py).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)
from temporalio.service import TLSConfig

from core.codec import data_converter
from core.settings import Settings
from core.telemetry import temporal_interceptors

_PEM_START = b"-----BEGIN"


class TemporalConfigError(ValueError):
    """The Temporal connection settings contradict each other or name unreadable files."""


def temporal_connect_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of `Client.connect` (address, namespace, TLS, API key), from settings
    alone: no file other than the PEMs they name is read, nothing is connected."""
    ca = _pem(settings.temporal_tls_ca, "DURAPAY_TEMPORAL_TLS_CA")
    cert = _pem(settings.temporal_tls_cert, "DURAPAY_TEMPORAL_TLS_CERT")
    key = _pem(settings.temporal_tls_key, "DURAPAY_TEMPORAL_TLS_KEY")
    if (cert is None) != (key is None):
        raise TemporalConfigError(
            "mTLS needs both DURAPAY_TEMPORAL_TLS_CERT and DURAPAY_TEMPORAL_TLS_KEY; only "
            + ("the certificate" if cert is not None else "the key")
            + " is set"
        )
    api_key = settings.temporal_api_key or None
    tls: bool | TLSConfig
    if ca is not None or cert is not None:
        tls = TLSConfig(server_root_ca_cert=ca, client_cert=cert, client_private_key=key)
    else:
        # An API key travels only over TLS (the system's roots, as Temporal Cloud's are).
        tls = api_key is not None
    return {
        "target_host": settings.effective_temporal_address,
        "namespace": settings.temporal_namespace,
        "tls": tls,
        "api_key": api_key,
    }


# The SDK's Rust core logs (connection retries, worker warnings) through Python logging, so
# they become JSON lines like every other (core/logs.py); by default it prints plain text
# straight to stderr, which broke "one JSON object per line" after a Temporal outage.
CORE_TELEMETRY = TelemetryConfig(
    logging=LoggingConfig(
        filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
        forwarding=LogForwardingConfig(logger=logging.getLogger("temporalio.core")),
    )
)
_runtime: Runtime | None = None


def temporal_runtime() -> Runtime:
    """One runtime per process (the SDK's advice), created on first use."""
    global _runtime
    if _runtime is None:
        _runtime = Runtime(telemetry=CORE_TELEMETRY)
    return _runtime


def start_runtime_with_metrics(metrics: PrometheusConfig) -> Runtime:
    """Workers only: create this process's runtime exporting the SDK's metrics (workers/
    health_server.py serves them with ours). Before any connection, since a runtime's
    telemetry is fixed when it is created; ValueError if the address cannot be bound."""
    global _runtime
    if _runtime is not None:
        raise RuntimeError("the Temporal runtime exists already: start its metrics first")
    _runtime = Runtime(telemetry=dataclasses.replace(CORE_TELEMETRY, metrics=metrics))
    return _runtime


async def connect_temporal(settings: Settings) -> Client:
    # The whole key ring: a run opened before a key rotation carries payloads under the key
    # retired since, and this client (a worker replaying it, the API) must still read them.
    return await Client.connect(
        **temporal_connect_options(settings),
        data_converter=data_converter(settings.resolved_key_ring()),
        runtime=temporal_runtime(),
        # Tracing's, when on; a Worker takes its client's interceptors.
        interceptors=temporal_interceptors(),
    )


def _pem(value: str | None, variable: str) -> bytes | None:
    """A PEM given inline, or the path of a file holding it. Errors name the variable, never
    the value (it may be a private key)."""
    if value is None or not value.strip():
        return None
    if value.lstrip().startswith(_PEM_START.decode()):
        text = value.strip()
        if "\n" not in text:  # flattened into one line by a secret store: `\n` escapes
            text = text.replace("\\n", "\n")
        return text.encode() + b"\n"
    try:
        content = Path(value).expanduser().read_bytes()
    except OSError as error:
        raise TemporalConfigError(
            f"{variable}: cannot read the PEM file it names ({error.strerror or error})"
        ) from None
    if _PEM_START not in content:
        raise TemporalConfigError(f"{variable}: the file it names is not PEM")
    return content
