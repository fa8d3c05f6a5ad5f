"""The model catalog: public model names → deployments, prepared for forwarding.

Everything a forward needs that does not change per request (URLs per endpoint, the
upstream credential header, the aiohttp timeout object) is built here once.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp

from quotagate.budget.pricing import micros_per_1m
from quotagate.config.schema import Deployment, Model, Price


@dataclass(slots=True, frozen=True)
class Target:
    """One deployment, ready to receive a request."""

    model: str
    index: int
    base_url: str
    region: str
    headers: tuple[tuple[str, str], ...]
    timeout: aiohttp.ClientTimeout


def _target(model: str, index: int, dep: Deployment) -> Target:
    headers = [("content-type", "application/json")]
    if dep.api_key_env and (credential := os.environ.get(dep.api_key_env)):
        headers.append(("authorization", f"Bearer {credential}"))
    t = dep.timeouts
    # sock_read bounds the wait for the first byte and every later gap; total bounds all.
    timeout = aiohttp.ClientTimeout(total=t.total, sock_connect=t.connect, sock_read=t.first_byte)
    return Target(model, index, dep.url, dep.region, tuple(headers), timeout)


class ModelRoute:
    def __init__(self, name: str, model: Model) -> None:
        self.name = name
        self.scope = model.scope  # needed by callers on top of their plan
        self.price: Price = model.price
        self.prices = micros_per_1m(model.price)
        self.targets = tuple(_target(name, i, d) for i, d in enumerate(model.deployments))
        weighted = [
            t for t, d in zip(self.targets, model.deployments, strict=True) for _ in range(d.weight)
        ]
        self._rotation: Iterator[Target] = itertools.cycle(weighted)

    def pick(self) -> Target:
        """Weighted round robin over the deployments."""
        return next(self._rotation)


def build_catalog(models: dict[str, Model]) -> dict[str, ModelRoute]:
    return {name: ModelRoute(name, model) for name, model in models.items()}
