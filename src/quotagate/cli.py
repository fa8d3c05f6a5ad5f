"""The ``quotagate`` command line."""

from __future__ import annotations

import asyncio
import dataclasses
import getpass
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import quote

import typer
from rich.console import Console
from rich.table import Table

from quotagate.admin.repo import AdminRepo, key_json, tenant_json
from quotagate.auth.invalidation import Stale
from quotagate.config.loader import load_policy
from quotagate.config.schema import Policy
from quotagate.db.repo import Database, DatabaseError
from quotagate.errors import ConfigError
from quotagate.settings import Settings

app = typer.Typer(help="quotagate: an API gateway for AI model endpoints.", no_args_is_help=True)
tenants_app = typer.Typer(help="Create and list tenants.", no_args_is_help=True)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
config_app = typer.Typer(help="Work with policy files.", no_args_is_help=True)
limits_app = typer.Typer(help="Look at live limit counters.", no_args_is_help=True)
credits_app = typer.Typer(
    help="Per-tenant overrides, top-ups and burst credits.", no_args_is_help=True
)
ledger_app = typer.Typer(help="The usage ledger.", no_args_is_help=True)
admin_tokens_app = typer.Typer(help="Credentials for the admin API.", no_args_is_help=True)
app.add_typer(admin_tokens_app, name="admin-tokens")
tokenizer_app = typer.Typer(help="tiktoken encodings for prompt estimates.", no_args_is_help=True)
app.add_typer(tokenizer_app, name="tokenizer")
app.add_typer(credits_app, name="credits")
app.add_typer(ledger_app, name="ledger")
app.add_typer(tenants_app, name="tenants")
app.add_typer(keys_app, name="keys")
app.add_typer(config_app, name="config")
app.add_typer(limits_app, name="limits")
err = Console(stderr=True)
# The audit log's actor for changes made here: the operator at this machine's shell.
CLI_ACTOR = f"cli:{getpass.getuser()}"
T = TypeVar("T")
UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url", help="A running gateway's admin API (http://HOST:8081) instead of the database."
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", help="Admin token for --url (default: $QUOTAGATE_ADMIN_TOKEN)."),
]


def _remote(url: str, token: str | None, method: str, path: str, body: Any = None) -> Any:
    from quotagate.admin.client import AdminClient, AdminClientError

    try:
        return AdminClient(url, token).call(method, path, body)
    except AdminClientError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


ConfigOpt = Annotated[
    str | None,
    typer.Option("--config", "-c", help="Policy file (default: $QUOTAGATE_CONFIG, else bundled)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _policy(settings: Settings) -> Policy:
    try:
        return load_policy(settings.config_path)
    except ConfigError as exc:
        err.print(f"[red]invalid policy[/red] {settings.config_path or '(bundled)'}:\n{exc}")
        raise typer.Exit(2) from None


def _with_db(config: str | None, action: Callable[[Database, Policy, Settings], Awaitable[T]]) -> T:
    settings = Settings.from_env(config)
    policy = _policy(settings)

    async def run() -> T:
        db = Database(policy.database.url, policy.database.schema_name)
        try:
            await db.create_schema()
            return await action(db, policy, settings)
        finally:
            await db.close()

    try:
        return asyncio.run(run())
    except DatabaseError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


@app.command()
def serve(
    config: ConfigOpt = None,
    listen: Annotated[str | None, typer.Option(help="HOST:PORT (overrides the policy).")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
    workers: Annotated[
        int, typer.Option(min=1, help="Worker processes sharing the port (needs a Redis store).")
    ] = 1,
    admin_listen: Annotated[
        str | None, typer.Option(help="HOST:PORT of the admin API (overrides admin.listen).")
    ] = None,
) -> None:
    """Run the gateway (the bundled default policy when no --config is given)."""
    from quotagate.quickstart import announce

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    settings = Settings.from_env(config)
    policy = _policy(settings)
    from quotagate.server import run_gateway, run_workers

    if workers > 1:
        run_workers(policy, settings, workers, listen, admin_listen)
        return
    on_ready = announce(policy, settings, listen) if settings.config_path is None else None
    run_gateway(policy, settings, listen, "warning", on_ready, admin_listen)


@app.command("mock-llm")
def mock_llm(
    listen: Annotated[str, typer.Option(help="HOST:PORT to listen on.")] = "127.0.0.1:9000",
    ttft_ms: Annotated[float, typer.Option(help="Time to first token, ms.")] = 0.0,
    tokens_per_second: Annotated[float, typer.Option(help="Output speed; 0 = instant.")] = 0.0,
    error_rate: Annotated[float, typer.Option(help="Fraction of requests that fail.")] = 0.0,
    error_status: Annotated[int, typer.Option(help="Status of injected failures.")] = 500,
    hang_rate: Annotated[float, typer.Option(help="Fraction of requests never answered.")] = 0.0,
    drop_rate: Annotated[float, typer.Option(help="Fraction of streams cut mid-way.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed for the fault dice.")] = 0,
    capacity: Annotated[
        float,
        typer.Option(help="Load model: requests served at full speed at once; 0 = off."),
    ] = 0.0,
) -> None:
    """Run the OpenAI-compatible mock LLM upstream (for demos, tests, benchmarks)."""
    from quotagate.mock_llm import MockSettings, run
    from quotagate.server import split_listen

    host, port = split_listen(listen)
    run(
        MockSettings(
            host=host,
            port=port,
            ttft_ms=ttft_ms,
            tokens_per_second=tokens_per_second,
            error_rate=error_rate,
            error_status=error_status,
            hang_rate=hang_rate,
            drop_rate=drop_rate,
            seed=seed,
            capacity=capacity,
        )
    )


@app.command()
def top(
    url: Annotated[str, typer.Option(help="The gateway's base URL.")] = "http://127.0.0.1:8080",
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between refreshes.")] = 2.0,
    iterations: Annotated[int, typer.Option(min=0, help="Stop after N refreshes (0: never).")] = 0,
) -> None:
    """A live view of a gateway from its /metrics: request rates, latency, tokens, spend."""
    from rich.live import Live

    from quotagate.observability.top import frames

    console = Console()
    try:
        with Live(console=console, auto_refresh=False, transient=False) as live:
            for count, frame in enumerate(frames(url, interval), start=1):
                live.update(frame.render(url), refresh=True)
                if iterations and count >= iterations:
                    break
    except OSError as exc:
        err.print(f"[red]error:[/red] cannot read {url}/metrics: {exc}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        pass


@app.command()
def demo() -> None:
    """Start a mock LLM and a gateway, and play the seed scenarios against them."""
    from quotagate.demo import run_demo

    raise typer.Exit(run_demo())


@tenants_app.command("create")
def tenants_create(
    name: str,
    plan: Annotated[str, typer.Option(help="A plan defined in the policy.")],
    timezone: Annotated[
        str, typer.Option(help="Quotas reset at midnight here (IANA name).")
    ] = "UTC",
    billing_day: Annotated[
        int, typer.Option(min=1, max=31, help="Monthly quotas reset on this day.")
    ] = 1,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Create a tenant on a plan."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        err.print(f"[red]error:[/red] unknown time zone {timezone!r}")
        raise typer.Exit(2) from None
    if url:
        body = {"name": name, "plan": plan, "timezone": timezone, "billing_day": billing_day}
        made = _remote(url, token, "POST", "/admin/v1/tenants", body)
    else:

        async def action(db: Database, policy: Policy, settings: Settings) -> dict[str, Any]:
            if plan not in policy.plans:
                raise DatabaseError(
                    f"no plan {plan!r} in the policy (plans: {', '.join(policy.plans)})"
                )
            repo = AdminRepo(db, settings.server_secret())
            return tenant_json(
                await repo.create_tenant(CLI_ACTOR, name, plan, timezone, billing_day)
            )

        made = _with_db(config, action)
    typer.echo(json.dumps(made) if as_json else f"created tenant {made['name']} "
               f"({made['id']}) on plan {made['plan']}")  # fmt: skip


@tenants_app.command("list")
def tenants_list(
    config: ConfigOpt = None, as_json: JsonOpt = False, url: UrlOpt = None, token: TokenOpt = None
) -> None:
    """List tenants."""
    if url:
        rows = _remote(url, token, "GET", "/admin/v1/tenants")["data"]
    else:

        async def action(db: Database, _: Policy, __: Settings) -> list[dict[str, Any]]:
            return [tenant_json(r) for r in await db.list_tenants()]

        rows = _with_db(config, action)
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table("name", "id", "plan", "status", "created")
    for t in rows:
        table.add_row(t["name"], t["id"], t["plan"], t["status"], t["created_at"])
    Console().print(table)


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="The tenant the key belongs to.")],
    name: Annotated[str | None, typer.Option(help="A label for the key.")] = None,
    user: Annotated[str | None, typer.Option(help="The user this key acts for.")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Create an API key. It is printed once, alone on the last line; store it now."""
    if url:
        made = _remote(url, token, "POST", "/admin/v1/keys",
                       {"tenant": tenant, "name": name, "user": user})  # fmt: skip
        if as_json:
            typer.echo(json.dumps({"key_id": made["key_id"], "tenant": tenant, "key": made["key"]}))
        else:
            err.print(f"key {made['key_id']} for tenant {tenant} (shown once):")
            typer.echo(made["key"])
        return

    async def action(db: Database, _: Policy, settings: Settings) -> None:
        repo = AdminRepo(db, settings.server_secret())
        row, plaintext = await repo.create_key(CLI_ACTOR, tenant, name, user)
        key_id = row.id
        if as_json:
            typer.echo(json.dumps({"key_id": key_id, "tenant": tenant, "key": plaintext}))
        else:
            err.print(f"key {key_id} for tenant {tenant} (shown once):")
            typer.echo(plaintext)

    _with_db(config, action)


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """List keys (ids and state; never the keys themselves)."""
    from quotagate.auth.keys import display_prefix

    def show(items: list[dict[str, Any]]) -> None:
        if as_json:
            typer.echo(json.dumps(items))
            return
        table = Table("key id", "prefix", "tenant", "name", "created", "revoked")
        for i in items:
            table.add_row(
                i["key_id"], display_prefix(i["key_id"]), i["tenant"], i["name"] or "",
                i["created_at"], i["revoked_at"] or "",
            )  # fmt: skip
        Console().print(table)

    if url:
        query = f"?tenant={quote(tenant, safe='')}" if tenant else ""
        show(_remote(url, token, "GET", f"/admin/v1/keys{query}")["data"])
        return

    async def action(db: Database, _: Policy, __: Settings) -> None:
        show([key_json(r) for r in await db.list_keys(tenant)])

    _with_db(config, action)


@keys_app.command("revoke")
def keys_revoke(
    key_id: str, config: ConfigOpt = None, url: UrlOpt = None, token: TokenOpt = None
) -> None:
    """Revoke a key by its id. Gateways sharing a Redis store refuse it at once, the
    others within auth.key_cache_ttl."""

    async def local(repo: AdminRepo) -> tuple[Any, Stale]:
        return await repo.revoke_key(CLI_ACTOR, key_id), Stale(keys=(key_id,))

    path = f"/admin/v1/keys/{quote(key_id, safe='')}/revoke"
    _change(url, token, ("POST", path, None), local, config)
    typer.echo(f"revoked key {key_id}")


def _change(
    url: str | None,
    token: str | None,
    remote: tuple[str, str, dict[str, Any] | None] | None,
    local: Callable[[AdminRepo], Awaitable[tuple[Any, Stale]]],
    config: str | None,
) -> Any:
    """One admin change: through a running admin API (``--url``), or on the database
    as the CLI's operator, telling gateways on a shared Redis what went stale."""
    if url:
        assert remote is not None, "a command with --url says what to call"
        method, path, body = remote
        return _remote(url, token, method, path, body)
    from quotagate.auth.invalidation import publish_once

    async def action(db: Database, policy: Policy, settings: Settings) -> Any:
        result, stale = await local(AdminRepo(db, settings.server_secret()))
        await publish_once(policy.store.url, policy.store.prefix, stale)
        return result

    return _with_db(config, action)


@tenants_app.command("update")
def tenants_update(
    name: str,
    plan: Annotated[str | None, typer.Option(help="Move the tenant to this plan.")] = None,
    status: Annotated[
        str | None, typer.Option(help="active, or suspended (the kill switch).")
    ] = None,
    config: ConfigOpt = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Change a tenant's plan or status; every instance applies it at once."""
    if status not in (None, "active", "suspended"):
        err.print("[red]error:[/red] --status is active or suspended")
        raise typer.Exit(2)

    async def local(repo: AdminRepo) -> tuple[Any, Stale]:
        row = await repo.update_tenant(CLI_ACTOR, name, plan, status)
        return row, Stale(tenants=(name,))

    body = {k: v for k, v in (("plan", plan), ("status", status)) if v is not None}
    _change(url, token, ("PATCH", f"/admin/v1/tenants/{quote(name, safe='')}", body), local, config)
    typer.echo(f"updated tenant {name}")


@keys_app.command("rotate")
def keys_rotate(
    key_id: str,
    overlap: Annotated[str, typer.Option(help="How long the old key keeps working.")] = "1h",
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """A new key for the same tenant, name and user; the old one works for --overlap."""
    from quotagate.config.durations import parse_duration

    try:
        seconds = 0.0 if overlap.strip() in ("0", "0s") else parse_duration(overlap)
    except ValueError as exc:
        err.print(f"[red]error:[/red] --overlap: {exc}")
        raise typer.Exit(2) from None

    async def local(repo: AdminRepo) -> tuple[Any, Stale]:
        row, plaintext = await repo.rotate_key(CLI_ACTOR, key_id, seconds)
        return {"key_id": row.id, "key": plaintext, "replaces": key_id}, Stale(keys=(key_id,))

    path = f"/admin/v1/keys/{quote(key_id, safe='')}/rotate"
    made = _change(url, token, ("POST", path, {"overlap_seconds": seconds}), local, config)
    if as_json:
        typer.echo(json.dumps({k: made[k] for k in ("key_id", "key", "replaces")}))
    else:
        err.print(f"key {made['key_id']} replaces {key_id} (which works for {overlap} more):")
        typer.echo(made["key"])


@keys_app.command("expire")
def keys_expire(
    key_id: str,
    at: Annotated[str, typer.Option(help="A duration from now (30d) or an ISO date/time.")],
    config: ConfigOpt = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Set the time a key stops working."""
    from quotagate.budget.credits import expiry

    try:
        when = expiry(at)
    except ValueError:
        err.print("[red]error:[/red] --at is a duration (30d) or an ISO date/time")
        raise typer.Exit(2) from None

    async def local(repo: AdminRepo) -> tuple[Any, Stale]:
        row = await repo.revoke_key(CLI_ACTOR, key_id, when, action="key.expire")
        return row, Stale(keys=(key_id,))

    path = f"/admin/v1/keys/{quote(key_id, safe='')}/expire"
    _change(url, token, ("POST", path, {"at": at}), local, config)
    typer.echo(f"key {key_id} expires at {when.isoformat() if when else at}")


@keys_app.command("bypass")
def keys_bypass(
    key_id: str,
    reason: Annotated[str, typer.Option(help="Why (kept in the audit log).")],
    on: Annotated[bool, typer.Option("--on/--off", help="Switch the bypass on or off.")] = True,
    config: ConfigOpt = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Emergency bypass: a critical key skips every limit, quota and budget while on."""

    async def local(repo: AdminRepo) -> tuple[Any, Stale]:
        return await repo.set_bypass(CLI_ACTOR, key_id, on, reason), Stale(keys=(key_id,))

    path = f"/admin/v1/keys/{quote(key_id, safe='')}/bypass"
    _change(url, token, ("POST", path, {"enabled": on, "reason": reason}), local, config)
    typer.echo(f"bypass {'ON' if on else 'off'} for key {key_id}")


@app.command()
def audit(
    target: Annotated[str | None, typer.Option(help="Only changes to this id or name.")] = None,
    action: Annotated[str | None, typer.Option(help="Only this action (key.revoke).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """The audit log of admin changes, newest first."""
    if url:
        params = {k: v for k, v in (("target", target), ("action", action)) if v}
        query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
        rows = _remote(url, token, "GET", f"/admin/v1/audit?limit={limit}&{query}")["data"]
    else:

        async def read(db: Database, _: Policy, settings: Settings) -> list[Any]:
            entries = await AdminRepo(db, settings.server_secret()).audit_entries(
                target, action, limit
            )
            return [e.as_json() for e in entries]

        rows = _with_db(config, read)
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table("at", "actor", "action", "target")
    for r in rows:
        table.add_row(r["at"], r["actor"], r["action"], r["target"])
    Console().print(table)


@config_app.command("check")
def config_check(
    file: Annotated[
        str | None, typer.Argument(help="Policy file (default: the bundled one).")
    ] = None,
) -> None:
    """Validate a policy file offline; exits non-zero and names every bad field."""
    try:
        policy = load_policy(file)
    except ConfigError as exc:
        err.print(f"[red]invalid[/red] {file or '(bundled default)'}:")
        err.print(str(exc), markup=False, highlight=False)
        raise typer.Exit(1) from None
    typer.echo(
        f"ok: {file or '(bundled default)'}: {len(policy.models)} models, {len(policy.plans)} plans"
    )


@limits_app.command("inspect")
def limits_inspect(
    tenant: Annotated[str | None, typer.Option(help="The tenant whose counters to show.")] = None,
    key: Annotated[str | None, typer.Option(help="Only this key's counters (a key id).")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the live counters of a tenant or a key, read from the Redis store."""
    from quotagate.config.snapshot import Snapshot
    from quotagate.limits.inspect import inspect_tenant
    from quotagate.store.redis import connect

    if tenant is None and key is None:
        err.print("[red]error:[/red] give --tenant NAME or --key KEY_ID")
        raise typer.Exit(2)

    async def action(db: Database, policy: Policy, _: Settings) -> list[dict[str, object]]:
        if policy.store.url.startswith("memory://"):
            raise DatabaseError(
                "the memory store lives inside the gateway process; inspect reads a Redis "
                "store (store.url redis://…)"
            )
        if key is not None:
            row = await db.find_key(key)
            if row is None:
                raise DatabaseError(f"no key with id {key!r}")
            tenant_id = row.tenant_id
        else:
            tenant_id = (await db.get_tenant(str(tenant))).id
        client = connect(policy.store.url, timeout=5.0)
        try:
            states = await inspect_tenant(
                client, policy.store.prefix, tenant_id, Snapshot.compile(policy), key
            )
        finally:
            await client.aclose()
        return [dataclasses.asdict(s) for s in states]

    rows = _with_db(config, action)
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table("limit", "algorithm", "amount", "used", "remaining", "full again in")
    for r in rows:
        table.add_row(
            str(r["limit"]), str(r["algorithm"]), str(r["amount"]), str(r["used"]),
            str(r["remaining"]), f"{float(str(r['resets_in'])):.1f}s",
        )  # fmt: skip
    Console().print(table if rows else "no live counters")


@credits_app.command("add")
def credits_add(
    tenant: str,
    budget: Annotated[
        float | None, typer.Option(help="An amount of money (the budget's currency).")
    ] = None,
    tokens: Annotated[int | None, typer.Option(help="Tokens (tenant token quotas).")] = None,
    kind: Annotated[
        str, typer.Option(help="topup or burst: added; override: replaces the plan's amount.")
    ] = "topup",
    expires: Annotated[
        str | None, typer.Option(help="A duration (2h, 7d) or an ISO time; none: never.")
    ] = None,
    note: Annotated[str | None, typer.Option(help="Why (kept with the credit).")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Grant a tenant a top-up, a burst credit that expires, or an override."""
    from quotagate.budget.credits import credit_json, credit_request

    try:
        resource, amount, expires_at = credit_request(kind, budget, tokens, expires)
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None

    async def local(repo: AdminRepo) -> tuple[Any, Stale]:
        credit = await repo.add_credit(CLI_ACTOR, tenant, kind, resource, amount, expires_at, note)
        return credit_json(credit), Stale(tenants=(tenant,))

    item = _change(None, None, None, local, config)
    typer.echo(json.dumps(item) if as_json else f"added {kind} {item['amount']} {resource} "
               f"to {tenant} (expires {item['expires_at'] or 'never'})")  # fmt: skip


@credits_app.command("list")
def credits_list(
    tenant: str,
    active: Annotated[bool, typer.Option(help="Only credits valid now.")] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List a tenant's credits and overrides."""
    from quotagate.budget.credits import credit_json

    async def action(db: Database, _: Policy, __: Settings) -> None:
        row = await db.get_tenant(tenant)
        items = [credit_json(c) for c in await db.list_credits(row.id, active_only=active)]
        if as_json:
            typer.echo(json.dumps(items))
            return
        table = Table("id", "kind", "resource", "amount", "expires", "note")
        for i in items:
            table.add_row(
                str(i["id"]), str(i["kind"]), str(i["resource"]), str(i["amount"]),
                str(i["expires_at"] or "never"), str(i["note"] or ""),
            )  # fmt: skip
        Console().print(table)

    _with_db(config, action)


@app.command()
def usage(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant (a name).")] = None,
    by: Annotated[
        str, typer.Option(help="Group by, comma-separated: tenant, key, model, day, status.")
    ] = "tenant,model",
    since: Annotated[str | None, typer.Option(help="From this date/time (ISO, UTC).")] = None,
    until: Annotated[str | None, typer.Option(help="Until this date/time (ISO, UTC).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, json or csv.")] = "table",
    config: ConfigOpt = None,
) -> None:
    """Usage and cost from the ledger, grouped (tenants shown by name)."""
    from datetime import datetime

    from quotagate.budget.usage_report import (
        format_rows,
        report_currency,
        usage_report,
        with_tenant_name,
    )

    groups = [g.strip() for g in by.split(",") if g.strip()]
    try:
        start = datetime.fromisoformat(since) if since else None
        end = datetime.fromisoformat(until) if until else None
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if fmt not in ("table", "json", "csv"):
        err.print("[red]error:[/red] --format is table, json or csv")
        raise typer.Exit(2)

    async def action(db: Database, policy: Policy, _: Settings) -> str:
        tenant_id = (await db.get_tenant(tenant)).id if tenant else None
        try:
            rows = await usage_report(
                db.engine, group_by=groups, since=start, until=end, tenant_id=tenant_id
            )
        except ValueError as exc:
            raise DatabaseError(str(exc)) from None
        names = {t.id: t.name for t in await db.list_tenants()}
        rows = [with_tenant_name(row, names) for row in rows]
        return format_rows(rows, fmt, report_currency(policy))  # type: ignore[arg-type]

    typer.echo(_with_db(config, action), nl=False)


@ledger_app.command("reconcile")
def ledger_reconcile(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant (a name).")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Compare ledger totals with the live quota counters; exit 1 on drift."""
    from quotagate.budget.reconcile import reconcile_tenant
    from quotagate.config.snapshot import Snapshot
    from quotagate.store.redis import connect

    async def action(db: Database, policy: Policy, _: Settings) -> list[Any]:
        if policy.store.url.startswith("memory://"):
            raise DatabaseError(
                "the memory store lives inside the gateway process; reconcile reads a Redis "
                "store (store.url redis://…)"
            )
        tenants = [await db.get_tenant(tenant)] if tenant else await db.list_tenants()
        snapshot = Snapshot.compile(policy)
        client = connect(policy.store.url, timeout=5.0)
        try:
            return [
                d
                for t in tenants
                for d in await reconcile_tenant(db.engine, client, policy.store.prefix, snapshot, t)
            ]
        finally:
            await client.aclose()

    drifts = _with_db(config, action)
    if as_json:
        typer.echo(json.dumps([{**dataclasses.asdict(d), "drift": d.drift} for d in drifts]))
    else:
        table = Table(
            "tenant", "quota", "unit", "period from", "counter", "ledger", "in flight", "drift"
        )
        for d in drifts:
            table.add_row(
                d.tenant, d.quota, d.unit, d.period_start, str(d.counter), str(d.ledger),
                str(d.in_flight), str(d.drift),
            )  # fmt: skip
        Console().print(table if drifts else "no tenant quotas to reconcile")
    if any(d.drift for d in drifts):
        raise typer.Exit(1)


@admin_tokens_app.command("create")
def admin_tokens_create(name: str, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Create an admin API token; printed once, stored hashed."""

    async def action(db: Database, _: Policy, settings: Settings) -> tuple[str, str]:
        return await AdminRepo(db, settings.server_secret()).create_token(name, CLI_ACTOR)

    token_id, token = _with_db(config, action)
    if as_json:
        typer.echo(json.dumps({"id": token_id, "name": name, "token": token}))
    else:
        typer.echo(f"admin token {token_id} ({name}); shown once:\n{token}")


@admin_tokens_app.command("revoke")
def admin_tokens_revoke(token_id: str, config: ConfigOpt = None) -> None:
    """Revoke an admin API token."""

    async def action(db: Database, _: Policy, settings: Settings) -> None:
        await AdminRepo(db, settings.server_secret()).revoke_token(token_id, CLI_ACTOR)

    _with_db(config, action)
    typer.echo(f"revoked admin token {token_id}")


@tokenizer_app.command("seed")
def tokenizer_seed(
    files: Annotated[list[Path], typer.Argument(help="cl100k_base.tiktoken[.gz], ...")],
    cache_dir: Annotated[
        Path | None, typer.Option(help="Default: $TIKTOKEN_CACHE_DIR.", show_default=False)
    ] = None,
) -> None:
    """Install encoding files into tiktoken's cache, for a gateway with no internet."""
    from quotagate.budget.estimate import seed_cache

    directory = cache_dir or (Path(d) if (d := os.environ.get("TIKTOKEN_CACHE_DIR")) else None)
    if directory is None:
        err.print("[red]error:[/red] set TIKTOKEN_CACHE_DIR (the gateway reads it) or --cache-dir")
        raise typer.Exit(2)
    try:
        seeded = seed_cache(files, directory)
    except (OSError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    typer.echo(f"seeded {', '.join(seeded)} into {directory}")


def main() -> None:
    app()


# Identity commands live in their own module, which imports the helpers above.
from quotagate.cli_identity import clients_app, oauth_app  # noqa: E402

app.add_typer(clients_app, name="clients")
app.add_typer(oauth_app, name="oauth")
