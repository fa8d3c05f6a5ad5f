"""Private PostgreSQL servers for tests that stop and restart the database.

The shared server at 127.0.0.1:5432 is used with a schema per test; a test that needs
to stop PostgreSQL starts its own here, on a free port. initdb refuses to run as root,
so under root the cluster is made and run by the ``postgres`` user, in a directory of
its own under the system temp dir (pytest's tmp_path is readable by root only). The
server's log goes to the test's tmp dir.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness import free_port

_BIN = "/usr/local/bin"
INITDB = shutil.which("initdb") or f"{_BIN}/initdb"
PG_CTL = shutil.which("pg_ctl") or f"{_BIN}/pg_ctl"
_OWNER = "postgres"


def have_postgres() -> bool:
    return os.access(INITDB, os.X_OK) and os.access(PG_CTL, os.X_OK)


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", _OWNER, "--", *cmd] if os.geteuid() == 0 else cmd


@dataclass
class PostgresServer:
    port: int
    home: Path  # the data directory's parent, removed by remove()
    log: Path

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> PostgresServer:
        """Start and wait until it accepts connections (``pg_ctl -w``)."""
        options = f"-p {self.port} -k {self.home} -c listen_addresses=127.0.0.1"
        self._run(PG_CTL, "-D", str(self.data), "-o", options, "-w", "-t", "60", "start")
        return self

    def stop(self) -> None:
        """Stop now: open sessions are ended, as when a database server goes away."""
        self._run(PG_CTL, "-D", str(self.data), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        status = subprocess.run(
            _as_owner([PG_CTL, "-D", str(self.data), "status"]), capture_output=True, timeout=30
        )
        return status.returncode == 0

    def remove(self) -> None:
        if self.data.exists() and self.running():
            self.stop()
        shutil.rmtree(self.home, ignore_errors=True)

    def _run(self, *cmd: str) -> None:
        # The server inherits this log file as its stdout and stderr.
        with self.log.open("ab") as out:
            done = subprocess.run(_as_owner(list(cmd)), stdout=out, stderr=subprocess.STDOUT,
                                  timeout=90)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{self.log.read_text()[-4000:]}")


def start_postgres(tmp: Path) -> PostgresServer:
    """A new cluster (``trust`` auth, superuser ``postgres``), started on a free port."""
    home = Path(tempfile.mkdtemp(prefix="qg-pg-"))
    if os.geteuid() == 0:
        shutil.chown(home, _OWNER, _OWNER)
    server = PostgresServer(free_port(), home, tmp / "postgres.log")
    try:
        server._run(INITDB, "-D", str(server.data), "-A", "trust", "-U", "postgres", "--no-sync")
        return server.start()
    except BaseException:
        server.remove()
        raise
