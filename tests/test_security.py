"""Security of the service as a whole: every route that changes something needs a token (or says how else
it authenticates), no token or secret ever reaches a log, request bodies are bounded, browsers of other
origins get no CORS grant unless listed, an address that keeps sending wrong tokens is refused for a while,
and the controller's calls to Kubernetes are exactly what deploy/'s RBAC grants it, read from the API server's
audit log."""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import secrets
import signal
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from kubernetes import client
from sqlalchemy import text
from sqlalchemy.engine import make_url

from cohorts.db import make_engine, upgrade
from rollout.andon.scope import Scope
from rollout.andon.store import AndonStore
from rollout.api.app import create_app
from rollout.api.ratelimit import AuthFailures
from rollout.controller.controller import Controller, ControllerSettings
from rollout.controller.crd import install_crd
from rollout.controller.observed import REQUEST_ANNOTATION
from rollout.controller.spec import GROUP, PLURAL, VERSION
from rollout.localcluster.cluster import LocalCluster
from rollout.settings import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_USAGE_BODY_BYTES,
    ServiceSettings,
    SettingsError,
)
from rollout.slack.users import parse_slack_users
from tests.auth_helpers import bearer, create_token
from tests.conftest import DEFAULT_TEST_POSTGRES_URL, TEST_POSTGRES_URL_ENV
from tests.controller_harness import get_rollout, rollout, statefulset, wait_for, wait_ready
from tests.test_api import assert_problem
from tests.test_auth import EXISTING_CHANGES, filled
from tests.test_cli import REPOSITORY, RINGMASTER, free_port, wait_until_serving
from tests.test_deploy import (
    BASE,
    CONTROLLER,
    KUBERNETES_1_20,
    SYSTEM,
    granted,
    impersonating,
    kubectl,
    kustomize,
    needs_kubectl,
)
from tests.test_flags_api import STAFF, checkout
from tests.test_gates_e2e import VERSUS_BASELINE, new_version, traffic
from tests.test_slack import FakeSlack, sign, slash_command
from tests.test_slack import fake_slack as fake_slack  # the fixture: a fake Slack Web API on 127.0.0.1

CHANGE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
WRONG_TOKEN = "rmt_" + "w" * 43
# The mutating routes that take no API token, each with the reason. Any other route that changes
# something must refuse a missing and a wrong token with 401.
AUTHENTICATED_OTHERWISE = {
    ("POST", "/slack/events"): "Slack signs each request with the app's signing secret (HMAC-SHA256 of the body); "
                               "Slack cannot send a bearer token, so the signature is its authentication",
}
READS_BY_DESIGN = {
    ("POST", "/ofrep/v1/evaluate/flags/{key}"): "OFREP evaluates a flag for the context in the body: a read that "
                                                "changes nothing, open to apps like flags.json (OFREP is POST)",
    ("POST", "/ofrep/v1/evaluate/flags"): "OFREP bulk evaluation: the same read for every flag",
}
PREFIXES = ("/api/v1/", "/slack/", "/ofrep/", "/flagd/", "/dashboard")


def sqlite_database(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'ringmaster.db'}"
    upgrade(url)
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return sqlite_database(tmp_path)


# Every route, every method


def every_operation(settings: ServiceSettings) -> set[tuple[str, str]]:
    """(method, path) of every route the app serves, those left out of the OpenAPI document included."""
    return {(method, route.path) for route in iter_route_contexts(create_app(settings).routes)
            if route.path is not None for method in route.methods or ()}


def test_every_route_that_changes_something_refuses_a_missing_or_wrong_token(sqlite_url: str) -> None:
    settings = ServiceSettings(database_url=sqlite_url, slack_signing_secret="s" * 32, slack_bot_token="xoxb-x",
                               slack_api_url="http://127.0.0.1:9/api/", auth_failure_limit=0)
    operations = every_operation(settings)
    document = create_app(settings).openapi()
    documented = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    assert documented <= operations, f"documented but not served: {documented - operations}"
    for prefix in PREFIXES:
        assert any(path.startswith(prefix) for _, path in operations), f"no route under {prefix}"
    changes = sorted(operation for operation in operations if operation[0] in CHANGE_METHODS)
    assert set(changes) >= EXISTING_CHANGES | {("POST", "/api/v1/andon/pull"), ("POST", "/api/v1/andon/release")}
    exceptions = {**AUTHENTICATED_OTHERWISE, **READS_BY_DESIGN}
    assert set(exceptions) <= set(changes), "an exception names a route that is gone; remove it"
    with TestClient(create_app(settings)) as api:
        for method, path in changes:
            if (method, path) in exceptions:
                continue
            for headers in ({}, bearer(WRONG_TOKEN)):
                answer = api.request(method, filled(path), json={}, headers=headers)
                body = assert_problem(answer, 401)
                assert body["type"].endswith("/unauthenticated"), (method, path, body)
                assert answer.headers["WWW-Authenticate"].startswith('Bearer realm="ringmaster"'), (method, path)
        # The exceptions hold for the reason given: Slack's route refuses what Slack did not sign, bearer token or
        # not, and OFREP evaluates for anyone without writing anything.
        for headers in ({}, bearer(create_token(sqlite_url, "ana", "admin")), sign("text=pull", secret="x" * 32)):
            refused = api.post("/slack/events", content="text=pull", headers=headers)
            assert refused.status_code == 401 and refused.json()["type"].endswith("/bad-slack-signature")
        audit_before = api.get("/api/v1/audit").json()
        assert api.post("/ofrep/v1/evaluate/flags", json=STAFF).status_code == 200
        assert api.post("/ofrep/v1/evaluate/flags/nothing", json=STAFF).status_code == 404
        assert api.get("/api/v1/audit").json() == audit_before


# CORS


ORIGIN = "https://console.example.com"
STRANGER_ORIGIN = "https://evil.example.net"


def preflight(api: TestClient, origin: str, path: str = "/api/v1/flags") -> httpx.Response:
    answer: httpx.Response = api.options(path, headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    return answer


def test_cors_is_closed_by_default_no_origin_gets_a_grant(sqlite_url: str) -> None:
    with TestClient(create_app(ServiceSettings(database_url=sqlite_url))) as api:
        for origin in (ORIGIN, STRANGER_ORIGIN):
            for answer in (preflight(api, origin), preflight(api, origin, "/ofrep/v1/evaluate/flags"),
                           api.get("/api/v1/flags", headers={"Origin": origin}),
                           api.post("/ofrep/v1/evaluate/flags", json=STAFF, headers={"Origin": origin}),
                           api.get("/flagd/v1/flags.json", headers={"Origin": origin})):
                assert not [name for name in answer.headers if name.lower().startswith("access-control-")], (
                    answer.request.method, answer.request.url, answer.headers)
        assert preflight(api, ORIGIN).status_code == 405


def test_cors_origins_open_the_api_to_exactly_the_listed_origins(sqlite_url: str) -> None:
    settings = ServiceSettings(database_url=sqlite_url, cors_origins=(ORIGIN, "http://localhost:3000"))
    token = create_token(sqlite_url, "ana", "admin")
    with TestClient(create_app(settings)) as api:
        granted_preflight = preflight(api, ORIGIN)
        assert granted_preflight.status_code == 200
        assert granted_preflight.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert {"authorization", "content-type"} <= {
            name.strip().lower() for name in granted_preflight.headers["Access-Control-Allow-Headers"].split(",")}
        assert "POST" in granted_preflight.headers["Access-Control-Allow-Methods"]
        assert "Access-Control-Allow-Credentials" not in granted_preflight.headers  # bearer tokens, never cookies
        created = api.post("/api/v1/flags", json=checkout(), headers={**bearer(token), "Origin": ORIGIN})
        assert created.status_code == 201 and created.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert "ETag" in created.headers["Access-Control-Expose-Headers"]
        assert api.get("/api/v1/flags", headers={"Origin": "http://localhost:3000"}).headers[
            "Access-Control-Allow-Origin"] == "http://localhost:3000"
        refused = preflight(api, STRANGER_ORIGIN)
        assert refused.status_code == 400 and "Access-Control-Allow-Origin" not in refused.headers
        stranger = api.get("/api/v1/flags", headers={"Origin": STRANGER_ORIGIN})
        assert stranger.status_code == 200 and "Access-Control-Allow-Origin" not in stranger.headers


def test_cors_origins_come_from_the_environment_and_must_be_origins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RINGMASTER_CORS_ORIGINS", raising=False)
    assert ServiceSettings.from_environment().cors_origins == ()
    monkeypatch.setenv("RINGMASTER_CORS_ORIGINS", f" {ORIGIN}/, HTTP://LocalHost:3000,,{ORIGIN}")
    assert ServiceSettings.from_environment().cors_origins == (ORIGIN, "http://localhost:3000")
    for wrong in ("*", "console.example.com", "https://console.example.com/app", "https://user@console.example.com"):
        monkeypatch.setenv("RINGMASTER_CORS_ORIGINS", wrong)
        with pytest.raises(SettingsError, match=r"RINGMASTER_CORS_ORIGINS: .* is not an origin; give each as "
                                                r"scheme://host\[:port\]"):
            ServiceSettings.from_environment()


# Request body limits


def limited(sqlite_url: str, max_body_bytes: int = 1000, max_usage_body_bytes: int = 5000) -> ServiceSettings:
    return ServiceSettings(database_url=sqlite_url, max_body_bytes=max_body_bytes,
                           max_usage_body_bytes=max_usage_body_bytes)


def padded_flag(size: int) -> bytes:
    """A flag document of exactly `size` bytes (a long description), valid as far as its size allows."""
    document = {**checkout(), "description": ""}
    bare = len(json.dumps(document).encode())
    return json.dumps({**document, "description": "x" * (size - bare)}).encode()


def test_a_body_over_the_limit_is_refused_with_413_naming_the_limit_and_the_setting(sqlite_url: str) -> None:
    admin = bearer(create_token(sqlite_url, "ana", "admin"))
    with TestClient(create_app(limited(sqlite_url))) as api:
        headers = {**admin, "Content-Type": "application/json"}
        too_large = api.post("/api/v1/flags", content=padded_flag(1001), headers=headers)
        body = assert_problem(too_large, 413)
        assert body["type"].endswith("/content-too-large")
        assert "larger than 1,000 bytes, the limit RINGMASTER_MAX_BODY_BYTES sets" in body["detail"]
        assert body["detail"].startswith("POST /api/v1/flags:")
        # Refused before the route ran, token or not; at the limit it is served.
        assert assert_problem(api.post("/api/v1/flags", content=padded_flag(1001)), 413)["status"] == 413
        assert api.get("/api/v1/flags").json()["items"] == []
        assert api.post("/api/v1/flags", content=padded_flag(1000), headers=headers).status_code == 201
        # The same limit for every route, whatever its prefix.
        ofrep = api.post("/ofrep/v1/evaluate/flags", content=b"{" + b" " * 2000 + b"}",
                         headers={"Content-Type": "application/json"})
        assert assert_problem(ofrep, 413)["detail"].startswith("POST /ofrep/v1/evaluate/flags:")


def usage_rows(count: int, start: int = 0) -> list[dict[str, Any]]:
    """Rows as a usage export holds them: a UUID-like key, four metrics, when last seen and two attributes."""
    return [{"targetingKey": f"user-{index:08d}-4f1c-9a7e-{index:012d}",
             "metrics": {"active_days_30d": index % 30, "sessions_7d": index % 50, "seats": 12, "spend_90d": 1234.5},
             "lastSeenAt": "2024-05-01T12:00:00Z", "attributes": {"plan": "team", "country": "DE"}}
            for index in range(start, start + count)]


def test_usage_uploads_have_a_limit_of_their_own_that_fits_the_clis_batches(sqlite_url: str) -> None:
    admin = bearer(create_token(sqlite_url, "ana", "admin"))
    with TestClient(create_app(limited(sqlite_url))) as api:
        rows = usage_rows(10)
        size = len(json.dumps({"rows": rows}))
        assert 1000 < size <= 5000
        assert api.post("/api/v1/usage", json={"rows": rows}, headers=admin).json() == {"stored": 10}
        refused = assert_problem(api.post("/api/v1/usage", json={"rows": usage_rows(40)}, headers=admin), 413)
        assert "the limit RINGMASTER_MAX_USAGE_BODY_BYTES sets" in refused["detail"]
        assert "send fewer rows a request" in refused["detail"]
    # With the defaults a full batch of the CLI's (USAGE_BATCH_ROWS = 10,000 rows) passes, which the
    # default limit of every other route would refuse.
    from rollout.cli import USAGE_BATCH_ROWS

    batch = json.dumps({"rows": usage_rows(USAGE_BATCH_ROWS)}).encode()
    assert DEFAULT_MAX_BODY_BYTES < len(batch) < DEFAULT_MAX_USAGE_BODY_BYTES / 4
    with TestClient(create_app(ServiceSettings(database_url=sqlite_url))) as api:
        stored = api.post("/api/v1/usage", content=batch, headers={**admin, "Content-Type": "application/json"})
        assert stored.json() == {"stored": USAGE_BATCH_ROWS}


def test_a_chunked_body_is_counted_as_it_streams_and_refused_without_being_read_whole(sqlite_url: str) -> None:
    app = create_app(limited(sqlite_url, max_body_bytes=10 * 1024))
    sent: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"key": "big", "description": "'
        for index in range(1000):  # 1 MB in all, 100 times the limit
            sent.append(index)
            yield b"x" * 1024

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ringmaster") as http:
            return await http.post("/api/v1/flags", content=chunks(), headers={"Content-Type": "application/json"})

    answer = asyncio.run(post())
    assert "content-length" not in {name.lower() for name in answer.request.headers}
    assert answer.request.headers["Transfer-Encoding"] == "chunked"
    body = assert_problem(answer, 413)
    assert "larger than 10,240 bytes, the limit RINGMASTER_MAX_BODY_BYTES sets" in body["detail"]
    assert len(sent) <= 12, f"read {len(sent)} KiB of a body limited to 10 KiB"


def test_body_limits_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RINGMASTER_MAX_BODY_BYTES", "RINGMASTER_MAX_USAGE_BODY_BYTES"):
        monkeypatch.delenv(name, raising=False)
    settings = ServiceSettings.from_environment()
    assert (settings.max_body_bytes, settings.max_usage_body_bytes) == (1024 * 1024, 16 * 1024 * 1024)
    monkeypatch.setenv("RINGMASTER_MAX_BODY_BYTES", "2048")
    monkeypatch.setenv("RINGMASTER_MAX_USAGE_BODY_BYTES", "4096")
    settings = ServiceSettings.from_environment()
    assert (settings.max_body_bytes, settings.max_usage_body_bytes) == (2048, 4096)
    monkeypatch.setenv("RINGMASTER_MAX_BODY_BYTES", "1MB")
    with pytest.raises(SettingsError, match="RINGMASTER_MAX_BODY_BYTES='1MB' is not a positive whole number"):
        ServiceSettings.from_environment()


# Repeated authentication failures


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def wrong(api: TestClient) -> httpx.Response:
    answer: httpx.Response = api.post("/api/v1/flags/new-checkout/disable", headers=bearer(WRONG_TOKEN))
    return answer


def test_after_10_failures_in_60_s_an_address_gets_429_even_with_a_valid_token_until_the_window_passes(
        sqlite_url: str) -> None:
    clock = FakeClock()
    app = create_app(ServiceSettings(database_url=sqlite_url), clock=clock)
    token = create_token(sqlite_url, "ana", "admin")
    with TestClient(app, client=("203.0.113.7", 40000)) as attacker:
        neighbour = TestClient(app, client=("198.51.100.9", 40000))  # the same app, already started
        assert neighbour.post("/api/v1/flags", json=checkout(), headers=bearer(token)).status_code == 201
        for _ in range(9):
            assert wrong(attacker).status_code == 401
            clock.now += 5  # the 10 failures span 45 s, within the window
        assert wrong(attacker).status_code == 401
        refused = attacker.post("/api/v1/flags/new-checkout/disable", headers=bearer(token))
        body = assert_problem(refused, 429)
        assert body["type"].endswith("/too-many-authentication-failures")
        # The first failure was 45 s ago: the window of 60 s passes in 15 s.
        assert refused.headers["Retry-After"] == "15"
        assert "10 requests from 203.0.113.7 failed to authenticate within 60 s" in body["detail"]
        assert "RINGMASTER_AUTH_FAILURE_LIMIT" in body["detail"]
        assert assert_problem(wrong(attacker), 429)["status"] == 429
        assert attacker.get("/api/v1/flags", headers=bearer(token)).status_code == 429  # a read with a token too
        # What presents no credentials is no attempt: apps and open reads from that address carry on.
        assert attacker.get("/api/v1/flags").status_code == 200
        assert attacker.post("/ofrep/v1/evaluate/flags", json=STAFF).status_code == 200
        assert attacker.get("/flagd/v1/flags.json").status_code == 200
        # Another address with a valid token is unaffected, and can still fail on its own account.
        assert neighbour.post("/api/v1/flags/new-checkout/disable", headers=bearer(token)).status_code == 200
        assert wrong(neighbour).status_code == 401
        clock.now += 14
        assert attacker.post("/api/v1/flags/new-checkout/enable", headers=bearer(token)).headers[
            "Retry-After"] == "1"
        clock.now += 1
        enabled = attacker.post("/api/v1/flags/new-checkout/enable", headers=bearer(token))
        assert enabled.status_code == 200 and enabled.json()["createdBy"] == "ana"
        # The 2nd..10th failures are still within the window: one more failure blocks again.
        assert wrong(attacker).status_code == 401
        assert wrong(attacker).status_code == 429


def test_requests_without_credentials_are_never_counted_or_refused(sqlite_url: str) -> None:
    with TestClient(create_app(ServiceSettings(database_url=sqlite_url), clock=FakeClock())) as api:
        for _ in range(25):
            assert_problem(api.post("/api/v1/flags", json=checkout()), 401)
        assert api.post("/api/v1/flags", json=checkout(), headers=bearer(create_token(sqlite_url))).status_code == 201


def test_slack_signatures_are_not_counted_but_a_token_sent_to_slacks_route_is(sqlite_url: str) -> None:
    settings = ServiceSettings(database_url=sqlite_url, slack_signing_secret="s" * 32, slack_bot_token="xoxb-x",
                               slack_api_url="http://127.0.0.1:9/api/", auth_failure_limit=3)
    with TestClient(create_app(settings, clock=FakeClock())) as api:
        for _ in range(10):
            forged = api.post("/slack/events", content="text=pull", headers=sign("text=pull", secret="x" * 32))
            assert forged.json()["type"].endswith("/bad-slack-signature")
        for _ in range(3):
            assert api.post("/slack/events", content="text=pull", headers=bearer(WRONG_TOKEN)).status_code == 401
        assert_problem(api.post("/slack/events", content="text=pull", headers=bearer(WRONG_TOKEN)), 429)


def test_a_limit_of_0_turns_the_limit_off_and_the_limit_comes_from_the_environment(
        sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with TestClient(create_app(ServiceSettings(database_url=sqlite_url, auth_failure_limit=0))) as api:
        assert {wrong(api).status_code for _ in range(30)} == {401}
    for name in ("RINGMASTER_AUTH_FAILURE_LIMIT", "RINGMASTER_AUTH_FAILURE_WINDOW_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    settings = ServiceSettings.from_environment()
    assert (settings.auth_failure_limit, settings.auth_failure_window_s) == (10, 60)
    monkeypatch.setenv("RINGMASTER_AUTH_FAILURE_LIMIT", "0")
    monkeypatch.setenv("RINGMASTER_AUTH_FAILURE_WINDOW_SECONDS", "300")
    settings = ServiceSettings.from_environment()
    assert (settings.auth_failure_limit, settings.auth_failure_window_s) == (0, 300)
    monkeypatch.setenv("RINGMASTER_AUTH_FAILURE_LIMIT", "-1")
    with pytest.raises(SettingsError, match="RINGMASTER_AUTH_FAILURE_LIMIT='-1' is not a whole number"):
        ServiceSettings.from_environment()


def test_the_failures_kept_are_bounded_and_the_stalest_address_is_forgotten_first() -> None:
    clock = FakeClock()
    failures = AuthFailures(limit=1, window_s=60, clock=clock, max_addresses=2)
    for address in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        assert failures.failed(address)
        clock.now += 1
    assert failures.wait_s("192.0.2.1") == 0  # forgotten: 3 addresses, room for 2
    assert math.isclose(failures.wait_s("192.0.2.2"), 58) and math.isclose(failures.wait_s("192.0.2.3"), 59)
    clock.now += 100
    assert failures.failed("192.0.2.4")
    assert (failures.wait_s("192.0.2.2"), failures.wait_s("192.0.2.3")) == (0, 0)


# Tokens and secrets never in logs


@dataclass
class Captured:
    """Everything written down during a run, by where it was written."""

    texts: dict[str, str] = field(default_factory=dict)

    def add(self, what: str, text: str) -> None:
        self.texts[what] = self.texts.get(what, "") + text

    def leaks(self, secrets_by_name: dict[str, str]) -> list[str]:
        found = []
        for secret_name, secret in secrets_by_name.items():
            # The whole secret, and any 12 characters of it in a row: a secret cut short still leaks.
            pieces = {secret} | {secret[start:start + 12] for start in range(0, max(1, len(secret) - 11), 4)}
            for what, written in self.texts.items():
                if any(piece in written for piece in pieces):
                    found.append(f"{secret_name} in {what}")
        return found


@pytest.fixture
def password_database() -> Iterator[tuple[str, str]]:
    """A PostgreSQL database owned by a role with a password, and its URL: (url, password)."""
    admin_url = make_url(os.environ.get(TEST_POSTGRES_URL_ENV, DEFAULT_TEST_POSTGRES_URL))
    admin = make_engine(admin_url.render_as_string(hide_password=False)).execution_options(
        isolation_level="AUTOCOMMIT")
    suffix = secrets.token_hex(4)
    role, database, password = f"ringmaster_secret_user_{suffix}", f"ringmaster_secret_{suffix}", \
        f"s3cret-pw-{secrets.token_urlsafe(12)}"
    with admin.connect() as connection:
        connection.execute(text(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'"))
        connection.execute(text(f'CREATE DATABASE "{database}" OWNER "{role}"'))
    try:
        yield f"postgresql://{role}:{password}@{admin_url.host}:{admin_url.port or 5432}/{database}", password
    finally:
        with admin.connect() as connection:
            connection.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"),
                               {"name": database})
            connection.execute(text(f'DROP DATABASE IF EXISTS "{database}"'))
            connection.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()


def ringmaster(environment: dict[str, str], captured: Captured, *arguments: str, token: str | None = None,
               expect: int = 0) -> str:
    """Run the CLI (with `--token` when given), keep what it printed, and return its stdout."""
    command = [*RINGMASTER, *(("--token", token) if token else ()), *arguments]
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120, cwd=REPOSITORY)
    captured.add(f"`ringmaster {' '.join(arguments)}`", done.stdout + done.stderr)
    assert done.returncode == expect, f"ringmaster {' '.join(arguments)}: {done.returncode}\n{done.stdout}{done.stderr}"
    return done.stdout


def created_token(environment: dict[str, str], captured: Captured, name: str, role: str) -> str:
    """`ringmaster token create`: its last line is the token, shown there by design; the rest is checked."""
    done = subprocess.run([*RINGMASTER, "token", "create", "--name", name, "--role", role], env=environment,
                          capture_output=True, text=True, timeout=120, cwd=REPOSITORY)
    assert done.returncode == 0, done.stderr
    *said, token = done.stdout.strip().splitlines()
    captured.add(f"`ringmaster token create --name {name}` (but the token line)", "\n".join(said) + done.stderr)
    return token



SLACK_CHANNEL = "C0ANDON"
SLACK_PULLER, SLACK_VIEWER = "U0PULLER", "U0VIEWER"


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, so the process shuts down as it would in a cluster and writes what it writes then."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def over_the_limit_in_chunks(limit: int) -> Iterator[bytes]:
    """A body one byte over `limit`, in 64 KiB chunks, so the server has read all of it when it refuses it."""
    left = limit + 1
    while left > 0:
        size = min(left, 64 * 1024)
        left -= size
        yield b"x" * size


def test_no_token_or_secret_is_ever_written_to_a_log(
        local_cluster: LocalCluster, namespace: str, fake_slack: FakeSlack, password_database: tuple[str, str],
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url, password = password_database
    signing_secret, bot_token = secrets.token_hex(16), f"xoxb-{secrets.token_hex(16)}"
    wrong_token = "rmt_" + secrets.token_urlsafe(32)
    port = free_port()
    server = f"http://127.0.0.1:{port}"
    environment = {**os.environ, "RINGMASTER_DATA_DIR": str(tmp_path / "data"), "RINGMASTER_DATABASE_URL": url,
                   "RINGMASTER_SERVER": server, "RINGMASTER_KUBECONFIG": str(local_cluster.kubeconfig),
                   "RINGMASTER_SLACK_SIGNING_SECRET": signing_secret, "RINGMASTER_SLACK_BOT_TOKEN": bot_token,
                   "RINGMASTER_SLACK_CHANNEL": SLACK_CHANNEL, "RINGMASTER_SLACK_API_URL": fake_slack.url + "/api/",
                   "RINGMASTER_SLACK_USERS": f"{SLACK_PULLER}=puller,{SLACK_VIEWER}=viewer", "COLUMNS": "200"}
    for name in ("RINGMASTER_TOKEN", "RINGMASTER_READS_REQUIRE_TOKEN", "RINGMASTER_PROMETHEUS_URL", "KUBECONFIG"):
        environment.pop(name, None)
    captured = Captured()
    ringmaster(environment, captured, "db", "upgrade")
    admin = created_token(environment, captured, "ana", "admin")
    puller = created_token(environment, captured, "pat", "puller")
    releaser = created_token(environment, captured, "rex", "releaser")
    # A database that cannot be reached: the error names the server, never the password.
    unreachable = {**environment, "RINGMASTER_DATABASE_URL": re.sub(r":\d+/", ":1/", url)}
    ringmaster(unreachable, captured, "db", "current", expect=1)

    with local_cluster.api_client() as kube:
        install_crd(kube)
    serve_log, controller_log = tmp_path / "serve.log", tmp_path / "controller.log"
    with serve_log.open("wb") as serve_output, controller_log.open("wb") as controller_output:
        serving = subprocess.Popen([*RINGMASTER, "serve", "--port", str(port), "--sync-port", "0"], env=environment,
                                   stdout=serve_output, stderr=subprocess.STDOUT, cwd=REPOSITORY)
        controlling = subprocess.Popen(
            [*RINGMASTER, "controller", "--kubeconfig", str(local_cluster.kubeconfig), "--namespace", namespace,
             "--lease-namespace", namespace, "--identity", "leak-check", "--no-install-crd", "--workers", "2",
             "--retry-period", "1", "--metrics-address", "127.0.0.1:0"],
            env=environment, stdout=controller_output, stderr=subprocess.STDOUT, cwd=REPOSITORY)
        try:
            wait_until_serving(serving, port, serve_log)
            with local_cluster.api_client() as kube:
                client.AppsV1Api(kube).create_namespaced_stateful_set(
                    namespace, statefulset("web", 2, "registry.example.com/web:1"))
                wait_ready(kube, namespace, "web", 2)
                client.CustomObjectsApi(kube).create_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL,
                    rollout("web", "web", flag=f"web-v2-{secrets.token_hex(3)}", bakes=("1h", "0s", "0s", "0s")))

                def phase() -> str | None:
                    found: str | None = (get_rollout(kube, namespace, "web").get("status") or {}).get("phase")
                    return found

                wait_for("the canary to bake", lambda: (get_rollout(kube, namespace, "web").get("status") or {})
                         .get("bakeUntil"), 90)
                ringmaster(environment, captured, "flag", "set", "kill-switch", "--type", "boolean", "--variant",
                           "on=true", "--variant", "off=false", "--default", "on", token=admin)
                ringmaster(environment, captured, "cohort", "opt-in", "olga", token=admin)
                ringmaster({**environment, "RINGMASTER_TOKEN": admin}, captured, "flag", "disable", "kill-switch")
                ringmaster(environment, captured, "flag", "enable", "kill-switch", token=wrong_token, expect=1)
                ringmaster(environment, captured, "andon", "pull", "--reason", "leak check: stop the line",
                           token=puller)
                ringmaster(environment, captured, "andon", "status", token=puller)
                wait_for("the rollout to halt", lambda: phase() == "Halted", 60)
                ringmaster(environment, captured, "andon", "release", "--reason", "leak check: go on", token=releaser)
                wait_for("the rollout to go on", lambda: phase() == "Progressing", 60)
                ringmaster(environment, captured, "rollout", "promote", f"{namespace}/web", token=admin)
                wait_for("the rollout to succeed", lambda: phase() == "Succeeded", 90)
                ringmaster(environment, captured, "rollout", "get", f"{namespace}/web", token=admin)
            with httpx.Client(base_url=server, timeout=30) as http:
                # A client that puts its token in the query string, and one that sends a wrong one.
                assert http.get("/api/v1/flags", params={"access_token": admin}).status_code == 200
                assert http.post("/api/v1/flags/kill-switch/enable", headers=bearer(wrong_token)).status_code == 401
                streamed = http.post("/api/v1/flags", content=over_the_limit_in_chunks(DEFAULT_MAX_BODY_BYTES),
                                     headers={**bearer(admin), "Content-Type": "application/json"})
                assert streamed.status_code == 413, streamed.text
                # Slack: a signed /andon status and pull (announced with the bot token), and a forged request.
                for user, command in ((SLACK_VIEWER, "status"), (SLACK_PULLER, "pull slack leak check")):
                    body = slash_command(user, command, fake_slack.response_url())
                    answer = http.post("/slack/events", content=body, headers=sign(body, secret=signing_secret))
                    assert answer.status_code == 200, answer.text
                forged = slash_command(SLACK_PULLER, "pull forged", fake_slack.response_url())
                assert http.post("/slack/events", content=forged, headers=sign(forged, secret="f" * 32)
                                 ).status_code == 401
            ringmaster(environment, captured, "andon", "release", "--reason", "slack leak check over",
                       token=releaser)
            fake_slack.wait_for("/api/chat.postMessage", 4)  # two pulls and two releases, announced
        finally:
            stop(controlling)
            stop(serving)
    captured.add("`ringmaster serve` stdout and stderr", serve_log.read_text(errors="replace"))
    captured.add("`ringmaster controller` log", controller_log.read_text(errors="replace"))
    assert all(call.authorization == f"Bearer {bot_token}" for call in fake_slack.method("chat.postMessage"))

    # The same service in this process, every logger at DEBUG: Python logging of the app and its libraries.
    caplog.set_level("DEBUG")
    settings = ServiceSettings(database_url=url, slack_signing_secret=signing_secret, slack_bot_token=bot_token,
                               slack_channel=SLACK_CHANNEL, slack_api_url=fake_slack.url + "/api/",
                               slack_users=parse_slack_users(f"{SLACK_PULLER}=puller"))
    with TestClient(create_app(settings)) as api:
        assert api.get("/readyz").status_code == 200
        # (No token in a query string here: the test's own HTTP client logs the URLs it requests.)
        assert api.get("/api/v1/flags", headers=bearer(admin)).status_code == 200
        pulled = api.post("/api/v1/andon/pull", json={"reason": "in-process leak check"}, headers=bearer(puller))
        assert pulled.status_code == 201, pulled.text
        assert api.post("/api/v1/andon/release", json={"id": pulled.json()["id"], "reason": "in-process check over"},
                        headers=bearer(releaser)).status_code == 200
        assert api.post("/api/v1/flags/kill-switch/enable", headers=bearer(wrong_token)).status_code == 401
        body = slash_command(SLACK_PULLER, "status", fake_slack.response_url())
        assert api.post("/slack/events", content=body, headers=sign(body, secret=signing_secret)).status_code == 200
        assert api.post("/slack/events", content=body, headers=sign(body, secret="f" * 32)).status_code == 401
        fake_slack.wait_for("/api/chat.postMessage", 6)
    captured.add("Python logging (DEBUG)", caplog.text)
    assert caplog.records, "nothing was logged"

    leaks = captured.leaks({"the admin token": admin, "the puller token": puller, "the releaser token": releaser,
                            "the wrong token": wrong_token, "the Slack signing secret": signing_secret,
                            "the Slack bot token": bot_token, "the database password": password})
    assert not leaks, leaks
    # The logs still say what an operator needs: each request's method, path and status; what happened.
    served = captured.texts["`ringmaster serve` stdout and stderr"]
    assert '"GET /api/v1/flags HTTP/1.1" 200' in served and '"POST /api/v1/flags/kill-switch/enable HTTP/1.1" 401' \
        in served and "not signed by Slack" in served
    assert f"{namespace}/web: scaled StatefulSet" in captured.texts["`ringmaster controller` log"]


# RBAC against the calls the controller makes


# A right the controller holds and never exercises with a request of its own, and why it needs it anyway.
CHECKED_BY_ADMISSION = {
    ("ringmaster.dev", "rollouts/finalizers", "update"):
        "the OwnerReferencesPermissionEnforcement admission plugin checks it when the controller creates a "
        "StatefulSet whose owner reference to its Rollout has blockOwnerDeletion; no request is made",
}


@pytest.fixture
def deployed(local_cluster: LocalCluster) -> None:
    applied = kubectl(local_cluster, "apply", "-f", "-", stdin=yaml.safe_dump_all(kustomize(KUBERNETES_1_20)))
    assert applied.returncode == 0, applied.stderr


@dataclass(frozen=True)
class Call:
    api_group: str
    resource: str  # with its subresource: rollouts/status
    verb: str
    namespace: str | None
    code: int


def calls_by(local_cluster: LocalCluster, user_agent: str, service_account: str) -> set[Call]:
    """Every request in the API server's audit log made with `user_agent` as `service_account` (impersonated)."""
    calls = set()
    for path in sorted(local_cluster.logs.glob("audit*.log")):
        with path.open() as lines:
            for line in lines:
                if user_agent not in line:
                    continue
                event = json.loads(line)
                # A watch is logged when its answer starts (and again when it ends); any other call when it ends.
                if event.get("userAgent") != user_agent or event.get("stage") not in ("ResponseStarted",
                                                                                      "ResponseComplete"):
                    continue
                assert (event.get("impersonatedUser") or {}).get("username") == service_account, event
                reference = event["objectRef"]
                resource = reference["resource"] + (f"/{reference['subresource']}" if reference.get("subresource")
                                                    else "")
                calls.add(Call(reference.get("apiGroup", ""), resource, event["verb"], reference.get("namespace"),
                               int((event.get("responseStatus") or {}).get("code", 0))))
    return calls


@needs_kubectl
def test_the_controller_calls_exactly_what_its_rbac_grants_per_the_audit_log(
        local_cluster: LocalCluster, deployed: None, namespace: str, tmp_path: Path) -> None:
    service_account = f"system:serviceaccount:{SYSTEM}:{CONTROLLER}"
    grants = {(scope, group, resource, verb) for account, scope, group, resource, verb in granted(kustomize(BASE))
              if account == CONTROLLER}
    user_agent = f"ringmaster-rbac-audit/{secrets.token_hex(4)}"
    engine = make_engine(sqlite_database(tmp_path))
    release = secrets.token_hex(3)
    with impersonating(local_cluster, CONTROLLER) as as_controller, local_cluster.api_client() as admin:
        as_controller.user_agent = user_agent
        # As deployed: every namespace, the Lease in ringmaster-system; gates query the cluster's Prometheus.
        controller = Controller(as_controller, engine, ControllerSettings(
            identity=f"audit-{release}", lease_namespace=SYSTEM, lease_name=f"audit-{release}", lease_duration_s=15,
            renew_deadline_s=10, retry_period_s=1, workers=2, prometheus_url=local_cluster.prometheus_url))
        running = threading.Thread(target=controller.run, daemon=True)
        running.start()
        objects, apps = client.CustomObjectsApi(admin), client.AppsV1Api(admin)

        def status() -> dict[str, Any]:
            found: dict[str, Any] = get_rollout(admin, namespace, "web").get("status") or {}
            return found

        def rings(*bakes: str) -> list[dict[str, str]]:
            return [{"name": ring["name"], "bake": bake} for ring, bake in zip(first["spec"]["rings"], bakes,
                                                                                strict=True)]

        try:
            old = statefulset("web", 3, "registry.example.com/web:1.0.0")
            traffic(old["spec"], "0.01")
            apps.create_namespaced_stateful_set(namespace, old)
            wait_ready(admin, namespace, "web", 3)
            # 1. A version with 30 % errors fails its canary gate (against the old version) and is rolled back.
            first = rollout("web", "web", flag=f"web-bad-{release}", bakes=("30s", "0s", "0s", "0s"),
                            template=new_version("0.3"), image=None)
            first["spec"]["rings"][0]["gates"] = [VERSUS_BASELINE]
            first["spec"]["scaling"]["rollbackWindow"] = "1s"
            objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, first)
            wait_for("the bad version to be rolled back", lambda: status().get("phase") == "RolledBack", 180, 0.5)
            # 2. A good version bakes in canary; the andon cord halts it and lets it go; a promote request ends
            # the bake (the controller clears the request), and it goes through every ring.
            good = new_version("0.01")
            good["spec"]["containers"][0]["image"] = "registry.example.com/web:2.0.1"
            objects.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "web", {"spec": {
                "template": good, "flag": {"key": f"web-v2-{release}"}, "rings": rings("1h", "0s", "0s", "0s")}})
            wait_for("the canary to bake", lambda: status().get("bakeUntil"), 90, 0.5)
            cord = AndonStore(engine)
            pull = cord.pull(Scope(), "audit of the controller's calls", "tests")
            wait_for("the rollout to halt", lambda: status().get("phase") == "Halted", 60, 0.5)
            cord.release(pull.id, "audit goes on", "tests")
            wait_for("the rollout to go on", lambda: status().get("phase") == "Progressing", 60, 0.5)
            objects.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "web", {"metadata": {
                "annotations": {REQUEST_ANNOTATION: f"promote:{secrets.token_hex(4)}"}}})
            wait_for("the good version to succeed", lambda: status().get("phase") == "Succeeded", 120, 0.5)
            second = status()["stableStatefulSet"]
            # 3. A third revision retires the second's StatefulSet (the controller's own) after the 1 s window.
            good["spec"]["containers"][0]["image"] = "registry.example.com/web:2.0.2"
            objects.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "web", {"spec": {
                "template": good, "flag": {"key": f"web-v3-{release}"}, "rings": rings("0s", "0s", "0s", "0s")}})
            wait_for(f"StatefulSet {second} to be deleted", lambda: second not in {
                item.metadata.name for item in apps.list_namespaced_stateful_set(namespace).items}, 120, 0.5)
        finally:
            controller.stop()
            running.join(timeout=30)
            engine.dispose()

    exempt = set(CHECKED_BY_ADMISSION)
    expected = {(group, resource, verb) for _, group, resource, verb in grants} - exempt

    def made() -> set[tuple[str, str, str]]:
        return {(call.api_group, call.resource, call.verb) for call in calls_by(local_cluster, user_agent,
                                                                                service_account)}

    # The audit log is written as requests complete; the Lease's release at stop is among the last.
    wait_for("every granted call in the audit log", lambda: made() >= expected, 30, 0.5)
    calls = calls_by(local_cluster, user_agent, service_account)
    assert not made() - expected, f"calls outside the RBAC (or exempt): {sorted(made() - expected)}"
    assert not expected - made(), f"granted but never used: {sorted(expected - made())}"
    refused = sorted(str(call) for call in calls if call.code == 403)
    assert not refused, f"refused by RBAC: {refused}"
    unscoped = sorted(str(call) for call in calls if ("*", call.api_group, call.resource, call.verb) not in grants
                      and (call.namespace, call.api_group, call.resource, call.verb) not in grants)
    assert not unscoped, f"calls outside the namespace of their grant: {unscoped}"
    assert {call.namespace for call in calls if call.resource == "leases"} == {SYSTEM}
    assert exempt <= {(group, resource, verb) for _, group, resource, verb in grants}, "an exemption is not granted"
