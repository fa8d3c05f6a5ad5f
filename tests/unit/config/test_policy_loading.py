"""Policy validation: every invalid fixture is refused with the path of its bad field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from quotagate.config.durations import format_go_duration, parse_duration
from quotagate.config.loader import load_policy, parse_policy
from quotagate.errors import ConfigError

INVALID = sorted((Path(__file__).parent / "invalid").glob("*.yaml"))
README = Path(__file__).parents[3] / "README.md"


def expected(fixture: Path) -> str:
    first = fixture.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{fixture.name} must start with '# expect: '"
    return first.removeprefix("# expect: ")


@pytest.mark.parametrize("fixture", INVALID, ids=[f.stem for f in INVALID])
def test_invalid_policy_names_the_bad_field(fixture: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_policy(fixture, env={})
    assert expected(fixture) in str(info.value)


@pytest.mark.parametrize("fixture", INVALID[:3], ids=[f.stem for f in INVALID[:3]])
def test_config_check_command_exits_nonzero_with_the_path(fixture: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "quotagate", "config", "check", str(fixture)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert expected(fixture) in result.stderr


def test_bundled_default_is_valid_and_has_the_three_plans() -> None:
    policy = load_policy(None, env={})
    assert set(policy.plans) == {"free", "pro", "enterprise"}
    assert policy.store.url == "memory://"
    assert policy.database.url == "sqlite+aiosqlite:///./data/quotagate.db"
    assert policy.mock_llm.enabled


def test_interpolation_with_defaults_and_values() -> None:
    text = """
server: {listen: "${HOST:-127.0.0.1}:${PORT}"}
models:
  m: {deployments: [{url: "http://${UP:-up}:1/v1"}]}
plans:
  p: {models: [m]}
"""
    policy = parse_policy(text, env={"PORT": "8123", "UP": "10.0.0.1"})
    assert policy.server.listen == "127.0.0.1:8123"
    assert policy.models["m"].deployments[0].url == "http://10.0.0.1:1/v1"


def test_policy_is_frozen() -> None:
    policy = load_policy(None, env={})
    with pytest.raises(ValueError):
        policy.server.max_body_bytes = 1  # type: ignore[misc]


def test_readme_example_policy_is_valid() -> None:
    """The policy example in the README stays true."""
    text = README.read_text()
    start = text.index("```yaml\n# policy.yaml") + len("```yaml\n")
    example = text[start : text.index("```", start)]
    policy = parse_policy(example, env={})
    assert policy.plans["free"].limits[0].requests == 10


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("10s", 10), ("1m", 60), ("2h", 7200), ("1d", 86400), (30, 30)],
)
def test_parse_duration(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["1x", "", "m", "-1s", "0s", True, None, "1.5.2m"])
def test_parse_duration_refuses(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.25, "250ms"),
        (1, "1s"),
        (6, "6s"),
        (59.2, "1m0s"),
        (60, "1m0s"),
        (360, "6m0s"),
        (3723, "1h2m3s"),
    ],
)
def test_go_durations(seconds: float, text: str) -> None:
    assert format_go_duration(seconds) == text
