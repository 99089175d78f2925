"""Named merchant profiles: a merchant's keys (and its API's URL) kept for `durapay request`,
`durapay sign` and `durapay tour`.

    durapay profile add NAME [--api-url URL] [--public-key PK]   secret key from
                          DURAPAY_SECRET_KEY, --secret-key, or asked for (stdin)
    durapay profile list                  names, API URLs and public keys (never secret keys)
    durapay profile remove NAME

Profiles live in `$XDG_CONFIG_HOME/durapay/profiles.toml` (`~/.config/durapay/profiles.toml`),
in a 0700 directory, the file 0600 (it holds secret keys): one found readable by others is
refused, as the state dir's secrets are (core/secret_files.py). `durapay merchant create NAME
--save-profile NAME` writes one too.

    [profiles.acme]
    api_url = "https://api.example"
    public_key = "pk_test_…"
    secret_key = "sk_test_…"
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cli.failures import Refused
from core.secret_files import read_secret, write_secret

PROFILES_FILE = "profiles.toml"
# Bare TOML keys, so the file stays plain to read and edit by hand.
PROFILE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
PUBLIC_KEY_ENV = "DURAPAY_PUBLIC_KEY"
SECRET_KEY_ENV = "DURAPAY_SECRET_KEY"
API_URL_ENV = "DURAPAY_API_URL"
PROFILE_ENV = "DURAPAY_PROFILE"


class ProfileError(Refused):
    """A profile that cannot be used or written: the message says what to do."""


@dataclass(frozen=True)
class Profile:
    name: str
    public_key: str
    secret_key: str
    api_url: str | None = None
    merchant_id: str | None = None

    def __repr__(self) -> str:  # never the secret key
        return (
            f"Profile(name={self.name!r}, public_key={self.public_key!r}, api_url={self.api_url!r})"
        )


def profiles_path() -> Path:
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home).expanduser() / "durapay" / PROFILES_FILE


def check_name(name: str) -> str:
    if not PROFILE_NAME.fullmatch(name):
        raise ProfileError(f"profile name {name!r} is not allowed: use 1 to 64 of [A-Za-z0-9_-]")
    return name


def load_profiles(path: Path | None = None) -> dict[str, Profile]:
    path = path or profiles_path()
    text = read_secret(path)  # refuses a file (or directory) others can read
    if text is None:
        return {}
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ProfileError(f"{path} is not valid TOML ({error}): fix or remove it") from error
    profiles: dict[str, Profile] = {}
    for name, fields in (document.get("profiles") or {}).items():
        if not isinstance(fields, dict) or not all(
            isinstance(fields.get(k), str) for k in ("public_key", "secret_key")
        ):
            raise ProfileError(
                f"profile {name!r} in {path} needs public_key and secret_key "
                "strings: fix it, or `durapay profile add` it again"
            )
        profiles[name] = Profile(
            name=name,
            public_key=fields["public_key"],
            secret_key=fields["secret_key"],
            api_url=_optional_str(fields.get("api_url")),
            merchant_id=_optional_str(fields.get("merchant_id")),
        )
    return profiles


def find_profile(name: str, path: Path | None = None) -> Profile:
    path = path or profiles_path()
    profiles = load_profiles(path)
    if name not in profiles:
        known = ", ".join(sorted(profiles)) or "none yet"
        raise ProfileError(
            f"no profile {name!r} in {path} (profiles: {known}): add it with "
            f"`durapay profile add {name}` or `durapay merchant create NAME "
            f"--save-profile {name}`"
        )
    return profiles[name]


def save_profile(profile: Profile, path: Path | None = None) -> Path:
    """Add or replace one profile; the file is rewritten whole (0600), the others kept."""
    path = path or profiles_path()
    check_name(profile.name)
    profiles = load_profiles(path)
    profiles[profile.name] = profile
    write_secret(path, _render(profiles))
    return path


def remove_profile(name: str, path: Path | None = None) -> bool:
    path = path or profiles_path()
    profiles = load_profiles(path)
    if profiles.pop(name, None) is None:
        return False
    write_secret(path, _render(profiles))
    return True


def _render(profiles: dict[str, Profile]) -> str:
    lines = [
        "# Durapay merchant profiles (`durapay profile`); holds secret keys: keep it 0600.",
        "",
    ]
    for profile in sorted(profiles.values(), key=lambda p: p.name):
        lines.append(f"[profiles.{profile.name}]")
        for field in ("api_url", "merchant_id", "public_key", "secret_key"):
            value = getattr(profile, field)
            if value is not None:
                lines.append(f"{field} = {_toml_string(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_string(value: str) -> str:
    # A JSON string without ASCII escaping is a valid TOML basic string: both escape `"`, `\`
    # and control characters the same way, and neither needs anything else escaped.
    return json.dumps(value, ensure_ascii=False)


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# ---- `durapay profile` ---------------------------------------------------------------------
def add_parser(commands: Any) -> None:
    profile = commands.add_parser(
        "profile",
        help="merchant profiles for request/sign/tour",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = profile.add_subparsers(dest="profile_command", required=True)
    add = actions.add_parser("add", help="save a merchant's keys under a name")
    add.add_argument("name")
    add.add_argument(
        "--api-url",
        help=f"the merchant API's URL (default: {API_URL_ENV}, else the local stack's when used)",
    )
    add.add_argument("--public-key", help=f"pk_… (default: {PUBLIC_KEY_ENV})")
    add.add_argument(
        "--secret-key",
        help=f"sk_… (default: {SECRET_KEY_ENV}, else asked for "
        "on stdin; a flag shows in the process list)",
    )
    add.add_argument("--merchant-id", help="mer_… (for your reference)")
    actions.add_parser("list", help="profile names, API URLs and public keys")
    remove = actions.add_parser("remove", help="forget a profile")
    remove.add_argument("name")


def run(args: argparse.Namespace) -> int:
    if args.profile_command == "list":
        path = profiles_path()
        profiles = load_profiles(path)
        if not profiles:
            print(f"no profiles in {path}")
        for profile in sorted(profiles.values(), key=lambda p: p.name):
            print(
                f"{profile.name:<20} {profile.public_key:<40} {profile.api_url or '(local stack)'}"
            )
        return 0
    if args.profile_command == "remove":
        if not remove_profile(args.name):
            raise ProfileError(f"no profile {args.name!r} in {profiles_path()}")
        print(f"removed profile {args.name}")
        return 0
    check_name(args.name)
    public_key = args.public_key or os.environ.get(PUBLIC_KEY_ENV)
    if not public_key:
        raise ProfileError(
            f"profile add needs the merchant's public key: --public-key pk_… or {PUBLIC_KEY_ENV}"
        )
    secret_key = args.secret_key or os.environ.get(SECRET_KEY_ENV) or _ask_secret_key()
    path = save_profile(
        Profile(
            name=args.name,
            public_key=public_key,
            secret_key=secret_key,
            api_url=args.api_url or os.environ.get(API_URL_ENV),
            merchant_id=args.merchant_id,
        )
    )
    print(f"saved profile {args.name} ({public_key}) in {path}")
    return 0


def _ask_secret_key() -> str:
    if sys.stdin.isatty():
        secret = getpass.getpass("secret key (sk_…): ")
    else:
        secret = sys.stdin.readline()
    secret = secret.strip()
    if not secret:
        raise ProfileError(
            f"profile add needs the merchant's secret key: {SECRET_KEY_ENV}, "
            "--secret-key, or typed when asked"
        )
    return secret
