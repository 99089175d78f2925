"""Entry point: python -m cardnet [--host H] [--port N] [--data-dir DIR] [--hold-seconds S] ..."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import uvicorn

from cardnet.app import create_app
from cardnet.settings import Settings, default_data_dir, default_port, parse_seconds
from core.logs import configure_logging
from core.telemetry import instrument_fastapi, setup_tracing

# Held requests would otherwise keep a Ctrl-C waiting for a whole hold; they are persisted
# and finish on the next start, so a short graceful period loses nothing.
_GRACEFUL_SHUTDOWN_SECONDS = 3


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m cardnet", description="Run the Durapay simulated card network."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port", type=int, default=None, help="default: $DURAPAY_CARDNET_PORT or 8081"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="default: $DURAPAY_CARDNET_DATA_DIR, $DURAPAY_HOME/cardnet or .durapay/cardnet",
    )
    parser.add_argument(
        "--hold-seconds",
        type=parse_seconds,
        default=None,
        help="how long held operations wait; default: $DURAPAY_CARDNET_HOLD_SECONDS or 15",
    )
    parser.add_argument(
        "--status-lag-seconds",
        type=parse_seconds,
        default=None,
        help="how long card 4000000000001091 is not_found to status queries after its commit; "
        "default: $DURAPAY_CARDNET_STATUS_LAG_SECONDS or 30",
    )
    parser.add_argument(
        "--trickle-seconds",
        type=parse_seconds,
        default=None,
        help="the pause between the pieces of a trickled answer; "
        "default: $DURAPAY_CARDNET_TRICKLE_SECONDS or the hold duration",
    )
    parser.add_argument("--log-level", default="info")
    return parser.parse_args(argv)


def settings_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> Settings:
    """The environment's settings, with the flags given on the command line winning."""
    settings = Settings.from_env(environ)
    overrides = {
        name: getattr(args, name)
        for name in ("hold_seconds", "status_lag_seconds", "trickle_seconds")
        if getattr(args, name) is not None
    }
    return replace(settings, **overrides)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse_args(argv)
    configure_logging("cardnet", args.log_level.upper())
    setup_tracing("durapay-cardnet")  # nothing unless an OTLP endpoint is set
    settings = settings_from_args(args)
    data_dir = args.data_dir or default_data_dir()
    port = args.port if args.port is not None else default_port()
    app = create_app(data_dir, settings)
    instrument_fastapi(app)
    uvicorn.run(
        app,
        host=args.host,
        port=port,
        log_level=args.log_level,
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_SECONDS,
        log_config=None,  # uvicorn's lines go through configure_logging's JSON handler
    )


if __name__ == "__main__":
    main()
