"""A newcomer's path, as the README gives it: a fresh clone, `make dev`, the tour, a merchant of
one's own, signed requests with its keys from the CLI, and a curl command from `durapay sign`.

Every command run here is taken from the README's shell blocks (the test fails if the README
no longer shows it), in the README's order, in a fresh clone of this repository's HEAD with its
own virtualenv: what a newcomer would type, on private ports and a private state dir.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.stack import free_port, free_ports_in_a_row, private_dir

pytestmark = [pytest.mark.integration, pytest.mark.processes]

REPOSITORY = Path(__file__).resolve().parents[2]
INSTALL_AND_START_SECONDS = 900  # a cold package cache installs every locked wheel first

TOUR = ".venv/bin/durapay tour"
CREATE_MERCHANT = '.venv/bin/durapay merchant create "Acme" --save-profile acme'
CREATE_INTENT = (
    ".venv/bin/durapay request POST /payment-intents "
    """'{"amountInCents": 1000, "currency": "eur"}' --profile acme"""
)
CHARGE = (
    ".venv/bin/durapay request POST /payment-intents/pi_…/transactions --profile acme "
    """'{"type": "charge", "card": {"number": "4242424242424242", "expMonth": 12, """
    """"expYear": 2030, "cvc": "123"}}'"""
)
LIST = '.venv/bin/durapay request GET "/payment-intents?limit=5" --profile acme'
SIGN = ".venv/bin/durapay sign GET /payment-intents --profile acme --curl"


def readme_commands() -> list[str]:
    """Every command of the README's ```bash blocks: continuation lines joined, comments and
    extra spaces dropped."""
    text = (REPOSITORY / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        for command in re.sub(r"\\\n\s*", " ", block).splitlines():
            command = re.sub(r"\s+#.*$", "", command).strip()
            if command:
                commands.append(" ".join(shlex.split(command, posix=False)))
    return commands


def test_the_readme_shows_every_command_this_path_runs_in_its_order() -> None:
    shown = readme_commands()
    path = ["make dev", TOUR, CREATE_MERCHANT, CREATE_INTENT, CHARGE, LIST, SIGN]
    positions = []
    for command in path:
        normalized = " ".join(shlex.split(command, posix=False))
        assert normalized in shown, f"the README no longer shows: {command}"
        positions.append(shown.index(normalized))
    assert positions == sorted(positions), "the README shows them in another order"


@pytest.fixture(scope="module")
def clone() -> Path:
    """A fresh clone of this repository's HEAD, under a directory the embedded Postgres's own
    user may traverse (see tests/stack.py `private_dir`)."""
    target = private_dir("new-user") / "durapay"
    subprocess.run(["git", "clone", "--quiet", str(REPOSITORY), str(target)], check=True)
    return target


@pytest.fixture(scope="module")
def newcomer_env(clone: Path) -> dict[str, str]:
    """The environment of a newcomer's shell, but for private ports (another stack may hold the
    defaults) and a private config dir for CLI profiles."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DURAPAY_", "VIRTUAL_ENV", "PYTHON"))
        and k not in ("DATABASE_URL", "TEMPORAL_ADDRESS")
    }
    ports = {
        name: str(free_port())
        for name in ("API", "CARDNET", "TEMPORAL", "TEMPORAL_UI", "POSTGRES", "CODEC")
    }
    env.update({f"DURAPAY_{name}_PORT": port for name, port in ports.items()})
    env["DURAPAY_WORKER_METRICS_PORT"] = str(free_ports_in_a_row(1))
    env["XDG_CONFIG_HOME"] = str(clone.parent / "config")
    env["PATH"] = ":".join(p for p in env.get("PATH", "").split(":") if ".venv" not in p)
    return env


@pytest.fixture(scope="module")
def make_dev(clone: Path, newcomer_env: dict[str, str]) -> Iterator[str]:
    """`make dev` in the clone until its banner says the stack is up; Ctrl-C (SIGINT to its
    process group, as a terminal sends it) at the end. Yields the banner."""
    output = clone.parent / "make-dev.out"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            ["make", "dev"],
            cwd=clone,
            env=newcomer_env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + INSTALL_AND_START_SECONDS
        while "Durapay is up" not in output.read_text(errors="replace"):
            assert process.poll() is None, output.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, output.read_text(errors="replace")[-3000:]
            time.sleep(0.5)
        time.sleep(1)  # the rest of the banner
        yield output.read_text(errors="replace")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    assert process.returncode in (0, 2, 130, -signal.SIGINT), output.read_text()[-3000:]


def run(
    clone: Path, env: dict[str, str], command: str, substitutions: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """One README command, typed into a shell in the clone."""
    for placeholder, value in (substitutions or {}).items():
        command = command.replace(placeholder, value)
    return subprocess.run(
        ["bash", "-c", command], cwd=clone, env=env, capture_output=True, text=True, timeout=120
    )


def answer(result: subprocess.CompletedProcess[str]) -> tuple[int, dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    status, _, body = result.stdout.partition("\n")
    return int(status.removeprefix("HTTP ")), json.loads(body)


def test_a_newcomer_pays_with_the_cli_and_curl(
    clone: Path, newcomer_env: dict[str, str], make_dev: str
) -> None:
    api_url = f"http://127.0.0.1:{newcomer_env['DURAPAY_API_PORT']}"
    assert api_url in make_dev and "pk_test_" in make_dev, make_dev[-2000:]
    assert TOUR in make_dev  # the banner names the tour as the README does

    tour = run(clone, newcomer_env, TOUR)
    assert tour.returncode == 0, tour.stderr
    lines = tour.stdout.splitlines()
    assert re.match(r"POST /payment-intents -> pi_\w+ status=created", lines[0]), tour.stdout
    assert any(
        re.match(
            r"POST /payment-intents/pi_\w+/transactions -> txn_\w+ "
            r"status=succeeded card=…4242",
            line,
        )
        for line in lines
    ), tour.stdout
    assert lines[-1] == "events: payment.created -> payment.processing -> payment.succeeded"

    created = run(clone, newcomer_env, CREATE_MERCHANT)
    assert created.returncode == 0, created.stderr
    merchant = json.loads(created.stdout)
    assert merchant["name"] == "Acme" and merchant["secretKey"].startswith("sk_test_")

    status, intent = answer(run(clone, newcomer_env, CREATE_INTENT))
    assert (status, intent["status"], intent["amountInCents"]) == (201, "created", 1000)
    status, charge = answer(run(clone, newcomer_env, CHARGE, {"pi_…": str(intent["id"])}))
    assert (status, charge["status"], charge["type"]) == (200, "succeeded", "charge")
    status, page = answer(run(clone, newcomer_env, LIST))
    assert status == 200 and [i["id"] for i in page["data"]] == [intent["id"]]  # Acme's only

    if shutil.which("curl") is None:
        pytest.skip("no curl on this machine: the signed headers are checked by httpx instead")
    signed = run(clone, newcomer_env, SIGN)
    assert signed.returncode == 0, signed.stderr
    assert signed.stdout.startswith("curl "), signed.stdout
    sent = run(clone, newcomer_env, signed.stdout)
    assert sent.returncode == 0, sent.stderr
    listed = json.loads(sent.stdout)
    assert [i["id"] for i in listed["data"]] == [intent["id"]]
    # The stack answers over plain HTTP as well: nothing above went through a shortcut.
    assert httpx.get(f"{api_url}/healthz", timeout=10).status_code == 200
