"""Entry point: python -m cardnet [--host H] [--port N] [--data-dir DIR] [--hold-seconds S]."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import uvicorn

from cardnet.app import create_app
from cardnet.settings import Settings, default_data_dir, default_port, parse_hold_seconds

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
        type=parse_hold_seconds,
        default=None,
        help="how long held operations wait; default: $DURAPAY_CARDNET_HOLD_SECONDS or 15",
    )
    parser.add_argument("--log-level", default="info")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = Settings.from_env()
    if args.hold_seconds is not None:
        settings = replace(settings, hold_seconds=args.hold_seconds)
    data_dir = args.data_dir or default_data_dir()
    port = args.port if args.port is not None else default_port()
    app = create_app(data_dir, settings)
    uvicorn.run(
        app,
        host=args.host,
        port=port,
        log_level=args.log_level,
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_SECONDS,
    )


if __name__ == "__main__":
    main()
