"""Who is calling, once authenticated."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class Principal:
    tenant_id: str
    tenant_name: str
    key_id: str
    user: str  # the key's user, or the key id when the key names none
    plan: str
