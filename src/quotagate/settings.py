"""Process settings: from flags and the environment into one typed object.

Policy (plans, models, limits) is the YAML file; these are the things that differ
per process or machine: where the policy is, where data lives, the server secret.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

SECRET_ENV = "QUOTAGATE_SECRET"
DATA_DIR_ENV = "QUOTAGATE_DATA_DIR"
CONFIG_ENV = "QUOTAGATE_CONFIG"


@dataclass(slots=True, frozen=True)
class Settings:
    config_path: str | None
    data_dir: Path

    @classmethod
    def from_env(cls, config: str | None = None) -> Settings:
        return cls(
            config_path=config or os.environ.get(CONFIG_ENV) or None,
            data_dir=Path(os.environ.get(DATA_DIR_ENV, "./data")),
        )

    def server_secret(self) -> bytes:
        """The key-hashing secret: ``$QUOTAGATE_SECRET``, else one kept in the data dir.

        The file is created on first use (mode 0600), so the embedded default needs no
        setup; several instances sharing a database must share ``QUOTAGATE_SECRET``.
        """
        if value := os.environ.get(SECRET_ENV):
            return value.encode()
        path = self.data_dir / "secret"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another process created it first: use theirs
                pass
            else:
                with os.fdopen(fd, "w") as out:
                    out.write(secrets.token_urlsafe(48))
        return path.read_text().strip().encode()
