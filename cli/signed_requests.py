"""`durapay request` and `durapay sign`: a merchant's signed requests, from the command line.

    durapay request METHOD PATH [BODY]        send it (signed and retried by the SDK), print
                                              the status and the answer
    durapay sign METHOD PATH [BODY] [--curl]  print the authentication headers for it (or a
                                              curl command), to send with any HTTP client

Both sign as the merchant cli/merchant_keys.py picks (flags, environment, profile, or the local
demo merchant). `sign` uses the SDK's own signer (client/signing.py) over exactly the method,
path, query and body bytes given; the headers hold for DURAPAY_SIGNATURE_TOLERANCE_SECONDS
(300 s) and for one request only (the API refuses a nonce twice).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any

import httpx

from cli.failures import API_CONNECTION_ERRORS, ApiUnreachable, Refused
from cli.merchant_keys import MerchantKeys, SettingsLoader, add_key_arguments, resolve_keys
from client import Durapay, sign
from client.errors import error_from_response

AUTH_HEADERS = ("Authorization", "X-Timestamp", "X-Nonce", "X-Signature")
BODY_EXAMPLE = """'{"amountInCents": 1000, "currency": "eur"}'"""


class MalformedBody(Refused):
    """A BODY argument that is not JSON."""


def add_parsers(commands: Any) -> None:
    request = commands.add_parser(
        "request",
        help="send a signed request as a merchant",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_request_arguments(request)
    request.add_argument("--idempotency-key")
    signer = commands.add_parser(
        "sign",
        help="print the signed headers (or a curl command) for one request",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_request_arguments(signer)
    signer.add_argument("--idempotency-key", help="also print this Idempotency-Key header")
    signer.add_argument(
        "--curl",
        action="store_true",
        help="print a whole curl command instead of the headers alone",
    )


def _add_request_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("method", help="GET, POST, DELETE…")
    parser.add_argument("path", help='the path and query, e.g. "/payment-intents?limit=5"')
    parser.add_argument("body", nargs="?", help=f"a JSON body, e.g. {BODY_EXAMPLE}")
    add_key_arguments(parser)


def take_late_body(
    parser: argparse.ArgumentParser, args: argparse.Namespace, unrecognized: list[str]
) -> argparse.Namespace:
    """The body of `request`/`sign` given after an option (`request POST /x --profile acme
    '{…}'`): argparse fills an optional positional only from the first run of positionals, so
    it comes back unrecognized. Anything else unrecognized is the usual usage error."""
    if (
        len(unrecognized) == 1
        and getattr(args, "body", False) is None
        and not unrecognized[0].startswith("-")
    ):
        args.body = unrecognized[0]
    elif unrecognized:
        parser.error(f"unrecognized arguments: {' '.join(unrecognized)}")
    return args


def parse_body(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise MalformedBody(
            f"the body is not valid JSON ({error.msg} at line {error.lineno} "
            f"column {error.colno}): give one JSON argument in single quotes, "
            f"e.g. {BODY_EXAMPLE}"
        ) from error


async def run_request(args: argparse.Namespace, load_settings: SettingsLoader) -> int:
    body = parse_body(args.body)  # before any key is looked up or anything is sent
    keys = await resolve_keys(args, load_settings)
    async with Durapay(keys.api_url, keys.public_key, keys.secret_key) as durapay:
        # Signed and retried by the SDK (a POST keeps one Idempotency-Key across its retries),
        # but answered as it came: this command shows any status and body.
        try:
            response = await durapay.request(
                args.method.upper(), args.path, body, idempotency_key=args.idempotency_key
            )
        except API_CONNECTION_ERRORS as error:
            raise ApiUnreachable(keys.api_url, error) from error
    print(f"HTTP {response.status_code}")
    try:
        print(json.dumps(response.json(), indent=2))
    except ValueError:  # not the API's JSON: a proxy's page, say
        print(response.text)
    if response.status_code >= 400:
        print(f"durapay: {error_from_response(response)}", file=sys.stderr)
        return 1
    return 0


async def run_sign(args: argparse.Namespace, load_settings: SettingsLoader) -> int:
    parse_body(args.body)  # refuse what the API would refuse, before signing it
    keys = await resolve_keys(args, load_settings)
    request = signed_request(
        keys, args.method, args.path, args.body, idempotency_key=args.idempotency_key
    )
    headers = [
        name
        for name in (*AUTH_HEADERS, "Content-Type", "Idempotency-Key")
        if name in request.headers
    ]
    flags = [f"-H {shlex.quote(f'{name}: {request.headers[name]}')}" for name in headers]
    if not args.curl:
        print("\n".join(flags))
        return 0
    # One option per line; the body goes as its exact bytes (--data-raw reads no @file).
    lines = [f"curl -sS -X {request.method} {shlex.quote(str(request.url))}", *flags]
    if request.content:
        lines.append(f"--data-raw {shlex.quote(request.content.decode())}")
    print(" \\\n  ".join(lines))
    return 0


def signed_request(
    keys: MerchantKeys,
    method: str,
    path: str,
    body: str | None,
    *,
    idempotency_key: str | None = None,
) -> httpx.Request:
    """The request as httpx would send it to the merchant's API (URL escaped as on the wire),
    signed by the SDK's `sign` over the body's bytes exactly as given."""
    content = body.encode() if body else b""
    headers = {"Content-Type": "application/json"} if content else {}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    with httpx.Client(base_url=keys.api_url) as http:
        request = http.build_request(method.upper(), path, content=content, headers=headers)
    return sign(request, public_key=keys.public_key, secret_key=keys.secret_key)
