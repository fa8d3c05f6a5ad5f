"""The model catalog: public model names → deployments, prepared for forwarding.

Everything a forward needs that does not change per request (URLs, the upstream
credential header, the aiohttp timeout object, the deployment's health record, its
header values) is built here once per policy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from quotagate.budget.pricing import Prices, micros_per_1m
from quotagate.config.schema import Deployment, HealthSignal, Model
from quotagate.observability.metrics import in_flight
from quotagate.routing.health import DeploymentHealth, HealthRegistry


@dataclass(slots=True, frozen=True, eq=False)
class Target:
    """One deployment, ready to receive a request."""

    model: str
    name: str
    base_url: str
    shown_url: str  # base_url without any credentials it holds: for logs
    region: str
    weight: int
    headers: tuple[tuple[str, str], ...]
    timeout: aiohttp.ClientTimeout
    idle: float  # the longest gap between two chunks once the answer has started
    total: float
    prices: Prices  # micro-units per 1M input / output tokens at this deployment
    health: DeploymentHealth
    signal: HealthSignal | None  # the upstream's own load figure, if it exposes one
    gauge: object  # quotagate_upstream_in_flight for this deployment
    header: tuple[tuple[bytes, bytes], ...]  # x-quotagate-model / -deployment
    cap_field: str  # where a chat request's output cap goes (models.<m>.max_tokens_field)

    @property
    def saturated(self) -> bool:
        return self.health.gate.full()


def deployment_name(dep: Deployment) -> str:
    """The configured name, else host:port (never credentials a URL might carry)."""
    if dep.name:
        return dep.name
    parts = urlsplit(dep.url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


def url_without_credentials(url: str) -> str:
    """An upstream URL without credentials a policy might have put in it."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"


def _target(model: str, spec: Model, dep: Deployment, health: HealthRegistry) -> Target:
    headers = [("content-type", "application/json")]
    if dep.api_key_env and (credential := os.environ.get(dep.api_key_env)):
        headers.append(("authorization", f"Bearer {credential}"))
    t = dep.timeouts
    # sock_read bounds the wait for the answer's headers; once they are in, the forward
    # stage lowers it to the idle gap allowed between chunks. total bounds all.
    timeout = aiohttp.ClientTimeout(total=t.total, sock_connect=t.connect, sock_read=t.first_byte)
    name = deployment_name(dep)
    record = health.get(model, name, dep.region)
    gate = record.gate
    if gate.cap != dep.max_concurrency or gate.adaptive != health.adaptive:  # new, or reloaded
        gate.cap, gate.adaptive = dep.max_concurrency, health.adaptive
        gate.limit = health.limit_for(dep.max_concurrency)
    return Target(
        model, name, dep.url, url_without_credentials(dep.url), dep.region, dep.weight,
        tuple(headers), timeout, t.idle, t.total, micros_per_1m(dep.price or spec.price),
        record, dep.health_signal, in_flight(model, name),
        ((b"x-quotagate-model", model.encode()), (b"x-quotagate-deployment", name.encode())),
        spec.max_tokens_field,
    )  # fmt: skip


class ModelRoute:
    def __init__(self, name: str, model: Model, health: HealthRegistry) -> None:
        self.name = name
        self.scope = model.scope  # needed by callers on top of their plan
        self.fallback = tuple(model.fallback)
        self.targets = tuple(_target(name, model, d, health) for d in model.deployments)
        self.regions = frozenset(t.region for t in self.targets)
        self._tiers: dict[str | None, tuple[tuple[Target, ...], ...]] = {}

    def tiers(
        self, region: str | None, nearest: dict[str, list[str]]
    ) -> tuple[tuple[Target, ...], ...]:
        """The deployments in groups, nearest to ``region`` first (worked out once per
        region): the region itself, then its ``nearest`` list in order, then the rest."""
        tiers = self._tiers.get(region)
        if tiers is None:
            order = [region, *nearest.get(region, [])] if region else []
            ranked: list[tuple[Target, ...]] = []
            for r in order:
                group = tuple(t for t in self.targets if t.region == r)
                if group and group not in ranked:
                    ranked.append(group)
            rest = tuple(t for t in self.targets if t.region not in order)
            if rest:
                ranked.append(rest)
            tiers = self._tiers[region] = tuple(ranked)
        return tiers


def build_catalog(models: dict[str, Model], health: HealthRegistry) -> dict[str, ModelRoute]:
    catalog = {name: ModelRoute(name, model, health) for name, model in models.items()}
    for name, model in models.items():
        for alias in model.aliases:
            catalog[alias] = catalog[name]
    return catalog
