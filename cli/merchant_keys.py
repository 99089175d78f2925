"""Whose keys a merchant command (`request`, `sign`, `tour`) uses, and which API it talks to.

Each of the public key, the secret key and the API URL is taken from the first of: its flag
(`--public-key`, `--secret-key`, `--api-url`), its environment variable (DURAPAY_PUBLIC_KEY,
DURAPAY_SECRET_KEY, DURAPAY_API_URL), the named profile (`--profile NAME`, else
DURAPAY_PROFILE; cli/profiles.py). With no key from any of them, the local stack's demo
merchant (cli/demo_merchant.py) at the local API, as `durapay dev` configures it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass

from cli.demo_merchant import api_url as local_api_url
from cli.demo_merchant import demo_merchant
from cli.profiles import (
    API_URL_ENV,
    PROFILE_ENV,
    PUBLIC_KEY_ENV,
    SECRET_KEY_ENV,
    ProfileError,
    find_profile,
)
from core.settings import Settings

SettingsLoader = Callable[[], Settings]


@dataclass(frozen=True)
class MerchantKeys:
    api_url: str
    public_key: str
    secret_key: str
    source: str  # where the keys came from, for messages ("profile acme", "the demo merchant")

    def __repr__(self) -> str:  # never the secret key
        return (
            f"MerchantKeys(api_url={self.api_url!r}, public_key={self.public_key!r}, "
            f"source={self.source!r})"
        )


def add_key_arguments(parser: argparse.ArgumentParser) -> None:
    keys = parser.add_argument_group(
        "merchant keys",
        "each from its flag, else its environment variable, else the "
        "profile; none at all: the local stack's demo merchant",
    )
    keys.add_argument(
        "--profile", help=f"a saved profile (`durapay profile`; default: {PROFILE_ENV})"
    )
    keys.add_argument("--public-key", help=f"pk_… (default: {PUBLIC_KEY_ENV})")
    keys.add_argument(
        "--secret-key",
        help=f"sk_… (default: {SECRET_KEY_ENV}; a flag shows in "
        "the process list: prefer the variable or a "
        "profile)",
    )
    keys.add_argument(
        "--api-url", help=f"the merchant API (default: {API_URL_ENV}, else the local stack's)"
    )


async def resolve_keys(args: argparse.Namespace, load_settings: SettingsLoader) -> MerchantKeys:
    """The keys and API for this command line (see the module's docstring). `load_settings` is
    called only when the local stack is needed: a merchant's own keys and URL need none of the
    operator's configuration."""
    profile_name = args.profile or os.environ.get(PROFILE_ENV)
    profile = find_profile(profile_name) if profile_name else None
    public_key = (
        args.public_key
        or os.environ.get(PUBLIC_KEY_ENV)
        or (profile.public_key if profile else None)
    )
    secret_key = (
        args.secret_key
        or os.environ.get(SECRET_KEY_ENV)
        or (profile.secret_key if profile else None)
    )
    url = args.api_url or os.environ.get(API_URL_ENV) or (profile.api_url if profile else None)
    source = f"profile {profile.name}" if profile else "the given keys"
    if public_key and secret_key:
        return MerchantKeys(url or local_api_url(load_settings()), public_key, secret_key, source)
    if public_key or secret_key:
        missing = (
            ("--secret-key or " + SECRET_KEY_ENV)
            if public_key
            else ("--public-key or " + PUBLIC_KEY_ENV)
        )
        raise ProfileError(
            f"a merchant's keys come in pairs: {missing} is missing (or use --profile NAME)"
        )
    if url:
        raise ProfileError(
            f"no merchant keys for {url}: pass --profile NAME, or set "
            f"{PUBLIC_KEY_ENV} and {SECRET_KEY_ENV} (the demo merchant is only "
            "for the local stack)"
        )
    settings = load_settings()
    merchant = await demo_merchant(settings)
    return MerchantKeys(
        local_api_url(settings), merchant["publicKey"], merchant["secretKey"], "the demo merchant"
    )
