"""`durapay dev`: start and supervise the whole local stack, in dependency order.

Postgres -> Temporal -> migrations (and, on an external Temporal, its search attributes) ->
card-network simulator -> workers -> codec -> API (the codec listener, for the Web UI, and the
demo merchant only outside production; an external Postgres, Temporal or card network is not
started). Each child runs in
its own session (so a terminal's Ctrl-C reaches only us and we stop children in reverse order),
logs to `$DURAPAY_HOME/logs/<name>.log`, and is health-checked before the next starts. A child
that dies is reported loudly on stderr with the tail of its log and restarted in place, Postgres
and Temporal included (same data, ports and arguments: Postgres recovers from its WAL, the dev
server reopens its SQLite file); the stack stops only if a child dies more than
MAX_RESTARTS_PER_MINUTE times in a minute. `stack.json` always names every child's current pid.
Children die with the launcher, even a killed one, and the next start stops any it left
running (`cli/dev_children.py`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx

from api.codec_app import public_url as codec_url
from cli.demo_merchant import DEMO_MERCHANT_FILE, api_url, demo_merchant
from cli.dev_children import (
    REAP_TIMEOUT_SECONDS,
    LauncherStillRunning,
    parent_death_signal,
    reap_session,
    remove_pid_file,
    stop_leftovers,
    write_pid_file,
)
from cli.local_postgres import ClusterInitError, postgres_argv, postgres_data_dir, run_as
from cli.temporal_setup import register_search_attributes
from core import search_attributes
from core.db.migrate import upgrade
from core.secret_files import InsecurePermissionsError, ensure_private_dir
from core.settings import Settings
from core.temporal_client import connect_temporal

log = logging.getLogger("durapay.dev")

# Search attributes operators filter on in the Web UI (registered at server start).
HEALTH_TIMEOUT_SECONDS = 90.0
MAX_RESTARTS_PER_MINUTE = 5


@dataclass
class Child:
    name: str
    argv: list[str]
    healthy: Callable[[], Awaitable[bool]]
    process: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # this child's own settings


class DevStack:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.home_dir
        self.logs = self.home / "logs"
        self.children: list[Child] = []
        self._stopping = asyncio.Event()
        self._http = httpx.AsyncClient(timeout=2.0)
        # What a child receives if the launcher dies without stopping it (keyed by "is it
        # Postgres"): Postgres its fast shutdown, the others a graceful stop.
        self._on_launcher_death = {
            True: parent_death_signal(signal.SIGINT),
            False: parent_death_signal(signal.SIGTERM),
        }

    # ---- lifecycle -------------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stopping.set)
        try:
            self._refuse_tls_to_the_embedded_server()
            # Created 0700, or refused if others can reach it (core/secret_files.py). A state
            # dir left open to the embedded PostgreSQL's group (0710, its data inside) is closed
            # again: the data lives beside it (postgres_data_dir).
            ensure_private_dir(self.home)
            self.home.chmod(0o700)
            self.logs.mkdir(exist_ok=True)
            self._stop_leftovers()
            for child in self._infrastructure():
                if self._stopping.is_set():
                    return 0
                await self._start_child(child)
            await self._prepare_database()
            await self._prepare_temporal()
            for child in self._services():
                if self._stopping.is_set():
                    return 0
                await self._start_child(child)
            self._write_state()
            merchant = None if self.production else await demo_merchant(self.settings)
            self._print_banner(merchant)
            return await self._supervise()
        except (StackError, InsecurePermissionsError, LauncherStillRunning) as error:
            print(f"\ndurapay dev: {error}", file=sys.stderr, flush=True)
            return 1
        finally:
            await self._stop_all()
            await self._http.aclose()

    def _stop_leftovers(self) -> None:
        """Children an earlier launcher on this state dir left running (it was killed before it
        could stop them) hold its ports and data: stop them first, and say what was stopped."""
        stopped = stop_leftovers(self.home)
        if stopped:
            print(
                f"durapay dev: stopped what an earlier durapay dev left running on "
                f"{self.home}: {', '.join(stopped)}",
                file=sys.stderr,
                flush=True,
            )

    def _refuse_tls_to_the_embedded_server(self) -> None:
        """The embedded dev server speaks plaintext only: TLS or API-key settings (which
        production requires) are for an external Temporal, and against the embedded one every
        process would fail its handshake, so say so once, before starting anything."""
        s = self.settings
        if s.temporal_address or not (
            s.temporal_tls_cert or s.temporal_tls_ca or s.temporal_api_key
        ):
            return
        raise StackError(
            "DURAPAY_TEMPORAL_TLS_* / DURAPAY_TEMPORAL_API_KEY are set but TEMPORAL_ADDRESS is "
            "not: the embedded Temporal dev server has no TLS. Set TEMPORAL_ADDRESS to a "
            "Temporal that requires client certificates (docs/deployment.md), or unset them "
            "for a development stack."
        )

    def _infrastructure(self) -> list[Child]:
        """The stateful services that are not external."""
        s = self.settings
        children: list[Child] = []
        if not s.database_url:
            children.append(Child("postgres", self._postgres_argv(), self._postgres_ready))
        if not s.temporal_address:
            children.append(Child("temporal", self._temporal_argv(), self._temporal_ready))
        return children

    def _services(self) -> list[Child]:
        """Durapay's own stateless processes."""
        s = self.settings
        python = sys.executable
        children: list[Child] = []
        if not s.cardnet_url:
            children.append(
                Child(
                    "cardnet",
                    [python, "-m", "cardnet", "--port", str(s.cardnet_port)],
                    self._cardnet_ready,
                )
            )
        for index in range(s.workers):
            children.append(self._worker(index))
        if not self.production:  # it decrypts payloads: never part of a production stack
            children.append(Child("codec", [python, "-m", "api.codec_app"], self._codec_ready))
        children.append(
            # api.serve: uvicorn with the connection limits from settings.
            Child(
                "api",
                [python, "-m", "api.serve", "--host", s.api_host, "--port", str(s.api_port)],
                self._api_ready,
            )
        )
        return children

    async def _start(self, child: Child) -> None:
        log_file = open(self.logs / f"{child.name}.log", "ab")  # noqa: SIM115 (child owns it)
        ids = run_as(postgres_data_dir(self.home)) if child.name == "postgres" else {}
        # Called from the event loop's thread (the signal follows the thread that forks).
        child.process = subprocess.Popen(
            child.argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**self._child_env(), **child.env},
            start_new_session=True,
            **ids,
            preexec_fn=self._on_launcher_death[child.name == "postgres"],
        )
        log_file.close()
        self._write_state()
        deadline = time.monotonic() + HEALTH_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if child.process.poll() is not None:
                raise StackError(self._death_report(child))
            if await child.healthy():
                print(f"  {child.name:<10} ready (pid {child.process.pid})", flush=True)
                return
            if self._stopping.is_set():
                return
            await asyncio.sleep(0.2)
        raise StackError(
            f"{child.name} did not become healthy in {HEALTH_TIMEOUT_SECONDS:.0f} s; "
            f"see {self.logs / (child.name + '.log')}"
        )

    async def _supervise(self) -> int:
        while not self._stopping.is_set():
            # In start order, so a dependency is healthy again before its dependents restart.
            for child in self.dead_children():
                if self._stopping.is_set() or not await self._restart(child):
                    return 0 if self._stopping.is_set() else 1
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=0.5)
            except TimeoutError:
                pass
        return 0

    def dead_children(self) -> list[Child]:
        return [c for c in self.children if c.process is not None and c.process.poll() is not None]

    async def _restart(self, child: Child) -> bool:
        """Start a dead child again with its own arguments; False (stop the stack) once it died
        more than MAX_RESTARTS_PER_MINUTE times in a minute. A restart that dies or stays
        unhealthy counts as one more death on the next pass."""
        assert child.process is not None
        print(
            f"\n!!! durapay dev: {child.name} exited with code {child.process.returncode}\n"
            f"{self._death_report(child)}",
            file=sys.stderr,
            flush=True,
        )
        now = time.monotonic()
        child.restarts = [t for t in child.restarts if now - t < 60] + [now]
        if len(child.restarts) > MAX_RESTARTS_PER_MINUTE:
            print(
                f"!!! durapay dev: stopping the stack ({child.name} died "
                f"{len(child.restarts)} times in a minute)",
                file=sys.stderr,
                flush=True,
            )
            return False
        print(f"!!! durapay dev: restarting {child.name}", file=sys.stderr, flush=True)
        # Postgres backends outlive a killed postmaster for a moment, and a new postmaster
        # refuses to start while they still hold the old shared memory.
        await asyncio.to_thread(reap_session, child.process.pid, REAP_TIMEOUT_SECONDS)
        started = time.monotonic()
        try:
            await self._start(child)
        except StackError as error:
            if child.process.poll() is None:  # alive but never healthy: kill, retry next pass
                print(f"!!! durapay dev: {error}", file=sys.stderr, flush=True)
                child.process.kill()
                await asyncio.to_thread(child.process.wait)
            return True
        if not self._stopping.is_set():
            print(f"  {child.name:<10} back after {time.monotonic() - started:.1f} s", flush=True)
        return True

    async def _stop_all(self) -> None:
        """One at a time, in reverse order: the API stops taking requests, then workers finish
        their activities (graceful shutdown) while Postgres and Temporal are still there."""
        for child in reversed(self.children):
            if child.process is None or child.process.poll() is not None:
                continue
            child.process.send_signal(
                signal.SIGTERM if child.name != "postgres" else signal.SIGINT
            )  # SIGINT = fast, clean shutdown
            try:
                await asyncio.to_thread(child.process.wait, 15)
            except subprocess.TimeoutExpired:
                print(f"durapay dev: {child.name} ignored SIGTERM; killing", file=sys.stderr)
                child.process.kill()
                child.process.wait()
        remove_pid_file(self.home)
        print("durapay dev: stopped", flush=True)

    # ---- children --------------------------------------------------------------------------
    async def _start_child(self, child: Child) -> None:
        self.children.append(child)
        await self._start(child)

    def _child_env(self) -> dict[str, str]:
        s = self.settings
        env = dict(os.environ)
        env.update(
            {
                "DURAPAY_HOME": str(self.home),
                "DATABASE_URL": s.effective_database_url,
                "TEMPORAL_ADDRESS": s.effective_temporal_address,
                "DURAPAY_CARDNET_URL": s.effective_cardnet_url,
                "DURAPAY_CARDNET_PORT": str(s.cardnet_port),
                "DURAPAY_ADMIN_TOKEN": s.resolved_admin_token(),
                "PYTHONUNBUFFERED": "1",
            }
        )
        # The local stack's webhook receivers run on this machine (loopback); an operator can
        # still say false. Production configurations never set it.
        env.setdefault("DURAPAY_WEBHOOK_ALLOW_PRIVATE_NETWORKS", "true")
        env.setdefault("DURAPAY_WEBHOOK_ALLOWED_PORTS", "*")  # receivers listen on free ports
        return env

    def _postgres_argv(self) -> list[str]:
        try:
            argv = postgres_argv(
                postgres_data_dir(self.home),
                self.settings.postgres_port,
                password_file=self.settings.local_postgres_password_file,
            )
        except ClusterInitError as error:
            raise StackError(str(error)) from None
        if self.settings.postgres_track_statements:
            argv += [
                "-c",
                "shared_preload_libraries=pg_stat_statements",
                "-c",
                "pg_stat_statements.track=all",
            ]
        return argv

    def _temporal_argv(self) -> list[str]:
        s = self.settings
        temporal = shutil.which("temporal", path=str(Path(sys.executable).parent)) or "temporal"
        argv = [
            temporal,
            "server",
            "start-dev",
            "--ip",
            "127.0.0.1",
            "--port",
            str(s.temporal_port),
            "--ui-port",
            str(s.temporal_ui_port),
            "--db-filename",
            str(self.home / "temporal.db"),
            "--log-level",
            "error",
            "--ui-disable-news-fetch",
            # Measured: WAL + synchronous=normal more than doubles throughput on SQLite.
            "--sqlite-pragma",
            "journal_mode=wal",
            "--sqlite-pragma",
            "synchronous=normal",
        ]
        if not self.production:
            # Payloads are encrypted (core/codec.py); the UI asks the codec listener to decode
            # them (the browser calls it: loopback, so no token is needed).
            argv += ["--ui-codec-endpoint", codec_url(s)]
        return argv + search_attributes.registration_flags()

    async def _prepare_database(self) -> None:
        if not self.settings.database_url:
            conn = await asyncpg.connect(self.settings.local_postgres_url("postgres"))
            try:
                exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = 'durapay'")
                if not exists:
                    await conn.execute("CREATE DATABASE durapay")
            finally:
                await conn.close()
        await asyncio.to_thread(upgrade, self.settings.effective_database_url)
        print("  migrations applied", flush=True)

    async def _prepare_temporal(self) -> None:
        """The embedded server registers the search attributes itself (start-dev flags)."""
        if not self.settings.temporal_address:
            return
        client = await connect_temporal(self.settings)  # TLS / API key, as every process
        added = await register_search_attributes(client, self.settings.temporal_namespace)
        print(f"  search attributes registered: {', '.join(added) or 'all present'}", flush=True)

    # ---- health ----------------------------------------------------------------------------
    async def _postgres_ready(self) -> bool:
        try:
            conn = await asyncpg.connect(self.settings.local_postgres_url("postgres"), timeout=2)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return False
        await conn.close()
        return True

    async def _temporal_ready(self) -> bool:
        """The namespace and schedules live in the SQLite file, and the search attributes are
        flags on its command line, so a restarted dev server needs nothing more than this."""
        try:
            client = await connect_temporal(self.settings)
            await client.count_workflows()
        except Exception:  # noqa: BLE001 (any failure means "not yet")
            return False
        return True

    async def _get_ok(self, url: str) -> bool:
        try:
            return (await self._http.get(url)).status_code == 200
        except httpx.HTTPError:
            return False

    async def _cardnet_ready(self) -> bool:
        return await self._get_ok(f"{self.settings.effective_cardnet_url}/healthz")

    def _worker(self, index: int) -> Child:
        """Once a worker polls its task queue it writes its pid to a file, and that is its
        health check. Its index puts its metrics on DURAPAY_WORKER_METRICS_PORT + index."""
        name = f"worker-{index + 1}"
        ready_file = self.home / "run" / f"{name}.ready"
        ready_file.parent.mkdir(parents=True, exist_ok=True)
        child = Child(
            name,
            [sys.executable, "-m", "workers.main"],
            lambda: _wrote_pid(ready_file, child),
            env={"DURAPAY_WORKER_READY_FILE": str(ready_file), "DURAPAY_WORKER_INDEX": str(index)},
        )
        return child

    def worker_metrics_urls(self) -> dict[str, str]:
        """Each worker's /metrics (its /livez and /readyz are beside it)."""
        s = self.settings
        host = s.worker_metrics_host
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # any address: loopback
        host = f"[{host}]" if ":" in host else host
        return {
            f"worker-{index + 1}": f"http://{host}:{s.worker_metrics_port + index}/metrics"
            for index in range(s.workers)
        }

    async def _api_ready(self) -> bool:
        return await self._get_ok(f"{self.api_url}/healthz")

    async def _codec_ready(self) -> bool:
        return await self._get_ok(codec_url(self.settings).removesuffix("/codec") + "/healthz")

    # ---- reporting -------------------------------------------------------------------------
    @property
    def api_url(self) -> str:
        return api_url(self.settings)

    @property
    def production(self) -> bool:
        return self.settings.env == "production"

    def _death_report(self, child: Child) -> str:
        path = self.logs / f"{child.name}.log"
        tail = path.read_text(errors="replace").splitlines()[-15:] if path.exists() else []
        return f"{child.name} died; last lines of {path}:\n" + "\n".join(
            f"    {line}" for line in tail
        )

    def _write_state(self) -> None:
        """Pids and URLs for tools and tests (e.g. a chaos run that kills one worker)."""
        children = {c.name: c.process.pid for c in self.children if c.process}
        state = {
            "pid": os.getpid(),
            "apiUrl": self.api_url,
            "cardnetUrl": self.settings.effective_cardnet_url,
            "temporalAddress": self.settings.effective_temporal_address,
            "children": children,
            "workerMetricsUrls": self.worker_metrics_urls(),
        }
        # Readers (tests killing children) must never see a half-written file.
        partial = self.home / "stack.json.tmp"
        partial.write_text(json.dumps(state, indent=2))
        partial.replace(self.home / "stack.json")
        write_pid_file(self.home, children)

    def _print_banner(self, merchant: dict[str, str] | None) -> None:
        s = self.settings
        ui = (
            f"http://127.0.0.1:{s.temporal_ui_port}"
            if not s.temporal_address
            else "(external Temporal)"
        )
        lines = [
            "",
            "Durapay is up.",
            f"  API             {self.api_url}",
            f"  API docs        {self.api_url}/docs",
            f"  Temporal Web UI {ui}",
            f"  Temporal gRPC   {s.effective_temporal_address}",
            f"  Card network    {s.effective_cardnet_url}",
            f"  API metrics     {self.api_url}/metrics  (with the admin token)",
            *(
                f"  {name:<15} {url}  (and /livez, /readyz)"
                for name, url in self.worker_metrics_urls().items()
            ),
            f"  State dir       {self.home}",
        ]
        if not self.production:  # a production token is the operator's, never printed
            lines += [
                f"  Codec (Web UI)  {codec_url(s)}",
                f"  Admin token     {s.resolved_admin_token()}",
            ]
        if merchant is not None:
            lines += [
                "",
                f"Demo merchant {merchant['id']} (also in {self.home / DEMO_MERCHANT_FILE}):",
                f"  Public key      {merchant['publicKey']}",
                f"  Secret key      {merchant['secretKey']}",
                "",
                "Try: .venv/bin/durapay tour    (Ctrl-C stops everything; state "
                "survives a restart)",
            ]
        else:
            lines += ["", "Ctrl-C stops everything; state survives a restart."]
        print("\n".join(lines) + "\n", flush=True)


class StackError(Exception):
    pass


async def _wrote_pid(path: Path, child: Child) -> bool:
    """True once this run of `child` (not an earlier, crashed one) wrote its pid to `path`."""
    try:
        return child.process is not None and path.read_text().strip() == str(child.process.pid)
    except OSError:
        return False
