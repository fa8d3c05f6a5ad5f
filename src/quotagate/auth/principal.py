"""Who is calling, once authenticated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class Grant(NamedTuple):
    """A tenant's change to one quota resource, as of when its key was loaded."""

    override: int | None  # replaces the plan's amount
    extra: int  # top-ups and burst credits still valid

    def apply(self, amount: int) -> int:
        return (amount if self.override is None else self.override) + self.extra


@dataclass(slots=True, frozen=True)
class Principal:
    tenant_id: str
    tenant_name: str
    key_id: str  # an API key's id, an OAuth client's id, or a JWT subject's digest
    user: str  # the key's user, or the key id when the key names none
    plan: str
    zone: tuple[str, int] = ("UTC", 1)  # the tenant's time zone and billing day
    grants: dict[str, Grant] | None = None  # by resource: "budget", "tokens", "rate"
    scopes: tuple[str, ...] = ()  # a JWT's scopes (API keys carry none)
    bypass: bool = False  # an emergency bypass: no limit, quota or budget applies
