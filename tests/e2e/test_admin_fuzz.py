"""schemathesis against the running admin API: for inputs generated from its own
OpenAPI document, never a 5xx, always an OpenAI-shaped error, never a secret back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from harness import Gateway, policy


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, upstream: str) -> Iterator[Gateway]:
    gw = Gateway(tmp_path_factory.mktemp("admin-fuzz"), policy(upstream)).start()
    gw.cli("tenants", "create", "fuzzed", "--plan", "pro")
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def token(gateway: Gateway) -> str:
    return str(json.loads(gateway.cli("admin-tokens", "create", "fuzz", "--json"))["token"])


def test_no_input_breaks_the_admin_api(gateway: Gateway, token: str) -> None:
    """Every operation of the document, 25 generated requests each (positive and
    negative: schemathesis also sends what the schema forbids)."""
    schema = schemathesis.openapi.from_url(gateway.admin_url + "/admin/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    headers = {"authorization": f"Bearer {token}"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        def call(case: Any) -> None:
            response = case.call(base_url=gateway.admin_url, headers=headers, timeout=10)
            assert response.status_code < 500, (case.method, case.path, response.text)
            assert token not in response.text and token.split("_", 1)[1] not in response.text
            if response.status_code >= 400:
                error = response.json()["error"]
                assert set(error) == {"message", "type", "param", "code"}, response.text

        call()
