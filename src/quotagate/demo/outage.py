"""The outage scenario: gpt-4 runs in eu-west and us-east (a mock process each); the
demo stops one region, then the other, while a pro client keeps asking."""

from __future__ import annotations

import time
import urllib.request
from contextlib import suppress

from rich.table import Table

from .stage import Reply, Stage, chat, status_cell

ROUNDS = 4  # requests per phase


def _stop_mock(url: str) -> None:
    """Ask the region's mock to stop, and wait until it no longer answers."""
    request = urllib.request.Request(url + "/_mock/stop", method="POST", data=b"{}")
    with suppress(OSError), urllib.request.urlopen(request, timeout=5):
        pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1):
                pass
        except OSError:
            return  # refused: it is gone
        time.sleep(0.05)  # poll interval while it shuts down


def region_outage(stage: Stage) -> None:
    client = stage.client("pro")
    table = Table("phase", "status", "model", "deployment", "x-quotagate-fallback")
    phases = [
        ("both regions up", None, "gpt-4", "eu-west-1"),
        ("eu-west stopped", "eu-west", "gpt-4", "us-east-1"),
        ("us-east stopped too", "us-east", "gpt-3.5-turbo", None),
    ]
    for title, stop, model, deployment in phases:
        if stop is not None:
            _stop_mock(stage.regions[stop])
        replies: list[Reply] = [chat(client, "gpt-4", "Summarise our SLA.") for _ in range(ROUNDS)]
        for reply in replies:
            headers = reply.headers
            table.add_row(
                title, status_cell(reply.status), headers.get("x-quotagate-model", "-"),
                headers.get("x-quotagate-deployment", "-"), headers.get("x-quotagate-fallback", ""),
            )  # fmt: skip
            title = ""
        stage.expect(
            all(r.status == 200 for r in replies),
            f"{title or stop}: a client saw an error ({[r.status for r in replies]})",
        )
        served = {r.headers.get("x-quotagate-model") for r in replies}
        stage.expect(served == {model}, f"expected {model} to answer, got {served}")
        if deployment is not None:
            where = {r.headers.get("x-quotagate-deployment") for r in replies}
            stage.expect(where == {deployment}, f"expected {deployment}, got {where}")
    stage.console.print(table)
