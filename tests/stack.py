"""Start the real local stack (`durapay dev`) for tests: free ports, a temp state dir, and a
clean stop of every process it started."""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from temporalio.client import Client

from cli.local_postgres import postgres_bin_dir
from core.codec import data_converter
from core.keyring import KeyRing
from core.settings import Settings

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports_in_a_row(count: int) -> int:
    """The first of `count` consecutive free ports (the workers' metrics: base + index)."""
    for _ in range(50):
        first = free_port()
        if first + count <= 65536 and all(_port_is_free(first + i) for i in range(1, count)):
            return first
    raise RuntimeError(f"no {count} consecutive free ports")


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class RunningStack:
    home: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    api_url: str
    cardnet_url: str
    temporal_address: str
    admin_token: str
    database_url: str

    def state(self) -> dict[str, Any]:
        return json.loads((self.home / "stack.json").read_text())

    def settings(self) -> Settings:
        """The stack's settings as far as keys go (DURAPAY_MASTER_KEY and
        DURAPAY_RETIRED_MASTER_KEYS if the test set them, else the state dir's key files)."""
        return Settings(
            home=self.home,
            master_key=self.env.get("DURAPAY_MASTER_KEY"),
            retired_master_keys=self.env.get("DURAPAY_RETIRED_MASTER_KEYS", ""),
        )

    def master_key(self) -> bytes:
        """The stack's current master key (generated into its state dir by the launcher)."""
        return self.key_ring().current.material

    def key_ring(self) -> KeyRing:
        """The stack's current and retired master keys, as its processes read them."""
        return self.settings().resolved_key_ring()

    async def temporal_client(self) -> Client:
        """A Temporal client that reads the stack's encrypted payloads, as its processes do:
        with every key of the ring, retired ones included."""
        return await Client.connect(
            self.temporal_address, data_converter=data_converter(self.key_ring())
        )

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in (self.home / "logs").glob("*.log"))

    def child_pid(self, name: str) -> int:
        """The current pid of one of the launcher's children (`postgres`, `temporal`, `api`,
        `worker-1`, …), as the launcher last wrote it to stack.json."""
        children = self.state()["children"]
        assert isinstance(children, dict), children
        return int(children[name])

    @contextmanager
    def launcher_paused(self) -> Iterator[None]:
        """Freeze the launcher (SIGSTOP) for the block, so a child killed meanwhile stays down
        until the block ends: an outage held open for as long as a test needs. The children
        keep running; the launcher resumes (SIGCONT) however the block ends."""
        os.kill(self.process.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


_PRIVATE_ROOT: Path | None = None


def private_dir(name: str) -> Path:
    """A fresh directory for a stack's (or a Postgres cluster's) state, outside pytest's
    basetemp, removed when the test process exits.

    The embedded Postgres runs as its own unprivileged user, which must traverse every
    directory above its data. Every pytest session that starts on this machine resets
    `/tmp/pytest-of-<user>` to 0700, so a second run starting (in another clone, say) cut a
    first run's Postgres off from its own files mid-initdb (seen: PANIC, pg_control
    permission denied). Our own root is touched by no other run."""
    global _PRIVATE_ROOT
    if _PRIVATE_ROOT is None:
        _PRIVATE_ROOT = Path(tempfile.mkdtemp(prefix="dpt-"))
        atexit.register(shutil.rmtree, _PRIVATE_ROOT, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=_PRIVATE_ROOT))


def stop_process(process: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    """SIGTERM (a graceful stop), then SIGKILL if it is still running after `timeout`; always
    reaped, so no test or bench leaves a process (or a zombie) behind."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()


def wait_until_postgres_accepts(server: subprocess.Popen[bytes], port: int) -> None:
    """Until the server takes connections. A listening port is not enough: while it starts
    (or replays its WAL) Postgres answers every connection "the database system is starting
    up", which a test expecting a password error would take for the wrong answer. pg_isready
    tells "accepting" apart from "rejecting" without authenticating."""
    deadline = time.monotonic() + 60
    while (
        subprocess.run(
            [
                str(postgres_bin_dir() / "pg_isready"),
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-t",
                "2",
            ],
            check=False,
        ).returncode
        != 0
    ):
        assert server.poll() is None and time.monotonic() < deadline, "postgres did not start"
        time.sleep(0.1)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class PortTaken(RuntimeError):
    """A port picked as free was taken by another process before our child bound it."""


def start_stack(
    home: Path, *, workers: int = 1, extra_env: dict[str, str] | None = None, timeout: float = 180.0
) -> RunningStack:
    """Start `durapay dev` on free ports. Picking a free port and binding it are two steps, so
    another process (a second test run, Temporal's own extra listeners) can take one in between:
    then try again on new ports, with a fresh state dir."""
    for attempt in range(3):
        try:
            return _start_stack(
                home / f"try{attempt}" if attempt else home,
                workers=workers,
                extra_env=extra_env,
                timeout=timeout,
            )
        except PortTaken:
            continue
    raise RuntimeError("no free ports after 3 attempts")


def _start_stack(
    home: Path, *, workers: int, extra_env: dict[str, str] | None, timeout: float
) -> RunningStack:
    ports = {
        name: free_port() for name in ("api", "cardnet", "temporal", "ui", "postgres", "codec")
    }
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DURAPAY_") and k not in ("DATABASE_URL", "TEMPORAL_ADDRESS")
    }
    env.update(
        {
            "DURAPAY_HOME": str(home),
            "DURAPAY_API_PORT": str(ports["api"]),
            "DURAPAY_CARDNET_PORT": str(ports["cardnet"]),
            "DURAPAY_TEMPORAL_PORT": str(ports["temporal"]),
            "DURAPAY_TEMPORAL_UI_PORT": str(ports["ui"]),
            "DURAPAY_POSTGRES_PORT": str(ports["postgres"]),
            "DURAPAY_CODEC_PORT": str(ports["codec"]),
            "DURAPAY_WORKERS": str(workers),
            # Worker i serves its metrics on this + i: two test runs never share one.
            "DURAPAY_WORKER_METRICS_PORT": str(free_ports_in_a_row(workers)),
            "DURAPAY_ADMIN_TOKEN": "test-admin-token-" + os.urandom(8).hex(),
            # Tests and `make bench` send many requests a second with one key: the limiter still
            # runs (and costs what it costs) but never refuses; rate-limit tests set their own.
            "DURAPAY_RATE_LIMIT_PER_SECOND": "1000000",
            # Likewise admission control: tests on a machine shared with other tests see every
            # answer slowed alike, and a handful of concurrent test clients must not be refused
            # for it (the SDK would retry; the raw client the tests use shows the 503).
            # Admission tests set their own bounds.
            "DURAPAY_API_MIN_IN_FLIGHT": "16",
            **(extra_env or {}),
        }
    )
    home.mkdir(mode=0o700, parents=True, exist_ok=True)  # the launcher refuses a looser one
    api_url = f"http://127.0.0.1:{ports['api']}"
    stack = RunningStack(
        home=home,
        env=env,
        process=_launch(home, env),
        api_url=api_url,
        cardnet_url=f"http://127.0.0.1:{ports['cardnet']}",
        temporal_address=f"127.0.0.1:{ports['temporal']}",
        admin_token=env["DURAPAY_ADMIN_TOKEN"],
        database_url="",
    )  # known once the launcher has written the password
    _wait_until_up(stack, timeout)
    stack.database_url = Settings(home=home, postgres_port=ports["postgres"]).local_postgres_url()
    return stack


def launch_again(stack: RunningStack, timeout: float = 180.0) -> RunningStack:
    """`durapay dev` once more on the stack's state dir, ports and settings (after the first
    launcher stopped or was killed); its output goes to a fresh `launcher.out`."""
    again = dataclasses.replace(stack, process=_launch(stack.home, stack.env))
    _wait_until_up(again, timeout)
    return again


def _launch(home: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    output = open(home / "launcher.out", "wb")  # noqa: SIM115 (the launcher owns it)
    process = subprocess.Popen(
        [str(BIN / "durapay"), "dev"],
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    output.close()
    return process


def _wait_until_up(stack: RunningStack, timeout: float) -> None:
    home, process = stack.home, stack.process
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            logs = "\n".join(p.read_text(errors="replace") for p in (home / "logs").glob("*.log"))
            if "address already in use" in logs:
                raise PortTaken(logs[-2000:])
            raise RuntimeError("durapay dev exited:\n" + (home / "launcher.out").read_text())
        if (home / "launcher.out").read_text(errors="replace").find("Durapay is up") >= 0:
            response = httpx.get(f"{stack.api_url}/healthz", timeout=5)
            if response.status_code == 200:
                return
        time.sleep(0.3)
    stack.stop()
    raise RuntimeError("stack not healthy in time:\n" + (home / "launcher.out").read_text())
