"""``quotagate clients …`` (OAuth clients of the built-in issuer) and
``quotagate oauth rotate-key``."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from quotagate.admin.repo import AdminRepo, client_json
from quotagate.auth.invalidation import Stale
from quotagate.cli import CLI_ACTOR, ConfigOpt, JsonOpt, _change, _policy, _with_db, err
from quotagate.config.schema import Policy
from quotagate.db.repo import Database, DatabaseError
from quotagate.settings import Settings

clients_app = typer.Typer(
    help="OAuth clients of the built-in issuer (client-credentials grant).", no_args_is_help=True
)
oauth_app = typer.Typer(help="The built-in OAuth issuer.", no_args_is_help=True)


@clients_app.command("create")
def clients_create(
    tenant: Annotated[str, typer.Option(help="The tenant its tokens act for.")],
    plan: Annotated[
        str | None, typer.Option(help="The plan its tokens carry (default: the tenant's).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="A label for the client.")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a client. Its secret is printed once; store it now."""

    async def action(db: Database, policy: Policy, settings: Settings) -> None:
        if plan is not None and plan not in policy.plans:
            raise DatabaseError(
                f"no plan {plan!r} in the policy (plans: {', '.join(policy.plans)})"
            )
        repo = AdminRepo(db, settings.server_secret())
        row, secret = await repo.create_client(CLI_ACTOR, tenant, plan, name)
        if as_json:
            typer.echo(json.dumps({**client_json(row), "client_secret": secret}))
        else:
            err.print(
                f"client for tenant {tenant} (plan {row.token_plan}); the secret is shown once:"
            )
            typer.echo(f"client_id: {row.id}\nclient_secret: {secret}")

    _with_db(config, action)


@clients_app.command("list")
def clients_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's clients.")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List clients (ids and state; never their secrets)."""

    async def action(db: Database, _: Policy, __: Settings) -> None:
        items = [client_json(r) for r in await db.list_clients(tenant)]
        if as_json:
            typer.echo(json.dumps(items))
            return
        table = Table("client id", "tenant", "plan", "name", "created", "revoked")
        for i in items:
            table.add_row(i["client_id"], i["tenant"], i["plan"], i["name"] or "",
                          i["created_at"], i["revoked_at"] or "")  # fmt: skip
        Console().print(table)

    _with_db(config, action)


@clients_app.command("revoke")
def clients_revoke(client_id: str, config: ConfigOpt = None) -> None:
    """Revoke a client: no new tokens; gateways sharing a Redis store refuse its tokens
    at once, the others within auth.key_cache_ttl."""

    async def local(repo: AdminRepo) -> tuple[Any, Stale]:
        return await repo.revoke_client(CLI_ACTOR, client_id), Stale(clients=(client_id,))

    _change(None, None, None, local, config)
    typer.echo(f"revoked client {client_id}")


@oauth_app.command("rotate-key")
def oauth_rotate_key(config: ConfigOpt = None) -> None:
    """Start signing with a new key. The old public key stays published until its tokens
    have expired; keys past that are deleted."""
    from quotagate.auth.signing_keys import SigningKeys

    settings = Settings.from_env(config)
    issuer = _policy(settings).auth.oauth_issuer
    if not issuer.enabled:
        err.print("[yellow]note:[/yellow] auth.oauth_issuer is not enabled in this policy")
    keys = SigningKeys(settings.data_dir / "oauth-keys", issuer.algorithm, issuer.token_ttl)
    key = keys.rotate()
    published = [k["kid"] for k in keys.jwks()["keys"]]
    typer.echo(f"signing with key {key.kid}; published: {', '.join(published)}")
