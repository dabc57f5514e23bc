"""`ringmaster andon pull|release|status` against a real `ringmaster serve` over HTTP, with tokens
made by `ringmaster token create`."""

from __future__ import annotations

import json

from tests.test_cli import cli_token, run, server  # noqa: F401  (server is a fixture)


def test_pull_status_and_release_from_the_command_line(server: dict[str, str]) -> None:  # noqa: F811
    puller = {**server, "RINGMASTER_TOKEN": cli_token(server, "paula", "puller")}
    releaser = {**server, "RINGMASTER_TOKEN": cli_token(server, "rita", "releaser")}
    assert "the line runs" in run(puller, "andon", "status").stdout

    pulled = run(puller, "andon", "pull", "--reason", "checkout errors up", "--rollout", "shop/web")
    assert "pulled the andon cord over rollout shop/web" in pulled.stdout
    status = json.loads(run(puller, "andon", "status", "--json").stdout)
    [active] = status["active"]
    assert (active["actor"], active["via"], active["reason"]) == ("paula", "cli", "checkout errors up")
    assert "shop/web" in run(puller, "andon", "status").stdout

    refused = run(puller, "andon", "release", "--reason", "fixed", check=False)
    assert refused.returncode == 1 and "403" in refused.stderr and "releaser" in refused.stderr
    assert "--reason is required" in run(releaser, "andon", "release", check=False).stderr
    released = run(releaser, "andon", "release", "--reason", "config rolled back")  # the only active pull
    assert f"released pull {active['id']}" in released.stdout
    record = json.loads(run(releaser, "andon", "status", "--history", "5", "--json").stdout)
    assert record["active"] == [] and [event["kind"] for event in record["history"]][:2] == ["release", "pull"]


def test_a_pull_needs_a_reason_and_a_token(server: dict[str, str]) -> None:  # noqa: F811
    anonymous = {key: value for key, value in server.items() if key != "RINGMASTER_TOKEN"}
    refused = run(anonymous, "andon", "pull", "--reason", "an incident", check=False)
    assert refused.returncode == 1 and "401" in refused.stderr
    puller = {**server, "RINGMASTER_TOKEN": cli_token(server, "pat", "puller")}
    short = run(puller, "andon", "pull", "--reason", "no", check=False)
    assert short.returncode == 1 and "reason" in short.stderr
