"""Counter keys: scopes, combinations, header values, and the tenant hash tag."""

from __future__ import annotations

from quotagate.config.schema import LimitRule
from quotagate.limits.policy import ScopeValues, compile_limit

VALUES = ScopeValues(
    "t1", "k1", "u1", "10.0.0.9", "gpt-4", "chat.completions",
    [(b"x-quotagate-class", b"batch"), (b"authorization", b"Bearer secret")],
)  # fmt: skip


def key_for(scope: object) -> str:
    rule = LimitRule.model_validate({"scope": scope, "requests": 5, "per": "1m"})
    return compile_limit(rule, "free.").counter_key(VALUES)


def test_tenant_scopes_share_the_tenant_hash_tag() -> None:
    for scope in ("tenant", "key", "user", ["tenant", "model"]):
        assert key_for(scope).startswith("rl:{t:t1}:")


def test_cross_tenant_scopes_are_tagged_by_their_own_value() -> None:
    assert key_for("ip") == "rl:{10.0.0.9}:free.ip-requests-1m:10.0.0.9"
    assert key_for("global") == "rl:{}:free.global-requests-1m:"
    assert key_for("model") == "rl:{gpt-4}:free.model-requests-1m:gpt-4"


def test_combination_keys_hold_every_value() -> None:
    assert key_for(["tenant", "model"]) == "rl:{t:t1}:free.tenant+model-requests-1m:t1:gpt-4"


def test_header_scope_uses_the_header_value_and_never_other_headers() -> None:
    key = key_for("header:x-quotagate-class")
    assert key.endswith(":batch") and "secret" not in key
    other = ScopeValues("t1", "k1", "u1", "ip", "m", "r", [])
    rule = LimitRule.model_validate({"scope": "header:X-Quotagate-Class", "requests": 5, "per": 60})
    assert compile_limit(rule).counter_key(other).endswith(":")


def test_header_values_cannot_forge_key_structure() -> None:
    forged = ScopeValues("t1", "k1", "u1", "ip", "m", "r", [(b"x-c", b"a:b}{t:victim}")])
    rule = LimitRule.model_validate({"scope": "header:x-c", "requests": 5, "per": 60})
    key = compile_limit(rule).counter_key(forged)
    assert key.count(":") == compile_limit(rule).counter_key(
        ScopeValues("t1", "k1", "u1", "ip", "m", "r", [(b"x-c", b"plain")])
    ).count(":")


def test_a_user_key_is_stable_and_keeps_tenants_apart() -> None:
    """The same key on a second call; the same user name in two tenants, two counters."""
    rule = LimitRule.model_validate({"scope": "user", "requests": 5, "per": "1m"})
    limit = compile_limit(rule, "free.")
    first = limit.counter_key(VALUES)
    assert first == "rl:{t:t1}:free.user-requests-1m:u1" == limit.counter_key(VALUES)
    other_tenant = VALUES._replace(tenant="t2")
    assert limit.counter_key(other_tenant) == "rl:{t:t2}:free.user-requests-1m:u1"
    for i in range(50):
        assert limit.counter_key(VALUES._replace(user=f"u{i}")).endswith(f":u{i}")
    assert limit.counter_key(VALUES) == first
