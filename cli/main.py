"""The `durapay` command: run the local stack and talk to it.

    durapay dev                     start and supervise the whole local stack
    durapay migrate                 apply database migrations to DATABASE_URL
    durapay merchant create NAME [--save-profile P] [--api-url URL]
                                    operator: onboard a merchant (prints its keys once)
    durapay profile add NAME | list | remove NAME   merchants' keys kept under a name
    durapay request METHOD PATH [JSON] [--profile P]   send a signed request as a merchant
    durapay sign METHOD PATH [JSON] [--curl]   the signed headers, for curl or any client
    durapay tour                    create a PaymentIntent and charge 4242 (signed requests)
    durapay reconcile [--window-seconds N]   compare our books with the network's ledger now
    durapay reconcile list | resolve ID --note TEXT   operator: open discrepancies
    durapay review list | resolve PI --outcome approved|failed --note TEXT
                                    operator: payments waiting for manual review
    durapay keys status | rotate [--reencrypt-only] | drop KEY_ID
                                    operator: master keys, rotation, re-encryption at rest
    durapay audit verify [--merchant M]   operator: prove the audit trail's hash chains hold
    durapay events stream [--sink …] [--snapshot | --rebuild | --from-cursor C] | status | drop-slot
                                    operator: every committed event from the WAL, at least once
    durapay certs DIR [--san NAME]… [--client ROLE]… [--owner ROLE=UID[:GID]]… [--force]
                                    operator: a CA and mTLS certificates for Temporal

`request`, `sign` and `tour` sign as the merchant given by --profile, --public-key/--secret-key
or DURAPAY_PUBLIC_KEY/DURAPAY_SECRET_KEY (cli/merchant_keys.py), else as the local stack's demo
merchant. A failure is one line on stderr and a non-zero exit (`--traceback` shows where).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import NoReturn

from pydantic import ValidationError

from cli import audit, certs, events, keys, profiles, reconcile, review, signed_requests
from cli.demo_merchant import NoDemoMerchant, create_merchant
from cli.devstack import DevStack
from cli.failures import (
    API_CONNECTION_ERRORS,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    ApiUnreachable,
    describe,
    unexpected,
)
from cli.merchant_keys import SettingsLoader, add_key_arguments, resolve_keys
from cli.shutdown import exit_without_finalizing
from client import CardError, Durapay, DurapayError
from core.logs import configure_logging
from core.secret_files import InsecurePermissionsError
from core.settings import LocalPostgresPasswordMissing, Settings, get_settings

EXIT_SETTINGS_REFUSED = 2
# Commands that may hold a Temporal client when they fail: they leave as they do on success
# (cli/shutdown.py), or the interpreter's finalization can turn the exit code into SIGABRT.
TEMPORAL_COMMANDS = frozenset({"keys", "reconcile", "review"})
# Failures that come with their own fix in their message.
SELF_EXPLAINED = (InsecurePermissionsError, LocalPostgresPasswordMissing, NoDemoMerchant)


class SettingsRefused(Exception):
    """The configuration does not validate (e.g. production without its secrets)."""


class LazySettings:
    """The settings, read on first use: `sign`, `request` and `profile` with a merchant's own
    keys and URL need nothing of the operator's configuration, so a host configured for
    something else (production without its secrets) does not stop them."""

    def __init__(self) -> None:
        self.loaded: Settings | None = None

    def __call__(self) -> Settings:
        if self.loaded is None:
            try:
                self.loaded = get_settings()
            except ValidationError as error:
                raise SettingsRefused("; ".join(e["msg"] for e in error.errors())) from error
        return self.loaded


def package_version() -> str:
    try:
        return version("durapay")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed: pip install -e .)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="durapay", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"durapay {package_version()}")
    parser.add_argument(
        "--traceback", action="store_true", help="on a failure, show the Python traceback too"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("dev", help="start the whole local stack")
    commands.add_parser("migrate", help="apply database migrations")
    merchant = commands.add_parser("merchant", help="operator: merchants")
    merchant_commands = merchant.add_subparsers(dest="merchant_command", required=True)
    create = merchant_commands.add_parser(
        "create",
        help="onboard a merchant (admin token: DURAPAY_ADMIN_TOKEN, else the local stack's)",
    )
    create.add_argument("name")
    create.add_argument(
        "--api-url",
        help="the API to onboard it on (default: DURAPAY_API_URL, else the local stack's)",
    )
    create.add_argument(
        "--save-profile",
        metavar="PROFILE",
        help="also keep its keys (and the API URL) as this profile",
    )
    signed_requests.add_parsers(commands)
    profiles.add_parser(commands)
    tour = commands.add_parser(
        "tour", help="create a PaymentIntent and charge test card 4242, as a merchant"
    )
    add_key_arguments(tour)
    reconcile.add_parser(commands)
    review.add_parser(commands)
    keys.add_parser(commands)
    audit.add_parser(commands)
    events.add_parser(commands)
    certs.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = signed_requests.take_late_body(parser, *parser.parse_known_args(argv))
    configure_logging("cli", logging.WARNING)
    settings = LazySettings()
    try:
        return _run_command(args, settings)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except SettingsRefused as error:
        print(f"durapay: {error}", file=sys.stderr)
        return EXIT_SETTINGS_REFUSED
    except Exception as error:
        if args.traceback:
            raise
        line = (
            str(error)
            if isinstance(error, SELF_EXPLAINED)
            else describe(error, settings=settings.loaded) or unexpected(error)
        )
        print(f"durapay: {line}", file=sys.stderr)
        if args.command in TEMPORAL_COMMANDS:
            exit_without_finalizing(EXIT_FAILED)
        return EXIT_FAILED


def _run_command(args: argparse.Namespace, load_settings: LazySettings) -> int:
    # Before settings: `certs` makes what production refuses to start without, and `profile`,
    # `request` and `sign` may be a merchant's, on a host with no Durapay configuration.
    if args.command == "certs":
        return certs.run(args)
    if args.command == "profile":
        return profiles.run(args)
    if args.command == "request":
        return asyncio.run(signed_requests.run_request(args, load_settings))
    if args.command == "sign":
        return asyncio.run(signed_requests.run_sign(args, load_settings))
    if args.command == "tour":
        return asyncio.run(_tour(args, load_settings))
    settings = load_settings()
    if args.command == "dev":
        return asyncio.run(DevStack(settings).run())
    if args.command == "review":
        exit_without_finalizing(asyncio.run(review.run(args, settings)))
    if args.command == "reconcile":
        reconcile.run(settings, args)
    if args.command == "keys":
        return keys.run(settings, args)
    if args.command == "audit":
        return audit.run(settings, args)
    if args.command == "events":
        return events.run(settings, args)
    if args.command == "migrate":
        from core.db.migrate import upgrade

        upgrade(settings.effective_database_url)
        print("migrations applied")
        return 0
    if args.command == "merchant":
        return asyncio.run(_create_merchant(args, settings))
    return _unknown(args.command)


def _unknown(command: str) -> NoReturn:
    raise AssertionError(f"argparse let through an unknown command {command!r}")


async def _create_merchant(args: argparse.Namespace, settings: Settings) -> int:
    url = args.api_url or os.environ.get(profiles.API_URL_ENV)
    if args.save_profile:  # refused before the merchant exists, not after
        profiles.check_name(args.save_profile)
    merchant = await create_merchant(settings, args.name, url)
    print(json.dumps(merchant, indent=2))
    if args.save_profile:
        path = profiles.save_profile(
            profiles.Profile(
                name=args.save_profile,
                public_key=merchant["publicKey"],
                secret_key=merchant["secretKey"],
                api_url=url,
                merchant_id=merchant.get("id"),
            )
        )
        print(
            f"durapay: saved as profile {args.save_profile} in {path}: use it with "
            f"--profile {args.save_profile}",
            file=sys.stderr,
        )
    return 0


async def _tour(args: argparse.Namespace, load_settings: SettingsLoader) -> int:
    merchant = await resolve_keys(args, load_settings)
    async with Durapay(merchant.api_url, merchant.public_key, merchant.secret_key) as durapay:
        try:
            return await _tour_steps(durapay)
        except API_CONNECTION_ERRORS as error:
            raise ApiUnreachable(merchant.api_url, error) from error


async def _tour_steps(durapay: Durapay) -> int:
    intent = await durapay.payment_intents.create(
        amount_in_cents=2499, currency="usd", description="Order#1234", metadata={"orderId": "1234"}
    )
    print(f"POST /payment-intents -> {intent.id} status={intent.status}")
    charge = f"POST /payment-intents/{intent.id}/transactions"
    try:
        txn = await durapay.payment_intents.charge(
            intent.id,
            card={"number": "4242424242424242", "expMonth": 12, "expYear": 2030, "cvc": "123"},
        )
    except CardError as declined:
        print(f"{charge} -> declined ({declined.decline_code})")
    except DurapayError as error:
        print(f"{charge} -> {error}")
    else:
        last4 = txn.card.last4 if txn.card else None
        print(f"{charge} -> {txn.id} status={txn.status} card=…{last4}")
    final = await durapay.payment_intents.retrieve(intent.id)
    print(
        f"GET /payment-intents/{intent.id} -> status={final.status} "
        f"amountReceived={final.amount_received}"
    )
    events = await durapay.payment_intents.list_events(intent.id)
    print("events: " + " -> ".join(e.type for e in events))
    return 0 if final.status == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
