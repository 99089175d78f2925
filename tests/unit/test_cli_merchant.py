"""The `durapay` command as a merchant's tool, without a stack: whose keys `request`, `sign` and
`tour` use (flags, then environment, then profile, then the demo merchant), profiles kept
private, `sign`'s headers as the API's verifier checks them, `--version`, and failures said in
one line on stderr. With a real API: tests/integration/test_cli_merchant.py."""

from __future__ import annotations

import argparse
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cli import main as cli_main
from cli import merchant_keys, profiles
from cli.profiles import Profile
from core.crypto import sign_request
from core.secret_files import InsecurePermissionsError
from core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
TRICKY_SECRET = 'sk_test_"quoted" \\back\\slash\n☕ é \x01'
CLOSED_DATABASE = "postgresql://nobody@127.0.0.1:1/none"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Profiles under tmp_path, no merchant keys or Durapay settings from the caller's shell."""
    for name in list(os.environ):
        if name.startswith("DURAPAY_") or name in ("DATABASE_URL", "TEMPORAL_ADDRESS"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("DURAPAY_HOME", str(tmp_path / "home"))
    return tmp_path


def key_args(**given: str | None) -> argparse.Namespace:
    fields = {"profile": None, "public_key": None, "secret_key": None, "api_url": None}
    return argparse.Namespace(**{**fields, **given})


def no_settings() -> Settings:
    raise AssertionError("the local stack's settings were read for a merchant's own keys")


# ---- profiles ------------------------------------------------------------------------------
def test_profile_round_trips_any_string_in_a_private_file(isolated: Path) -> None:
    saved = Profile(
        name="acme",
        public_key="pk_test_1",
        secret_key=TRICKY_SECRET,
        api_url="https://api.example/ä",
        merchant_id="mer_1",
    )
    path = profiles.save_profile(saved)
    profiles.save_profile(Profile(name="other", public_key="pk_test_2", secret_key="sk_2"))
    assert path == isolated / "config" / "durapay" / "profiles.toml"
    assert profiles.load_profiles() == {"acme": saved, "other": profiles.find_profile("other")}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert profiles.remove_profile("other") and set(profiles.load_profiles()) == {"acme"}
    assert TRICKY_SECRET not in repr(saved)


def test_profile_file_readable_by_others_is_refused(isolated: Path) -> None:
    path = profiles.save_profile(Profile(name="acme", public_key="pk", secret_key="sk"))
    path.chmod(0o644)
    with pytest.raises(InsecurePermissionsError, match="chmod 600"):
        profiles.load_profiles()


def test_profile_name_that_is_not_a_bare_key_is_refused() -> None:
    with pytest.raises(profiles.ProfileError, match="not allowed"):
        profiles.save_profile(Profile(name="a.b]", public_key="pk", secret_key="sk"))


# ---- whose keys ----------------------------------------------------------------------------
async def test_flags_then_environment_then_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    profiles.save_profile(
        Profile(
            name="acme", public_key="pk_profile", secret_key="sk_profile", api_url="http://profile"
        )
    )
    keys = await merchant_keys.resolve_keys(key_args(profile="acme"), no_settings)
    assert (keys.api_url, keys.public_key, keys.secret_key) == (
        "http://profile",
        "pk_profile",
        "sk_profile",
    )
    monkeypatch.setenv("DURAPAY_SECRET_KEY", "sk_env")
    monkeypatch.setenv("DURAPAY_API_URL", "http://env")
    keys = await merchant_keys.resolve_keys(key_args(profile="acme"), no_settings)
    assert (keys.api_url, keys.public_key, keys.secret_key) == (
        "http://env",
        "pk_profile",
        "sk_env",
    )
    keys = await merchant_keys.resolve_keys(
        key_args(profile="acme", secret_key="sk_flag", api_url="http://flag"), no_settings
    )
    assert (keys.api_url, keys.public_key, keys.secret_key) == (
        "http://flag",
        "pk_profile",
        "sk_flag",
    )
    monkeypatch.setenv("DURAPAY_PROFILE", "acme")  # the profile by environment too
    keys = await merchant_keys.resolve_keys(key_args(), no_settings)
    assert keys.source == "profile acme" and "sk_env" not in repr(keys)


async def test_half_a_key_pair_is_refused() -> None:
    with pytest.raises(profiles.ProfileError, match="DURAPAY_SECRET_KEY is missing"):
        await merchant_keys.resolve_keys(key_args(public_key="pk_1"), no_settings)


async def test_an_api_url_without_keys_never_falls_back_to_the_demo_merchant() -> None:
    with pytest.raises(profiles.ProfileError, match="no merchant keys for http://remote"):
        await merchant_keys.resolve_keys(key_args(api_url="http://remote"), no_settings)


async def test_unknown_profile_names_the_known_ones() -> None:
    profiles.save_profile(Profile(name="acme", public_key="pk", secret_key="sk"))
    with pytest.raises(profiles.ProfileError, match=r"no profile 'acne'.*profiles: acme"):
        await merchant_keys.resolve_keys(key_args(profile="acne"), no_settings)


# ---- sign ----------------------------------------------------------------------------------
def test_sign_prints_headers_the_apis_verifier_accepts(capsys: pytest.CaptureFixture[str]) -> None:
    body = '{"description": "Café ☕",  "amountInCents": 2499}'  # signed as given, not re-dumped
    assert (
        cli_main.main(
            [
                "sign",
                "post",
                "/payment-intents?limit=1&q=a b",
                body,
                "--public-key",
                "pk_test_1",
                "--secret-key",
                "sk_test_1",
                "--api-url",
                "http://api.example",
            ]
        )
        == 0
    )
    headers = dict(
        shlex.split(line)[1].split(": ", 1) for line in capsys.readouterr().out.splitlines()
    )
    assert headers["Authorization"] == "Bearer pk_test_1"
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Signature"] == sign_request(
        "sk_test_1",
        method="POST",
        path_and_query="/payment-intents?limit=1&q=a%20b",
        timestamp=headers["X-Timestamp"],
        nonce=headers["X-Nonce"],
        body=body.encode(),
    )


def test_sign_curl_command_sends_the_body_as_signed(capsys: pytest.CaptureFixture[str]) -> None:
    body = """{"description": "it's"}"""
    assert (
        cli_main.main(
            [
                "sign",
                "POST",
                "/payment-intents",
                body,
                "--curl",
                "--public-key",
                "pk",
                "--secret-key",
                "sk",
                "--api-url",
                "http://api.example",
            ]
        )
        == 0
    )
    argv = shlex.split(capsys.readouterr().out.replace("\\\n", " "))
    assert argv[:5] == ["curl", "-sS", "-X", "POST", "http://api.example/payment-intents"]
    assert argv[-2:] == ["--data-raw", body]


@pytest.mark.parametrize("order", ["body first", "options first"])
def test_the_body_may_come_before_or_after_the_options(
    capsys: pytest.CaptureFixture[str], order: str
) -> None:
    body = '{"amountInCents": 1000}'
    options = [
        "--public-key",
        "pk",
        "--secret-key",
        "sk",
        "--api-url",
        "http://api.example",
        "--curl",
    ]
    words = [body, *options] if order == "body first" else [*options, body]
    assert cli_main.main(["sign", "POST", "/payment-intents", *words]) == 0
    argv = shlex.split(capsys.readouterr().out.replace("\\\n", " "))
    assert argv[-2:] == ["--data-raw", body]


def test_a_second_body_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli_main.main(["sign", "POST", "/payment-intents", "{}", "--curl", "{}"])
    assert exited.value.code == 2
    assert "unrecognized arguments: {}" in capsys.readouterr().err


# ---- --version and failures ----------------------------------------------------------------
def test_version_is_the_installed_packages(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as leaving:
        cli_main.main(["--version"])
    assert leaving.value.code == 0
    assert capsys.readouterr().out.strip() == f"durapay {cli_main.package_version()}"
    assert cli_main.package_version()[0].isdigit()


def one_line_failure(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert cli_main.main(argv) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith("durapay: ")
    return captured.err


def test_malformed_json_body_is_one_line_and_nothing_is_sent(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for command in ("request", "sign"):
        err = one_line_failure(capsys, [command, "POST", "/payment-intents", "{amount: 1}"])
        assert "not valid JSON" in err and "single quotes" in err
    assert not (Path(os.environ["DURAPAY_HOME"])).exists()  # no demo merchant was looked for


def test_missing_keys_and_unknown_profile_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert "DURAPAY_PUBLIC_KEY is missing" in one_line_failure(
        capsys, ["request", "GET", "/payment-intents", "--secret-key", "sk"]
    )
    assert "no profile 'nope'" in one_line_failure(
        capsys, ["sign", "GET", "/payment-intents", "--profile", "nope"]
    )
    assert "no profile 'nope'" in one_line_failure(capsys, ["profile", "remove", "nope"])


def test_production_without_keys_says_how_to_give_them(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A production host's settings refuse to load without their secrets: the merchant's own
    # keys and URL still sign, and the demo fallback names the way out.
    monkeypatch.setenv("DURAPAY_ENV", "production")
    assert (
        cli_main.main(
            [
                "sign",
                "GET",
                "/payment-intents",
                "--public-key",
                "pk",
                "--secret-key",
                "sk",
                "--api-url",
                "https://api.example",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert cli_main.main(["request", "GET", "/payment-intents"]) == 2
    assert "DURAPAY_MASTER_KEY" in capsys.readouterr().err


def test_unreachable_database_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", CLOSED_DATABASE)
    for argv in (["audit", "verify"], ["events", "status"]):
        err = one_line_failure(capsys, argv)
        assert "cannot use the database at postgresql+asyncpg://nobody@127.0.0.1:1/none" in err
        assert "is `durapay dev` running" in err


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["keys", "status"], "cannot use the database"),
        (["reconcile", "list"], "cannot use the database"),
        (["review", "list"], "cannot use the database"),
        (
            ["review", "resolve", "pi_1", "--outcome", "failed", "--note", "n"],
            "cannot reach Temporal at 127.0.0.1:1",
        ),
    ],
)
def test_operator_commands_that_leave_without_finalizing_fail_in_one_line(
    isolated: Path, argv: list[str], said: str
) -> None:
    env = {
        **{k: v for k, v in os.environ.items()},
        "DATABASE_URL": CLOSED_DATABASE,
        "TEMPORAL_ADDRESS": "127.0.0.1:1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(f"durapay: {said}") and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


def test_an_unforeseen_failure_is_one_line_and_traceback_shows_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(args: argparse.Namespace) -> int:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(profiles, "run", broken)
    err = one_line_failure(capsys, ["profile", "list"])
    assert "unexpected ZeroDivisionError: division by zero" in err and "--traceback" in err
    with pytest.raises(ZeroDivisionError):
        cli_main.main(["--traceback", "profile", "list"])
