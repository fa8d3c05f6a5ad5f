"""Load a policy file: YAML → ``${ENV}`` interpolation → schema → cross-checks.

Every failure is a ``ConfigError`` whose lines read ``path.to[0].field: why``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from quotagate.budget.estimate import EstimatorUnavailable, estimator_of
from quotagate.config.schema import Policy
from quotagate.errors import ConfigError

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
DEFAULT_POLICY = "default.yaml"


def format_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(root)"


def interpolate(node: Any, env: Mapping[str, str], loc: tuple[int | str, ...] = ()) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of a parsed YAML tree."""
    if isinstance(node, dict):
        return {k: interpolate(v, env, (*loc, str(k))) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env, (*loc, i)) for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(f"{format_path(loc)}: environment variable {name} is not set")

    return _VAR.sub(substitute, node)


def _errors_from(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        lines.append(f"{format_path(tuple(err['loc']))}: {message}")
    return "\n".join(lines)


def _cross_check(policy: Policy) -> list[str]:
    problems = []
    for plan_name, plan in policy.plans.items():
        for i, model in enumerate(plan.models):
            if model != "*" and model not in policy.models:
                problems.append(f"plans.{plan_name}.models[{i}]: unknown model {model!r}")
    try:
        estimator_of(policy)
    except EstimatorUnavailable as exc:
        problems.append(f"accounting.estimator: {exc}")
    for path, route in policy.routes.items():
        if route.model not in policy.models:
            problems.append(f"routes.{path}.model: unknown model {route.model!r}")
    for i, issuer in enumerate(policy.auth.jwt):
        if issuer.default_plan is not None and issuer.default_plan not in policy.plans:
            problems.append(f"auth.jwt[{i}].default_plan: unknown plan {issuer.default_plan!r}")
    return problems


def parse_policy(text: str, env: Mapping[str, str] | None = None, source: str = "") -> Policy:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source or 'policy'}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{source or 'policy'}: expected a mapping at the top level")
    raw = interpolate(raw, os.environ if env is None else env)
    try:
        policy = Policy.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_errors_from(exc)) from None
    if problems := _cross_check(policy):
        raise ConfigError("\n".join(problems))
    return policy


def default_policy_text() -> str:
    return resources.files("quotagate.config").joinpath(DEFAULT_POLICY).read_text("utf-8")


def load_policy(path: str | Path | None, env: Mapping[str, str] | None = None) -> Policy:
    """The policy at ``path``, or the bundled default when ``path`` is None."""
    if path is None:
        return parse_policy(default_policy_text(), env, source="bundled default")
    try:
        text = Path(path).read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    return parse_policy(text, env, source=str(path))
