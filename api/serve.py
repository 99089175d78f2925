"""`python -m api.serve --host H --port P`: the merchant API under uvicorn, with the connection
bounds from settings. Every launcher runs this (`durapay dev`, the image, the compose file),
so a bound set in the environment holds wherever the API runs.

- `DURAPAY_API_MAX_CONNECTIONS`: uvicorn's `limit_concurrency`. Past that many open
  connections (and requests) in this process, a new request answers 503 at once instead of
  queueing behind a flood.
- Idle keep-alive connections close after `KEEP_ALIVE_SECONDS` (uvicorn's default, kept).
- The request body: `DURAPAY_REQUEST_BODY_TIMEOUT_SECONDS` (api/body_limit.py, 408).
- The request line and headers: uvicorn bounds their size, not their time; a
  client trickling headers is cut off by the proxy in front (nginx `client_header_timeout`,
  deploy/proxy), see docs/operations.md.
"""

from __future__ import annotations

import argparse

import uvicorn
from starlette.types import ASGIApp

from core.settings import Settings, get_settings

KEEP_ALIVE_SECONDS = 5


def uvicorn_config(
    settings: Settings, *, host: str, port: int, app: ASGIApp | str = "api.main:create_app"
) -> uvicorn.Config:
    """`app`: the factory's import path (it reads the same settings), or a built app."""
    return uvicorn.Config(
        app,
        factory=isinstance(app, str),
        host=host,
        port=port,
        access_log=False,  # api/request_log.py writes one line per request
        log_config=None,  # uvicorn's lines: the JSON handler create_app sets up
        limit_concurrency=settings.api_max_connections,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )


def main(argv: list[str] | None = None) -> None:
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="python -m api.serve", description=__doc__)
    parser.add_argument("--host", default=settings.api_host)
    parser.add_argument("--port", type=int, default=settings.api_port)
    args = parser.parse_args(argv)
    uvicorn.Server(uvicorn_config(settings, host=args.host, port=args.port)).run()


if __name__ == "__main__":
    main()
