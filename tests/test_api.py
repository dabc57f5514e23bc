"""The HTTP API, on SQLite and PostgreSQL: cohort sets, opt choices, usage, explain, estimate, flagd."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openfeature.contrib.tools.flagd.core import FlagdCore
from openfeature.evaluation_context import EvaluationContext
from sqlalchemy import text

from cohorts.db import make_engine
from cohorts.spec import default_cohort_set
from rollout.api.app import create_app
from rollout.settings import ServiceSettings
from tests.auth_helpers import authorized
from tests.shared_data import flagd_validator

PROBLEM_JSON = "application/problem+json"


@pytest.fixture
def api(database_url: str) -> Iterator[TestClient]:
    settings = ServiceSettings(database_url=database_url, max_materialized_keys=1000)
    with TestClient(create_app(settings), headers=authorized(database_url)) as client:
        yield client


def web_set(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "name": "web",
        "rings": ["canary", "early-adopter", "stable", "laggard"],
        "defaultRing": "stable",
        "pins": {"canary": ["staff-1"], "laggard": ["acme"]},
        "optInRing": "early-adopter",
        "optOutRing": "laggard",
        "rules": [
            {"name": "eu", "ring": "early-adopter",
             "when": {"attribute": "location", "op": "in", "value": ["eu-west"]}},
            {"name": "regulars", "ring": "stable",
             "when": {"all": [{"metric": "active_days_30d", "op": "gte", "value": 20}, {"seenWithin": "7d"}]}},
        ],
        "split": {"shares": {"canary": 5, "early-adopter": 15, "stable": 70, "laggard": 10},
                  "rotation": {"period": "7d", "rings": ["canary"]}},
    }
    document.update(changes)
    return document


def assert_problem(response: Any, status: int, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["type"].startswith("https://ringmaster.dev/problems/")
    if field is not None:
        assert field in [error["field"] for error in body["errors"]], body
    return body


def test_a_fresh_database_serves_the_default_set(api: TestClient) -> None:
    listed = api.get("/api/v1/cohort-sets").json()["items"]
    assert [(item["name"], item["version"]) for item in listed] == [("default", 1)]
    assert listed[0]["spec"] == default_cohort_set().to_document()


def test_staff_are_canary_in_the_default_set(api: TestClient) -> None:
    response = api.get("/api/v1/cohort-sets/default/explain",
                       params={"targetingKey": "ana", "attributes": json.dumps({"team": "staff"})})
    assert response.status_code == 200
    assert response.json() | {"epoch": 0} == {
        "ring": "canary", "reason": "rule 'staff' matched", "kind": "rule", "rule": "staff",
        "cohortSet": "default", "version": 1, "epoch": 0,
    }


def test_every_change_makes_a_version_and_old_versions_stay_readable(api: TestClient) -> None:
    created = api.post("/api/v1/cohort-sets", json=web_set(), params={"comment": "first cut"})
    assert created.status_code == 201 and created.headers["ETag"] == '"1"'
    assert created.headers["Location"] == "/api/v1/cohort-sets/web"
    changed = web_set(defaultRing="laggard")
    updated = api.put("/api/v1/cohort-sets/web", json=changed, headers={"If-Match": '"1"'})
    assert updated.status_code == 200 and updated.json()["version"] == 2
    assert api.get("/api/v1/cohort-sets/web", params={"version": 1}).json()["spec"]["defaultRing"] == "stable"
    assert api.get("/api/v1/cohort-sets/web").json()["spec"]["defaultRing"] == "laggard"
    versions = api.get("/api/v1/cohort-sets/web/versions").json()["items"]
    assert [item["version"] for item in versions] == [1, 2]
    assert versions[0]["comment"] == "first cut" and versions[0]["createdBy"] == "ana@example.com"


def test_an_update_from_a_stale_version_is_refused(api: TestClient) -> None:
    api.post("/api/v1/cohort-sets", json=web_set())
    api.put("/api/v1/cohort-sets/web", json=web_set(description="one"), headers={"If-Match": '"1"'})
    stale = api.put("/api/v1/cohort-sets/web", json=web_set(description="two"), headers={"If-Match": '"1"'})
    assert "is at version 2, not 1" in assert_problem(stale, 412)["detail"]
    assert api.get("/api/v1/cohort-sets/web").json()["spec"]["description"] == "one"


def test_invalid_cohort_sets_get_a_problem_naming_the_field_and_write_nothing(api: TestClient) -> None:
    bad_ring = web_set(rules=[{"name": "eu", "ring": "europe",
                               "when": {"attribute": "location", "op": "equals", "value": "eu"}}])
    body = assert_problem(api.post("/api/v1/cohort-sets", json=bad_ring), 422, "rules[0].ring")
    assert "'europe' is not one of the rings" in body["detail"]
    bad_type = web_set(split={"shares": {"canary": "five"}})
    assert_problem(api.post("/api/v1/cohort-sets", json=bad_type), 422, "split.shares.canary")
    bad_condition = web_set(rules=[{"name": "x", "ring": "canary",
                                    "when": {"attribute": "a", "op": "gt", "value": "x"}}])
    body = assert_problem(api.post("/api/v1/cohort-sets", json=bad_condition), 422, "rules[0].when.value")
    assert "give a number" in body["detail"]
    assert_problem(api.post("/api/v1/cohort-sets", content=b"{not json", headers={"content-type": "application/json"}),
                   422)
    assert [item["name"] for item in api.get("/api/v1/cohort-sets").json()["items"]] == ["default"]
    assert api.get("/api/v1/audit", params={"subject": "cohort-set/web"}).json()["items"] == []


def test_a_name_in_the_body_must_match_the_url(api: TestClient) -> None:
    api.post("/api/v1/cohort-sets", json=web_set())
    assert_problem(api.put("/api/v1/cohort-sets/web", json=web_set(name="other")), 422, "name")


def test_creating_an_existing_set_conflicts_and_unknown_sets_are_404(api: TestClient) -> None:
    assert_problem(api.post("/api/v1/cohort-sets", json=default_cohort_set().to_document()), 409)
    assert_problem(api.get("/api/v1/cohort-sets/nope"), 404)
    assert_problem(api.get("/api/v1/cohort-sets/default", params={"version": 9}), 404)
    assert_problem(api.get("/api/v1/cohort-sets/nope/explain", params={"targetingKey": "k"}), 404)
    assert_problem(api.get("/api/v1/no-such-route"), 404)


def test_opting_in_and_out_moves_the_user_and_is_audited(api: TestClient) -> None:
    api.post("/api/v1/cohort-sets", json=web_set())
    assert api.put("/api/v1/cohort-sets/web/opt/olga", json={"choice": "in"}).status_code == 200
    assert api.put("/api/v1/cohort-sets/web/opt/otto", json={"choice": "out"}).status_code == 200

    def explain(key: str) -> dict[str, Any]:
        explained: dict[str, Any] = api.get("/api/v1/cohort-sets/web/explain", params={"targetingKey": key}).json()
        return explained

    assert (explain("olga")["ring"], explain("olga")["kind"]) == ("early-adopter", "opt-in")
    assert (explain("otto")["ring"], explain("otto")["kind"]) == ("laggard", "opt-out")
    assert api.get("/api/v1/cohort-sets/web/opt").json() == {"in": ["olga"], "out": ["otto"]}
    assert api.delete("/api/v1/cohort-sets/web/opt/olga").status_code == 204
    assert explain("olga")["kind"] == "split"
    assert_problem(api.delete("/api/v1/cohort-sets/web/opt/olga"), 404)
    assert_problem(api.put("/api/v1/cohort-sets/web/opt/x", json={"choice": "maybe"}), 422, "choice")
    assert_problem(api.put(f"/api/v1/cohort-sets/web/opt/{'k' * 257}", json={"choice": "in"}), 422, "targetingKey")
    assert_problem(api.put("/api/v1/cohort-sets/web/opt/%20", json={"choice": "in"}), 422)
    records = api.get("/api/v1/audit", params={"subject": "cohort-set/web"}).json()["items"]
    actions = [record["action"] for record in records]
    assert actions == ["cohort-set.clear-opt", "cohort-set.set-opt", "cohort-set.set-opt", "cohort-set.create"]


def test_opting_in_is_refused_where_the_set_offers_no_opt_in_ring(api: TestClient) -> None:
    api.post("/api/v1/cohort-sets", json=web_set(optInRing=None))
    body = assert_problem(api.put("/api/v1/cohort-sets/web/opt/olga", json={"choice": "in"}), 409)
    assert "has no optInRing" in body["detail"]


def usage_row(key: str, active_days: int, seen_days_ago: int, **attributes: Any) -> dict[str, Any]:
    seen = (datetime.now(UTC) - timedelta(days=seen_days_ago)).isoformat()
    row: dict[str, Any] = {"targetingKey": key, "metrics": {"active_days_30d": active_days}, "lastSeenAt": seen}
    if attributes:
        row["attributes"] = attributes
    return row


def test_usage_rules_place_the_users_the_usage_history_selects(api: TestClient) -> None:
    api.post("/api/v1/cohort-sets", json=web_set())
    rows = [usage_row("regular", 25, 1), usage_row("lapsed", 25, 30), usage_row("casual", 3, 1)]
    assert api.post("/api/v1/usage", json={"rows": rows}).json() == {"stored": 3}
    kinds = {key: api.get("/api/v1/cohort-sets/web/explain", params={"targetingKey": key}).json()
             for key in ("regular", "lapsed", "casual")}
    assert (kinds["regular"]["rule"], kinds["regular"]["ring"]) == ("regulars", "stable")
    assert kinds["lapsed"]["kind"] == "split" and kinds["casual"]["kind"] == "split"


def test_bad_usage_batches_are_refused_whole(api: TestClient) -> None:
    rows = [usage_row("fine", 1, 1), {"targetingKey": "bad", "metrics": {"Active Days": 3}}]
    body = assert_problem(api.post("/api/v1/usage", json={"rows": rows}), 422)
    assert any(error["field"].startswith("rows[1].metrics") for error in body["errors"]), body
    duplicate = [usage_row("same", 1, 1), usage_row("same", 2, 1)]
    assert_problem(api.post("/api/v1/usage", json={"rows": duplicate}), 422)
    too_many = [usage_row(f"u{number}", 1, 1) for number in range(10_001)]
    assert_problem(api.post("/api/v1/usage", json={"rows": too_many}), 422)
    assert api.get("/api/v1/cohort-sets/default/estimate").json()["population"] == 0


def test_estimate_reports_each_rings_share_of_the_usage_population(api: TestClient) -> None:
    configured = api.get("/api/v1/cohort-sets/default/estimate").json()
    assert configured["source"] == "configured"
    assert [ring["cumulativeShare"] for ring in configured["rings"]] == [0.05, 0.2, 0.9, 1.0]
    rows = [usage_row(f"user-{number}", 1, 1, team="staff" if number < 100 else "sales") for number in range(2000)]
    api.post("/api/v1/usage", json={"rows": rows})
    estimate = api.get("/api/v1/cohort-sets/default/estimate").json()
    assert estimate["source"] == "usage" and estimate["population"] == 2000
    shares = {ring["ring"]: ring["share"] for ring in estimate["rings"]}
    # 5 % staff plus 5 % of the rest by the split: about 9.75 % canary.
    assert 0.08 < shares["canary"] < 0.12
    assert 0.64 < shares["stable"] < 0.70
    assert estimate["rings"][-1]["cumulativeShare"] == pytest.approx(1.0)
    keys = api.get("/api/v1/cohort-sets/default/estimate", params={"keys": ["a", "b", "c"]}).json()
    assert keys["source"] == "keys" and keys["population"] == 3


def test_the_flagd_document_is_valid_cached_by_etag_and_agrees_with_explain(api: TestClient) -> None:
    api.post("/api/v1/cohort-sets", json=web_set())
    api.put("/api/v1/cohort-sets/web/opt/olga", json={"choice": "in"})
    response = api.get("/api/v1/cohort-sets/web/flagd", params={"epoch": 42})
    assert response.status_code == 200
    document = response.json()
    assert list(flagd_validator().iter_errors(document)) == []
    etag = response.headers["ETag"]
    assert api.get("/api/v1/cohort-sets/web/flagd", params={"epoch": 42},
                   headers={"If-None-Match": etag}).status_code == 304
    core = FlagdCore()
    core.set_flags(document)
    for key in ["olga", "acme", "staff-1", *[f"user-{number}" for number in range(200)]]:
        ours = api.get("/api/v1/cohort-sets/web/explain", params={"targetingKey": key, "epoch": 42}).json()["ring"]
        assert core.resolve_string_value("ring-web", "none", EvaluationContext(key)).value == ours
    # A change to what evaluates changes the ETag.
    api.put("/api/v1/cohort-sets/web/opt/otto", json={"choice": "out"})
    changed = api.get("/api/v1/cohort-sets/web/flagd", params={"epoch": 42}, headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag


def test_compiling_past_the_key_limit_is_a_clear_error(api: TestClient) -> None:
    api.post("/api/v1/cohort-sets", json=web_set())
    api.post("/api/v1/usage", json={"rows": [usage_row(f"user-{number}", 25, 1) for number in range(1001)]})
    body = assert_problem(api.get("/api/v1/cohort-sets/web/flagd"), 422)
    assert "rule 'regulars', 1,001 keys" in body["detail"] and "the limit is 1,000" in body["detail"]


def test_bad_query_parameters_are_named(api: TestClient) -> None:
    body = assert_problem(api.get("/api/v1/cohort-sets/default/explain",
                                  params={"targetingKey": "k", "attributes": "[1,2]"}), 422, "attributes")
    assert "JSON object" in body["detail"]
    assert_problem(api.get("/api/v1/cohort-sets/default/explain", params={"epoch": -1}), 422, "epoch")
    assert_problem(api.put("/api/v1/cohort-sets/default", json=default_cohort_set().to_document(),
                           headers={"If-Match": "yesterday"}), 400, "If-Match")


def test_every_change_is_in_the_audit_log_with_before_and_after(api: TestClient) -> None:
    api.post("/api/v1/cohort-sets", json=web_set())
    api.put("/api/v1/cohort-sets/web", json=web_set(defaultRing="laggard"))
    records = api.get("/api/v1/audit", params={"subject": "cohort-set/web"}).json()["items"]
    newest, oldest = records[0], records[-1]
    assert oldest["before"] is None and oldest["after"]["defaultRing"] == "stable"
    assert newest["before"]["defaultRing"] == "stable" and newest["after"]["defaultRing"] == "laggard"
    assert {record["actor"] for record in records} == {"ana@example.com"}


def test_readiness_tells_a_schema_behind_from_one_a_newer_build_migrated(api: TestClient, database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = '0001_cohorts'"))
        behind = api.get("/readyz")
        assert behind.status_code == 503 and "run `ringmaster db upgrade`" in behind.json()["detail"]
        with engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = 'f00dfeedbeef'"))
        newer = api.get("/readyz")
        assert newer.status_code == 503 and newer.json()["title"] == "The database schema is newer than this build"
        assert "db upgrade" not in newer.json()["detail"]
    finally:
        engine.dispose()


def test_health_readiness_metrics_and_openapi(api: TestClient) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").json()["status"] == "ready"
    api.get("/api/v1/cohort-sets/default/explain", params={"targetingKey": "k"})
    metrics = api.get("/metrics").text
    assert 'ringmaster_http_requests_total{method="GET",route="/api/v1/cohort-sets/{name}/explain",status="200"} 1.0' \
        in metrics
    assert "ringmaster_assignments_total" in metrics
    paths = api.get("/openapi.json").json()["paths"]
    assert {"/api/v1/cohort-sets/{name}/explain", "/api/v1/usage", "/api/v1/cohort-sets/{name}/flagd"} <= set(paths)
