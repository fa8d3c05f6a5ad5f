"""Running the gateway: uvicorn on the policy's listener, plus the embedded mock LLM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import uvicorn
import uvloop
from uvicorn.supervisors.multiprocess import Multiprocess

from quotagate.app import Gateway, GatewayApp
from quotagate.config.loader import load_policy
from quotagate.config.schema import Policy
from quotagate.db.repo import Database
from quotagate.errors import ConfigError
from quotagate.observability.multiprocess import forget_workers, shared_metrics_dir
from quotagate.settings import CONFIG_ENV, Settings

log = logging.getLogger("quotagate")


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def uvicorn_config(app: GatewayApp, listen: str, log_level: str = "warning") -> uvicorn.Config:
    host, port = split_listen(listen)
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level=log_level,
        server_header=False,
        # Client addresses are the socket's: uvicorn's default would trust
        # X-Forwarded-For from 127.0.0.1, letting a local client pick its own per-IP
        # counter (trusted proxies are the gateway's job, configured explicitly).
        proxy_headers=False,
    )


def wait_http_ok(
    url: str, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Block until ``url`` answers 200 (start-up of a child process, not a test)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as resp:
            if resp.status == 200:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not become ready within {timeout:g}s")


@contextlib.contextmanager
def embedded_mock(policy: Policy) -> Iterator[None]:
    """The built-in mock LLM as a child process, when the policy asks for it."""
    if not policy.mock_llm.enabled:
        yield
        return
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for listen in (policy.mock_llm.listen, *policy.mock_llm.also_listen):
            cmd = [sys.executable, "-m", "quotagate", "mock-llm", "--listen", listen]
            procs.append(subprocess.Popen(cmd))
            wait_http_ok(f"http://{listen}/healthz", proc=procs[-1])
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()


class _Supervisor(Multiprocess):
    """uvicorn's worker supervisor, but SIGHUP first validates the policy: a bad file
    is refused and the running workers keep the last good one."""

    def handle_hup(self) -> None:
        try:
            load_policy(os.environ.get(CONFIG_ENV))
        except ConfigError as exc:
            log.error("policy reload refused, keeping the running workers: %s", exc)
            return
        super().handle_hup()

    # A worker replaced (after a reload) or restarted (it died) leaves its metric files;
    # the live gauges among them must stop counting.
    def restart_all(self) -> None:
        before = self._pids()
        super().restart_all()
        forget_workers(before - self._pids())

    def keep_subprocess_alive(self) -> None:
        before = self._pids()
        super().keep_subprocess_alive()
        forget_workers(before - self._pids())

    def _pids(self) -> set[int]:
        return {p.pid for p in self.processes if p.pid is not None}


ADMIN_PORT_ENV = "QUOTAGATE_ADMIN_PORT"  # run_workers → worker_app: the bound admin port


def worker_app() -> GatewayApp:
    """The app factory each worker process calls (settings come from the environment)."""
    settings = Settings.from_env()
    admin_port = int(os.environ[ADMIN_PORT_ENV]) if os.environ.get(ADMIN_PORT_ENV) else None
    return GatewayApp(Gateway(load_policy(settings.config_path), settings), None, admin_port)


def _admin_config(policy: Policy, admin_listen: str | None) -> uvicorn.Config | None:
    """A config used only to bind the admin listener's socket (same app, own port)."""
    if not policy.admin.enabled:
        return None
    host, port = split_listen(admin_listen or policy.admin.listen)
    return uvicorn.Config(lambda *_: None, host=host, port=port)


def run_workers(
    policy: Policy, settings: Settings, workers: int, listen: str | None,
    admin_listen: str | None = None,
) -> None:  # fmt: skip
    """Serve with ``workers`` processes sharing one listening socket."""
    if policy.store.url.startswith("memory://"):
        raise SystemExit(
            "--workers > 1 needs a shared store: with store.url memory:// every worker "
            "would keep its own counters and the limits would multiply by the number of "
            "workers. Set store.url to redis://… (or run one worker)."
        )
    if settings.config_path:
        os.environ[CONFIG_ENV] = str(Path(settings.config_path).resolve())
    # Migrate once here, before the workers start side by side.
    asyncio.run(_migrate(policy))
    host, port = split_listen(listen or policy.server.listen)
    admin = _admin_config(policy, admin_listen)
    config = uvicorn.Config(
        "quotagate.server:worker_app", factory=True, host=host, port=port, workers=workers,
        loop="uvloop", http="httptools", lifespan="on", access_log=False,
        log_level="warning", server_header=False, proxy_headers=False,
    )  # fmt: skip
    sockets = [config.bind_socket(), *([admin.bind_socket()] if admin else [])]
    if admin is not None:
        os.environ[ADMIN_PORT_ENV] = str(admin.port)
    log.info("quotagate listening on http://%s:%d with %d workers", host, port, workers)
    with embedded_mock(policy), shared_metrics_dir():
        _Supervisor(config, sockets=sockets).run()


async def _migrate(policy: Policy) -> None:
    db = Database(policy.database.url, policy.database.schema_name)
    try:
        await db.create_schema()
    finally:
        await db.close()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


def run_gateway(
    policy: Policy,
    settings: Settings,
    listen: str | None = None,
    log_level: str = "warning",
    on_ready: Callable[[], None] | None = None,
    admin_listen: str | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM. ``on_ready`` runs once the port is bound and the
    gateway has started (the socket is bound first, so nothing is lost in between)."""
    admin = _admin_config(policy, admin_listen)
    app = GatewayApp(Gateway(policy, settings), on_ready, admin.port if admin else None)
    config = uvicorn_config(app, listen or policy.server.listen, log_level)
    server = uvicorn.Server(config)
    try:
        sockets = [config.bind_socket()]
    except SystemExit:
        log.error("cannot listen on %s", listen or policy.server.listen)
        raise
    if admin is not None:
        try:
            sockets.append(admin.bind_socket())
        except SystemExit:
            where = admin_listen or policy.admin.listen
            log.error("cannot listen on %s for the admin API (admin.listen)", where)
            raise
    # uvicorn handles SIGTERM, then re-raises it once the handlers are restored; turn
    # that second delivery into an orderly exit so the embedded mock is stopped too.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with embedded_mock(policy):
        log.info("quotagate listening on http://%s", listen or policy.server.listen)
        if admin is not None:
            log.info("admin API on http://%s:%d", admin.host, admin.port)
        uvloop.run(server.serve(sockets=sockets))
    if not server.started:
        raise SystemExit(1)
