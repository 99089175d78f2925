"""The image's HEALTHCHECK: GET the liveness endpoint of whatever this container runs.

One image plays four roles, and the command a container runs decides which, so the probe reads
PID 1's command line (docker-init's under compose's `init: true`, which ends with the same
command) and picks the endpoint from it:

- `python -m api.serve … --port N` (the API; or `uvicorn api.main:create_app … --port N`):
  `/livez` on N;
- `python -m cardnet --port N` (the simulator): `/healthz` on N (else DURAPAY_CARDNET_PORT, 8081);
- `python -m workers.main` (a worker): `/livez` on DURAPAY_WORKER_METRICS_PORT +
  DURAPAY_WORKER_INDEX (9464 + 0), its metrics port;
- `python -m api.codec_app` (the codec listener): `/healthz` on DURAPAY_CODEC_PORT (8089).

Anything else (a one-shot `durapay migrate`, a `durapay keys status` run) has no listener and
counts as healthy. Liveness, not readiness: Docker restarts nothing on a failed check, but
`depends_on: service_healthy` waits on it, and a process that answers 503 while Temporal is
down is alive and must stay in the proxy's rotation.

Standard library only, no Durapay import: it runs every few seconds in every container.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

TIMEOUT_SECONDS = 2.0


def probe_url(argv: Sequence[str], environ: Mapping[str, str]) -> str | None:
    """The URL to GET for this command line, or None when it serves nothing."""
    if _runs_module(argv, "workers.main"):
        port = int(environ.get("DURAPAY_WORKER_METRICS_PORT", "9464")) + int(
            environ.get("DURAPAY_WORKER_INDEX", "0")
        )
        return f"http://127.0.0.1:{port}/livez"
    if _runs_module(argv, "api.codec_app"):
        return f"http://127.0.0.1:{environ.get('DURAPAY_CODEC_PORT', '8089')}/healthz"
    if _runs_module(argv, "cardnet"):
        port = _option(argv, "--port") or environ.get("DURAPAY_CARDNET_PORT", "8081")
        return f"http://127.0.0.1:{port}/healthz"
    if _runs_module(argv, "api.serve") or any(arg.startswith("api.main:") for arg in argv):
        return f"http://127.0.0.1:{_option(argv, '--port') or '8000'}/livez"
    return None


def _runs_module(argv: Sequence[str], module: str) -> bool:
    return any(arg == "-m" and value == module for arg, value in zip(argv, argv[1:], strict=False))


def _option(argv: Sequence[str], name: str) -> str | None:
    for index, arg in enumerate(argv):
        if arg == name and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def main() -> int:
    argv = Path("/proc/1/cmdline").read_bytes().decode().split("\0")
    url = probe_url(argv, os.environ)
    if url is None:
        return 0
    # No proxy, whatever HTTP_PROXY the container inherits: the target is this container.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=TIMEOUT_SECONDS) as answer:
            return 0 if answer.status == 200 else 1
    except OSError as error:  # refused, timed out, or an HTTP error status
        print(f"{url}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
