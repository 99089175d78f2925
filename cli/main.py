"""The `durapay` command: run the local stack and talk to it.

    durapay dev                     start and supervise the whole local stack
    durapay migrate                 apply database migrations to DATABASE_URL
    durapay merchant create NAME    onboard a merchant (prints its keys once)
    durapay request METHOD PATH [JSON]   send a signed request as the demo merchant
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
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from typing import Any

import httpx
from pydantic import ValidationError

from cli import audit, certs, events, keys, reconcile, review
from cli.demo_merchant import NoDemoMerchant, api_url, create_merchant, demo_merchant
from cli.devstack import DevStack
from cli.shutdown import exit_without_finalizing
from client import APIConnectionError, CardError, Durapay, DurapayError
from core.logs import configure_logging
from core.secret_files import InsecurePermissionsError
from core.settings import LocalPostgresPasswordMissing, Settings, get_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="durapay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("dev", help="start the whole local stack")
    commands.add_parser("migrate", help="apply database migrations")
    merchant = commands.add_parser("merchant", help="operator: merchants")
    merchant_commands = merchant.add_subparsers(dest="merchant_command", required=True)
    create = merchant_commands.add_parser("create", help="onboard a merchant")
    create.add_argument("name")
    request = commands.add_parser("request", help="send a signed request")
    request.add_argument("method")
    request.add_argument("path")
    request.add_argument("body", nargs="?", help="JSON body")
    request.add_argument("--idempotency-key")
    commands.add_parser("tour", help="the README's 30-second tour")
    reconcile.add_parser(commands)
    review.add_parser(commands)
    keys.add_parser(commands)
    audit.add_parser(commands)
    events.add_parser(commands)
    certs.add_parser(commands)
    args = parser.parse_args(argv)
    configure_logging("cli", logging.WARNING)
    if args.command == "certs":  # before settings: production refuses to start without them
        return certs.run(args)
    try:
        settings = get_settings()
    except ValidationError as error:  # e.g. production without its secrets: refuse to start
        print("durapay: " + "; ".join(e["msg"] for e in error.errors()), file=sys.stderr)
        return 2
    try:
        return _run_command(args, settings)
    except (InsecurePermissionsError, LocalPostgresPasswordMissing, NoDemoMerchant) as error:
        print(f"durapay: {error}", file=sys.stderr)
        return 1


def _run_command(args: argparse.Namespace, settings: Settings) -> int:
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
    try:
        return _run_client_command(args, settings)
    except (httpx.ConnectError, APIConnectionError):
        print(f"durapay: no API at {api_url(settings)}; is `durapay dev` running "
              "(same DURAPAY_HOME and DURAPAY_API_PORT)?", file=sys.stderr)
        return 1
    except DurapayError as error:  # the API's error object, said in one line
        print(f"durapay: {error}", file=sys.stderr)
        return 1


def _run_client_command(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "migrate":
        from core.db.migrate import upgrade

        upgrade(settings.effective_database_url)
        print("migrations applied")
        return 0
    if args.command == "merchant":
        print(json.dumps(asyncio.run(create_merchant(settings, args.name)), indent=2))
        return 0
    if args.command == "request":
        body = json.loads(args.body) if args.body else None
        return asyncio.run(_request(settings, args.method.upper(), args.path, body,
                                    args.idempotency_key))
    if args.command == "tour":
        return asyncio.run(_tour(settings))
    return 2


async def _request(settings: Settings, method: str, path: str, body: Any,
                   idempotency_key: str | None) -> int:
    merchant = await demo_merchant(settings)
    async with _sdk(settings, merchant) as durapay:
        # Signed and retried by the SDK (a POST keeps one Idempotency-Key across its retries),
        # but answered as it came: this command shows any status and body.
        response = await durapay.request(method, path, body, idempotency_key=idempotency_key)
    print(f"HTTP {response.status_code}")
    print(json.dumps(response.json(), indent=2))
    return 0 if response.status_code < 400 else 1


def _sdk(settings: Settings, merchant: dict[str, Any]) -> Durapay:
    return Durapay(api_url(settings), merchant["publicKey"], merchant["secretKey"])


async def _tour(settings: Settings) -> int:
    merchant = await demo_merchant(settings)
    async with _sdk(settings, merchant) as durapay:
        intent = await durapay.payment_intents.create(
            amount_in_cents=2499, currency="usd", description="Order#1234",
            metadata={"orderId": "1234"})
        print(f"POST /payment-intents -> {intent.id} status={intent.status}")
        charge = f"POST /payment-intents/{intent.id}/transactions"
        try:
            txn = await durapay.payment_intents.charge(intent.id, card={
                "number": "4242424242424242", "expMonth": 12, "expYear": 2030, "cvc": "123"})
        except CardError as declined:
            print(f"{charge} -> declined ({declined.decline_code})")
        except DurapayError as error:
            print(f"{charge} -> {error}")
        else:
            last4 = txn.card.last4 if txn.card else None
            print(f"{charge} -> {txn.id} status={txn.status} card=…{last4}")
        final = await durapay.payment_intents.retrieve(intent.id)
        print(f"GET /payment-intents/{intent.id} -> status={final.status} "
              f"amountReceived={final.amount_received}")
        events = await durapay.payment_intents.list_events(intent.id)
        print("events: " + " -> ".join(e.type for e in events))
    return 0 if final.status == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
