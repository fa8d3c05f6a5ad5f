"""The embedded default's first-run experience: a working key and examples to paste.

Each ``serve`` on the bundled policy issues a fresh key for the ``quickstart`` tenant
(plan ``pro``) and revokes the previous one, so the printed key always works and no
key is ever printed twice. The key is shown on a terminal only: when the output goes
to a file or a log collector, the banner says how to make one instead (a key in a log
is a leaked key).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

from rich.console import Console

from quotagate.config.schema import Policy
from quotagate.db.repo import Database, DatabaseError
from quotagate.settings import Settings

TENANT = "quickstart"


async def _fresh_key(policy: Policy, settings: Settings) -> str:
    db = Database(policy.database.url, policy.database.schema_name)
    try:
        await db.create_schema()
        try:
            await db.get_tenant(TENANT)
        except DatabaseError:
            await db.create_tenant(TENANT, "pro")
        for row in await db.list_keys(TENANT):
            if row.name == "quickstart" and row.revoked_at is None:
                await db.revoke_key(row.id)
        _, plaintext = await db.create_key(TENANT, settings.server_secret(), name="quickstart")
        return plaintext
    finally:
        await db.close()


def banner(base_url: str, key: str) -> str:
    return f"""[bold]quotagate[/bold] is serving on {base_url} (bundled policy, mock LLM upstream)

Tenant [bold]{TENANT}[/bold] (plan pro) has a fresh key, shown once:
  [green]{key}[/green]

[bold]curl[/bold]
curl {base_url}/v1/chat/completions \\
  -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \\
  -d '{{"model": "gpt-3.5-turbo", "messages": [{{"role": "user", "content": "Hello"}}]}}'

[bold]python[/bold] (pip install openai)
from openai import OpenAI
client = OpenAI(base_url="{base_url}/v1", api_key="{key}")
print(client.chat.completions.create(model="gpt-3.5-turbo",
      messages=[{{"role": "user", "content": "Hello"}}]).choices[0].message.content)

[bold]JWT instead of a key[/bold] (the built-in OAuth2 issuer, docs/identity.md)
quotagate clients create --tenant {TENANT} --json
curl -u CLIENT_ID:CLIENT_SECRET -d grant_type=client_credentials {base_url}/oauth/token

Ctrl-C stops the gateway and the mock LLM."""


NO_TERMINAL_KEY = (
    "[dim](not shown: this output is not a terminal; make one with "
    f"`quotagate keys create --tenant {TENANT}`)[/dim]"
)


def announce(policy: Policy, settings: Settings, listen: str | None) -> Callable[[], None]:
    base_url = f"http://{listen or policy.server.listen}"
    terminal = sys.stdout.isatty()
    key = asyncio.run(_fresh_key(policy, settings)) if terminal else NO_TERMINAL_KEY

    def show() -> None:
        # No box and no wrapping: the examples must stay copy-pasteable at any width.
        console = Console(soft_wrap=True)
        console.rule()
        console.print(banner(base_url, key), highlight=False)
        console.rule()

    return show
