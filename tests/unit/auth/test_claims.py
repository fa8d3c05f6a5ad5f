"""Claim mapping: names, dotted paths into nested claims, namespaced claim names."""

from __future__ import annotations

from quotagate.auth.jwt_auth import claim_at, derived_id

KEYCLOAK = {"sub": "u1", "realm_access": {"roles": ["offline_access", "pro"]}, "azp": "cli"}


def test_a_plain_claim() -> None:
    assert claim_at(KEYCLOAK, "sub") == "u1"


def test_a_dotted_path_into_nested_claims() -> None:
    assert claim_at(KEYCLOAK, "realm_access.roles") == ["offline_access", "pro"]
    assert claim_at(KEYCLOAK, "realm_access.missing") is None
    assert claim_at(KEYCLOAK, "sub.deeper") is None


def test_a_claim_whose_name_has_dots_wins_over_a_path() -> None:
    auth0 = {"https://quotagate.example.com/org": "acme"}
    assert claim_at(auth0, "https://quotagate.example.com/org") == "acme"


def test_derived_ids_are_stable_short_and_per_issuer() -> None:
    one = derived_id("https://a.example.com", "acme")
    assert one == derived_id("https://a.example.com", "acme")
    assert one != derived_id("https://b.example.com", "acme")
    assert len(one) == 32
