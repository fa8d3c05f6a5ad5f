"""Tenants and keys for the demo, made with the ``quotagate`` CLI as an operator would."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from quotagate.auth.keys import display_prefix

from .stack import QUOTAGATE

PLANS = ("free", "pro", "enterprise")
CLI_TIMEOUT = 60.0


class OperatorError(RuntimeError):
    """A CLI command failed; the message holds its stderr."""


@dataclass(frozen=True, slots=True)
class Account:
    tenant: str
    plan: str
    key_id: str
    key: str


class Operator:
    """Runs ``quotagate`` commands against the demo's data dir, echoing each one."""

    def __init__(self, env: dict[str, str], console: Console) -> None:
        self.env = env
        self.console = console

    def run(self, *args: str) -> str:
        self.console.print(f"[dim]$ quotagate {' '.join(args)}[/dim]", highlight=False)
        result = subprocess.run(
            [*QUOTAGATE, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            raise OperatorError(f"quotagate {' '.join(args)} failed:\n{result.stderr}")
        return result.stdout

    def create_tenant(self, tenant: str, plan: str) -> None:
        self.run("tenants", "create", tenant, "--plan", plan)

    def create_key(self, tenant: str, plan: str) -> Account:
        created = json.loads(self.run("keys", "create", "--tenant", tenant, "--json"))
        return Account(tenant, plan, str(created["key_id"]), str(created["key"]))


def provision(operator: Operator) -> dict[str, Account]:
    """A tenant ``demo-<plan>`` and one key on each plan, keyed by plan."""
    accounts: dict[str, Account] = {}
    for plan in PLANS:
        operator.create_tenant(f"demo-{plan}", plan)
        accounts[plan] = operator.create_key(f"demo-{plan}", plan)
    return accounts


def accounts_table(accounts: dict[str, Account]) -> Table:
    table = Table("tenant", "plan", "key", title="Tenants and keys")
    for account in accounts.values():
        table.add_row(account.tenant, account.plan, display_prefix(account.key_id))
    return table
