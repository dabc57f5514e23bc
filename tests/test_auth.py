"""Who may change what: API tokens kept only as hashes, ranked roles, 401 and 403 as problems, reads open
unless configured, the audit log naming the token (never a header), and `ringmaster token` against a
real `ringmaster serve`."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from cohorts.db import make_engine
from rollout.api.app import create_app
from rollout.auth.tokens import (
    CACHE_SECONDS,
    ROLES,
    InvalidTokenName,
    Principal,
    TokenNameTaken,
    TokenNotFound,
    TokenStore,
    UnknownRole,
    allows,
)
from rollout.settings import ServiceSettings, SettingsError
from tests.auth_helpers import bearer, create_token
from tests.test_api import assert_problem, web_set
from tests.test_cli import cli_environment, cli_token, free_port, run, serving
from tests.test_flags_api import STAFF, checkout

CHANGE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
PATH_VALUES = {"action": "pause", "targetingKey": "olga", "name": "default", "key": "new-checkout",
               "namespace": "default"}
EXISTING_CHANGES = {
    ("POST", "/api/v1/cohort-sets"), ("PUT", "/api/v1/cohort-sets/{name}"),
    ("PUT", "/api/v1/cohort-sets/{name}/opt/{targetingKey}"),
    ("DELETE", "/api/v1/cohort-sets/{name}/opt/{targetingKey}"),
    ("POST", "/api/v1/usage"), ("POST", "/api/v1/flags"), ("PUT", "/api/v1/flags/{key}"),
    ("POST", "/api/v1/flags/{key}/enable"), ("POST", "/api/v1/flags/{key}/disable"),
    ("POST", "/api/v1/rollouts/{namespace}/{name}/{action}"),
}


@pytest.fixture
def tokens(database_url: str) -> Iterator[TokenStore]:
    engine = make_engine(database_url)
    yield TokenStore(engine)
    engine.dispose()


def service(database_url: str, reads_require_token: bool = False) -> TestClient:
    return TestClient(create_app(ServiceSettings(database_url=database_url, reads_require_token=reads_require_token)))


@pytest.fixture
def api(database_url: str) -> Iterator[TestClient]:
    with service(database_url) as client:
        yield client


def routes(methods: set[str]) -> list[tuple[str, str]]:
    """(method, path template) of every operation under /api/v1 with one of `methods`, from the OpenAPI document."""
    document = create_app(ServiceSettings(database_url="sqlite://")).openapi()  # the app never starts
    return sorted((method.upper(), path) for path, operations in document["paths"].items()
                  if path.startswith("/api/v1/") for method in operations if method.upper() in methods)


def filled(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda match: PATH_VALUES.get(match[1], "x"), path)


def test_the_database_keeps_only_a_hash_of_each_token(tokens: TokenStore, database_url: str) -> None:
    principal, token = tokens.create("ana", "admin", "root")
    _, other = tokens.create("bob", "viewer", "root")
    assert principal == Principal("ana", "admin")
    assert token.startswith("rmt_") and len(token) >= 40 and other != token
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            stored = " ".join(str(value) for row in connection.execute(text("SELECT * FROM api_tokens"))
                              for value in row)
            audited = " ".join(str(value) for row in connection.execute(text("SELECT * FROM audit_log"))
                               for value in row)
    finally:
        engine.dispose()
    assert token[4:] not in stored and other[4:] not in stored and token[4:] not in audited
    assert hashlib.sha256(token.encode()).hexdigest() in stored


def test_a_token_is_its_name_and_role_until_it_is_revoked(tokens: TokenStore) -> None:
    _, token = tokens.create("ci-deploy", "puller", "ana")
    assert tokens.verify(token) == Principal("ci-deploy", "puller")
    assert tokens.verify(token + "x") is None and tokens.verify(token[4:]) is None and tokens.verify("") is None
    revoked = tokens.revoke("ci-deploy", "ana")
    assert revoked.revoked and tokens.verify(token) is None
    assert tokens.revoke("ci-deploy", "bob").revoked_at == revoked.revoked_at  # nothing changes the second time
    assert [(item.name, item.role, item.created_by, item.revoked) for item in tokens.list()] == [
        ("ci-deploy", "puller", "ana", True)]


def test_another_replica_refuses_a_revoked_token_once_its_cache_expires(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        here, there = TokenStore(engine), TokenStore(engine, cache_seconds=1.0)
        _, token = here.create("ci-deploy", "admin", "ana")
        assert there.verify(token) is not None
        here.revoke("ci-deploy", "ana")
        assert here.verify(token) is None
        time.sleep(1.1)
        assert there.verify(token) is None
    finally:
        engine.dispose()


def test_names_are_unique_forever_and_roles_and_names_are_checked(tokens: TokenStore) -> None:
    tokens.create("ana", "admin", "root")
    tokens.revoke("ana", "root")
    with pytest.raises(TokenNameTaken, match="a token named 'ana' exists"):
        tokens.create("ana", "viewer", "root")
    with pytest.raises(UnknownRole, match="'owner' is not a role; use one of viewer, puller, releaser, admin"):
        tokens.create("bob", "owner", "root")
    for name in ("", " bob", "anonymous", "b" * 300):
        with pytest.raises(InvalidTokenName):
            tokens.create(name, "viewer", "root")
    with pytest.raises(TokenNotFound, match="`ringmaster token list`"):
        tokens.revoke("nobody", "root")
    assert [item.name for item in tokens.list()] == ["ana"]


def test_each_role_may_do_what_the_roles_below_it_may() -> None:
    assert ROLES == ("viewer", "puller", "releaser", "admin")
    may = {held: {needed for needed in ROLES if allows(held, needed)} for held in ROLES}
    assert may == {"viewer": {"viewer"}, "puller": {"viewer", "puller"},
                   "releaser": {"viewer", "puller", "releaser"}, "admin": set(ROLES)}
    assert not any(allows(None, needed) for needed in ROLES)


def test_a_change_without_a_valid_token_is_401_with_a_bearer_challenge_and_writes_nothing(
        api: TestClient, tokens: TokenStore) -> None:
    _, revoked = tokens.create("gone", "admin", "root")
    tokens.revoke("gone", "root")
    answers = {
        'Bearer realm="ringmaster"': api.post("/api/v1/flags", json=checkout()),
        'Bearer realm="ringmaster", error="invalid_request"':
            api.post("/api/v1/flags", json=checkout(), headers={"Authorization": "Basic YW5hOnNlY3JldA=="}),
        'Bearer realm="ringmaster", error="invalid_token"':
            api.post("/api/v1/flags", json=checkout(), headers=bearer("rmt_" + "x" * 43)),
    }
    answers['Bearer realm="ringmaster", error="invalid_token" (revoked)'] = api.post(
        "/api/v1/flags", json=checkout(), headers=bearer(revoked))
    for challenge, answer in answers.items():
        body = assert_problem(answer, 401)
        assert answer.headers["WWW-Authenticate"] == challenge.removesuffix(" (revoked)")
        assert body["type"].endswith("/unauthenticated") and body["detail"].startswith("POST /api/v1/flags")
    assert "needs an API token with the admin role" in answers['Bearer realm="ringmaster"'].json()["detail"]
    assert "ringmaster token create --name NAME --role admin" in answers['Bearer realm="ringmaster"'].json()["detail"]
    assert "unknown or revoked" in answers['Bearer realm="ringmaster", error="invalid_token"'].json()["detail"]
    assert api.get("/api/v1/flags").json()["items"] == []


def test_every_change_under_api_v1_needs_a_token_and_a_viewer_is_refused_with_403(
        api: TestClient, database_url: str) -> None:
    changes = routes(CHANGE_METHODS)
    assert set(changes) >= EXISTING_CHANGES
    viewer = bearer(create_token(database_url, "vera", "viewer"))
    for method, path in changes:
        assert_problem(api.request(method, filled(path), json={}), 401)
        forbidden = assert_problem(api.request(method, filled(path), json={}, headers=viewer), 403)
        assert "token 'vera' has the viewer role" in forbidden["detail"], (method, path)
        assert "`ringmaster token create --name NAME --role " in forbidden["detail"], (method, path)
    refused = api.post("/api/v1/cohort-sets", json=web_set(), headers=viewer).json()
    assert refused["detail"] == (
        "POST /api/v1/cohort-sets needs the admin role; token 'vera' has the viewer role. Ask for a token with the "
        "admin role: an admin creates one with `ringmaster token create --name NAME --role admin`; send it as "
        "`Authorization: Bearer <token>` (the CLI: `ringmaster --token` or RINGMASTER_TOKEN)")
    assert [item["name"] for item in api.get("/api/v1/cohort-sets").json()["items"]] == ["default"]


def test_reads_are_open_by_default_and_need_a_viewer_token_when_configured(database_url: str) -> None:
    viewer = bearer(create_token(database_url, "vera", "viewer"))
    with service(database_url) as open_reads:
        assert open_reads.get("/api/v1/flags").status_code == 200
        assert open_reads.get("/api/v1/audit").status_code == 200
        # A token sent is checked even where none is needed, so a wrong one is noticed.
        assert_problem(open_reads.get("/api/v1/flags", headers=bearer("rmt_wrong")), 401)
    with service(database_url, reads_require_token=True) as closed:
        reads = routes({"GET"})
        assert ("GET", "/api/v1/audit") in reads and ("GET", "/api/v1/rollouts") in reads
        for _, path in reads:
            assert_problem(closed.get(filled(path)), 401)
        assert closed.get("/api/v1/flags", headers=viewer).status_code == 200
        assert closed.get("/api/v1/cohort-sets/default/explain", params={"targetingKey": "ana"},
                          headers=viewer).json()["ring"]


def test_apps_and_scrapers_read_without_a_token_even_when_reads_need_one(database_url: str) -> None:
    with service(database_url, reads_require_token=True) as closed:
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/flagd/v1/flags.json"):
            assert closed.get(path).status_code == 200, path
        assert closed.post("/ofrep/v1/evaluate/flags", json=STAFF).status_code == 200


def test_reads_and_release_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RINGMASTER_READS_REQUIRE_TOKEN", raising=False)
    monkeypatch.delenv("RINGMASTER_ANDON_RELEASE_BY_OTHER", raising=False)
    settings = ServiceSettings.from_environment()
    assert (settings.reads_require_token, settings.andon_release_by_other) == (False, False)
    monkeypatch.setenv("RINGMASTER_READS_REQUIRE_TOKEN", "True")
    monkeypatch.setenv("RINGMASTER_ANDON_RELEASE_BY_OTHER", "1")
    settings = ServiceSettings.from_environment()
    assert (settings.reads_require_token, settings.andon_release_by_other) == (True, True)
    monkeypatch.setenv("RINGMASTER_READS_REQUIRE_TOKEN", "sometimes")
    with pytest.raises(SettingsError, match="RINGMASTER_READS_REQUIRE_TOKEN='sometimes' is not true or false"):
        ServiceSettings.from_environment()


def test_changes_are_recorded_under_the_tokens_name_whatever_an_actor_header_claims(
        api: TestClient, database_url: str) -> None:
    claims = {**bearer(create_token(database_url, "ci-deploy", "admin")), "X-Ringmaster-Actor": "mallory"}
    assert api.post("/api/v1/cohort-sets", json=web_set(), headers=claims).json()["createdBy"] == "ci-deploy"
    assert api.put("/api/v1/cohort-sets/web/opt/olga", json={"choice": "in"}, headers=claims).status_code == 200
    assert api.post("/api/v1/flags", json=checkout(), headers=claims).json()["createdBy"] == "ci-deploy"
    records: list[dict[str, Any]] = api.get("/api/v1/audit", params={"limit": 4}).json()["items"]
    assert [(record["actor"], record["action"], record["subject"]) for record in records] == [
        ("ci-deploy", "flag.create", "flag/new-checkout"),
        ("ci-deploy", "cohort-set.set-opt", "cohort-set/web"),
        ("ci-deploy", "cohort-set.create", "cohort-set/web"),
        ("tests", "token.create", "token/ci-deploy"),
    ]


def test_the_openapi_document_shows_the_bearer_scheme_on_guarded_routes_only(api: TestClient) -> None:
    document = api.get("/openapi.json").json()
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    paths = document["paths"]
    assert paths["/api/v1/flags"]["post"]["security"] == [{"bearer": []}]
    assert paths["/api/v1/rollouts/{namespace}/{name}/{action}"]["post"]["security"] == [{"bearer": []}]
    assert paths["/api/v1/flags"]["get"]["security"] == [{"bearer": []}]  # optional unless reads need it
    for path, method in (("/flagd/v1/flags.json", "get"), ("/ofrep/v1/evaluate/flags", "post"), ("/healthz", "get")):
        assert "security" not in paths[path][method], path


# `ringmaster token` and the CLI's --token against a live `ringmaster serve`.


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`ringmaster serve` on a free port and a fresh database; the CLI's environment holds no token."""
    data_dir = tmp_path_factory.mktemp("ringmaster-data")
    port = free_port()
    environment = cli_environment(data_dir, port, token_role=None)
    with serving(environment, port, data_dir / "serve.log"):
        yield environment


FLAG_OPTIONS = ("--type", "boolean", "--variant", "on=true", "--variant", "off=false", "--default", "on")


def test_token_create_prints_the_token_last_and_the_cli_sends_it_to_serve(served: dict[str, str]) -> None:
    created = run(served, "token", "create", "--name", "ana", "--role", "admin", "--by", "root").stdout
    *said, token = created.strip().splitlines()
    assert token.startswith("rmt_") and " " not in token
    assert "'ana' with the admin role is created" in said[0]
    refused = run(served, "flag", "set", "kill-switch", *FLAG_OPTIONS, check=False)
    said_refused = " ".join(refused.stderr.split())
    assert refused.returncode == 1 and "401 POST /api/v1/flags needs an API token with the admin role" in said_refused
    assert "ringmaster token create --name NAME --role admin" in said_refused
    with_env = run({**served, "RINGMASTER_TOKEN": token}, "flag", "set", "kill-switch", *FLAG_OPTIONS).stdout
    assert with_env.strip() == "flag kill-switch is at version 1"
    assert "is disabled (version 2)" in run(served, "--token", token, "flag", "disable", "kill-switch").stdout
    read = run(served, "flag", "get", "kill-switch").stdout  # reads are open by default
    assert '"createdBy": "ana"' in read


def test_a_viewer_token_is_refused_with_403_and_a_revoked_token_stops_working(served: dict[str, str]) -> None:
    admin = cli_token(served, "ops", "admin")
    viewer = cli_token(served, "vera", "viewer")
    forbidden = run(served, "--token", viewer, "cohort", "opt-in", "olga", check=False)
    said_forbidden = " ".join(forbidden.stderr.split())
    assert forbidden.returncode == 1 and "403 PUT /api/v1/cohort-sets/default/opt/olga" in said_forbidden
    assert "token 'vera' has the viewer role" in said_forbidden and "--role admin" in said_forbidden
    listed = run(served, "token", "list").stdout
    assert re.search(r"ops\s+admin", listed) and re.search(r"vera\s+viewer", listed)
    assert admin not in listed and admin[4:] not in listed
    assert "opted in" in run(served, "--token", admin, "cohort", "opt-in", "olga").stdout
    assert "is revoked" in run(served, "token", "revoke", "ops").stdout
    deadline = time.monotonic() + CACHE_SECONDS + 10
    while (attempt := run(served, "--token", admin, "cohort", "opt-out", "otto", check=False)).returncode == 0:
        assert time.monotonic() < deadline, "the revoked token still works"
        time.sleep(0.5)
    assert "401" in attempt.stderr and "unknown or revoked" in " ".join(attempt.stderr.split())
    assert re.search(r"ops\s+admin\s+\S+ \S+\s+\S+ \(cli\)\s+\d{4}-", run(served, "token", "list").stdout)
