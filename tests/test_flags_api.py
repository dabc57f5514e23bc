"""The flag API, the flagd document and OFREP over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cohorts.spec import default_cohort_set
from rollout.api.app import create_app
from rollout.settings import ServiceSettings
from tests.auth_helpers import authorized
from tests.shared_data import flagd_validator
from tests.test_api import assert_problem


@pytest.fixture
def api(database_url: str) -> Iterator[TestClient]:
    settings = ServiceSettings(database_url=database_url, max_materialized_keys=1000)
    with TestClient(create_app(settings), headers=authorized(database_url)) as client:
        yield client


def checkout(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "key": "new-checkout",
        "description": "The one-page checkout.",
        "type": "boolean",
        "variants": {"on": True, "off": False},
        "defaultVariant": "off",
        "targeting": {"rings": {"cohortSet": "default", "variants": {"canary": "on", "early-adopter": "on"},
                                "otherwise": "off"}},
        "flagSet": "web",
        "metadata": {"owner": "payments"},
    }
    document.update(changes)
    return document


STAFF = {"context": {"targetingKey": "ana", "team": "staff"}}


def test_a_created_flag_is_version_1_with_its_location(api: TestClient) -> None:
    created = api.post("/api/v1/flags", json=checkout(), params={"comment": "first cut"})
    assert created.status_code == 201, created.text
    assert (created.headers["ETag"], created.headers["Location"]) == ('"1"', "/api/v1/flags/new-checkout")
    body = created.json()
    assert (body["key"], body["version"], body["createdBy"], body["comment"]) == (
        "new-checkout", 1, "ana@example.com", "first cut")
    assert body["spec"] == {**checkout(), "state": "ENABLED"}
    assert [item["key"] for item in api.get("/api/v1/flags").json()["items"]] == ["new-checkout"]


def test_updates_make_versions_and_a_stale_if_match_is_refused(api: TestClient) -> None:
    api.post("/api/v1/flags", json=checkout())
    updated = api.put("/api/v1/flags/new-checkout", json=checkout(description="v2"), headers={"If-Match": '"1"'})
    assert (updated.status_code, updated.json()["version"]) == (200, 2)
    stale = api.put("/api/v1/flags/new-checkout", json=checkout(description="v3"), headers={"If-Match": '"1"'})
    assert "is at version 2, not 1" in assert_problem(stale, 412)["detail"]
    assert api.get("/api/v1/flags/new-checkout", params={"version": 1}).json()["spec"]["description"] == \
        "The one-page checkout."
    assert [item["version"] for item in api.get("/api/v1/flags/new-checkout/versions").json()["items"]] == [1, 2]
    assert_problem(api.put("/api/v1/flags/new-checkout", json=checkout(), headers={"If-Match": "latest"}), 400,
                   "If-Match")
    assert_problem(api.put("/api/v1/flags/new-checkout", json=checkout(key="other")), 422, "key")


def test_invalid_flags_get_a_problem_naming_each_field_and_write_nothing(api: TestClient) -> None:
    bad = checkout(variants={"on": "yes", "off": False},
                   targeting={"rings": {"cohortSet": "default", "variants": {"beta": "on", "canary": "onn"}}})
    body = assert_problem(api.post("/api/v1/flags", json=bad), 422)
    assert {error["field"] for error in body["errors"]} == {
        "variants.on", "targeting.rings.variants.beta", "targeting.rings.variants.canary"}
    assert body["type"] == "https://ringmaster.dev/problems/invalid-flag"
    assert_problem(api.post("/api/v1/flags", json=checkout(type="list")), 422, "type")
    assert_problem(api.post("/api/v1/flags", json=checkout(targeting={"jsonLogic": {"iff": [True, "on"]}})), 422,
                   "targeting.jsonLogic.iff")
    assert_problem(api.post("/api/v1/flags", json=checkout(targeting={"rings": {"cohortSet": "mobile"}})), 422,
                   "targeting.rings.cohortSet")
    assert api.get("/api/v1/flags").json()["items"] == []
    assert api.get("/api/v1/audit", params={"subject": "flag/new-checkout"}).json()["items"] == []


def test_creating_an_existing_flag_conflicts_and_unknown_flags_are_404(api: TestClient) -> None:
    api.post("/api/v1/flags", json=checkout())
    assert_problem(api.post("/api/v1/flags", json=checkout()), 409)
    assert_problem(api.get("/api/v1/flags/nope"), 404)
    assert_problem(api.get("/api/v1/flags/new-checkout", params={"version": 7}), 404)
    assert_problem(api.post("/api/v1/flags/nope/disable"), 404)
    assert_problem(api.get("/api/v1/flags/nope/versions"), 404)


def test_disable_and_enable_are_versions_and_in_the_audit_log(api: TestClient) -> None:
    api.post("/api/v1/flags", json=checkout())
    disabled = api.post("/api/v1/flags/new-checkout/disable", params={"comment": "incident 42"})
    assert (disabled.json()["version"], disabled.json()["spec"]["state"]) == (2, "DISABLED")
    assert api.post("/api/v1/flags/new-checkout/disable").json()["version"] == 2
    assert_problem(api.post("/api/v1/flags/new-checkout/enable", headers={"If-Match": '"1"'}), 412)
    assert api.post("/api/v1/flags/new-checkout/enable", headers={"If-Match": '"2"'}).json()["version"] == 3
    records = api.get("/api/v1/audit", params={"subject": "flag/new-checkout"}).json()["items"]
    assert [(record["action"], record["actor"]) for record in records] == [
        ("flag.enable", "ana@example.com"), ("flag.disable", "ana@example.com"), ("flag.create", "ana@example.com")]
    assert records[1]["before"]["state"] == "ENABLED" and records[1]["after"]["state"] == "DISABLED"


def test_the_flagd_document_is_valid_and_cached_by_etag_until_a_flag_changes(api: TestClient) -> None:
    empty = api.get("/flagd/v1/flags.json")
    assert empty.json()["flags"] == {}
    api.post("/api/v1/flags", json=checkout())
    response = api.get("/flagd/v1/flags.json")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert response.headers["ETag"] != empty.headers["ETag"]
    assert list(flagd_validator().iter_errors(response.json())) == []
    etag = response.headers["ETag"]
    unchanged = api.get("/flagd/v1/flags.json", headers={"If-None-Match": f'"other", {etag}'})
    assert (unchanged.status_code, unchanged.content, unchanged.headers["ETag"]) == (304, b"", etag)
    api.post("/api/v1/flags/new-checkout/disable")
    changed = api.get("/flagd/v1/flags.json", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.json()["flags"]["new-checkout"]["state"] == "DISABLED"


def test_an_opt_in_reaches_the_document_through_the_ring_evaluator(api: TestClient) -> None:
    api.post("/api/v1/flags", json=checkout())
    before = api.get("/flagd/v1/flags.json").headers["ETag"]
    api.put("/api/v1/cohort-sets/default/opt/olga", json={"choice": "in"})
    publisher = api.app.state.publisher  # type: ignore[attr-defined]
    publisher.refresh()  # what the polling thread does within 200 ms
    after = api.get("/flagd/v1/flags.json")
    assert after.headers["ETag"] != before and "olga" in after.text


def test_a_selector_header_serves_one_flag_set(api: TestClient) -> None:
    api.post("/api/v1/flags", json=checkout())
    api.post("/api/v1/flags", json=checkout(key="theme", flagSet="mobile"))
    web = api.get("/flagd/v1/flags.json", headers={"Flagd-Selector": "flagSetId=web"}).json()
    assert list(web["flags"]) == ["new-checkout"] and web["metadata"] == {"flagSetId": "web"}
    assert_problem(api.get("/flagd/v1/flags.json", headers={"Flagd-Selector": "source=db"}), 400, "Flagd-Selector")


def test_ofrep_evaluates_one_flag_with_reason_variant_and_metadata(api: TestClient) -> None:
    api.post("/api/v1/flags", json=checkout())
    answer = api.post("/ofrep/v1/evaluate/flags/new-checkout", json=STAFF)
    assert answer.status_code == 200
    assert answer.json() == {"key": "new-checkout", "reason": "TARGETING_MATCH", "variant": "on", "value": True,
                             "metadata": {"owner": "payments", "flagVersion": 1, "flagSetId": "web",
                                          "cohortSet": "default", "cohortSetVersion": 1,
                                          "rotationEpoch": answer.json()["metadata"]["rotationEpoch"]}}


def test_a_pinned_flag_serves_the_rings_of_its_cohort_set_version_after_the_set_changes(api: TestClient) -> None:
    pinned = checkout(key="rollout", targeting={"rings": {"cohortSet": "default", "version": 1,
                                                          "variants": {"canary": "on"}, "otherwise": "off"}})
    assert api.post("/api/v1/flags", json=pinned).status_code == 201
    api.post("/api/v1/flags", json=checkout())
    # Version 2 pins ana, a canary by the staff rule, to laggard.
    version_2 = {**default_cohort_set().to_document(), "pins": {"laggard": ["ana"]}}
    assert api.put("/api/v1/cohort-sets/default", json=version_2).status_code == 200
    api.app.state.publisher.refresh()  # type: ignore[attr-defined]
    rollout = api.post("/ofrep/v1/evaluate/flags/rollout", json=STAFF).json()
    assert (rollout["variant"], rollout["metadata"]["cohortSetVersion"]) == ("on", 1)
    current = api.post("/ofrep/v1/evaluate/flags/new-checkout", json=STAFF).json()
    assert (current["variant"], current["metadata"]["cohortSetVersion"]) == ("off", 2)
    document = api.get("/flagd/v1/flags.json").json()
    assert {"ring-default", f"ring-default.v1.e{rollout['metadata']['rotationEpoch']}"} == set(document["$evaluators"])
    assert list(flagd_validator().iter_errors(document)) == []


def test_a_pinned_cohort_set_version_that_does_not_exist_is_refused(api: TestClient) -> None:
    pinned = checkout(targeting={"rings": {"cohortSet": "default", "version": 2, "epoch": 12,
                                           "variants": {"canary": "on"}}})
    body = assert_problem(api.post("/api/v1/flags", json=pinned), 422, "targeting.rings.version")
    assert "list its versions with GET /api/v1/cohort-sets/default/versions" in body["errors"][0]["message"]
    assert api.get("/api/v1/flags").json()["items"] == []


def test_ofrep_answers_a_disabled_flag_without_a_value_so_the_app_uses_its_default(api: TestClient) -> None:
    api.post("/api/v1/flags", json=checkout(state="DISABLED"))
    answer = api.post("/ofrep/v1/evaluate/flags/new-checkout", json=STAFF).json()
    assert answer["reason"] == "DISABLED" and "value" not in answer and "variant" not in answer


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"context": {"team": "staff"}}, 400, "TARGETING_KEY_MISSING"),
        ({"context": {"targetingKey": ""}}, 400, "TARGETING_KEY_MISSING"),
        ({"context": {"targetingKey": 42}}, 400, "INVALID_CONTEXT"),
        ({"context": "ana"}, 400, "INVALID_CONTEXT"),
        ({}, 400, "INVALID_CONTEXT"),
        (b"{not json", 400, "INVALID_CONTEXT"),
    ],
)
def test_ofrep_refuses_bad_contexts_with_its_error_codes(api: TestClient, body: Any, status: int, code: str) -> None:
    api.post("/api/v1/flags", json=checkout())
    for path, keyed in (("/ofrep/v1/evaluate/flags/new-checkout", True), ("/ofrep/v1/evaluate/flags", False)):
        response = (api.post(path, content=body) if isinstance(body, bytes) else api.post(path, json=body))
        assert response.status_code == status, response.text
        answer = response.json()
        assert answer["errorCode"] == code and answer["errorDetails"]
        assert ("key" in answer) == keyed


def test_ofrep_names_a_missing_flag_and_a_flag_whose_targeting_fails(api: TestClient) -> None:
    by_tier = {"key": "plan-banner", "type": "string", "variants": {"tier-free": "Upgrade!", "tier-pro": ""},
               "defaultVariant": "tier-free", "targeting": {"jsonLogic": {"cat": ["tier-", {"var": "tier"}]}}}
    api.post("/api/v1/flags", json=by_tier)
    missing = api.post("/ofrep/v1/evaluate/flags/nope", json=STAFF)
    assert (missing.status_code, missing.json()["errorCode"]) == (404, "FLAG_NOT_FOUND")
    outside = api.post("/ofrep/v1/evaluate/flags/plan-banner", json=STAFF, headers={"Flagd-Selector": "flagSetId=web"})
    assert (outside.status_code, outside.json()["errorCode"]) == (404, "FLAG_NOT_FOUND")
    pro = api.post("/ofrep/v1/evaluate/flags/plan-banner", json={"context": {"targetingKey": "ana", "tier": "pro"}})
    assert (pro.json()["variant"], pro.json()["value"]) == ("tier-pro", "")
    gold = api.post("/ofrep/v1/evaluate/flags/plan-banner", json={"context": {"targetingKey": "ana", "tier": "gold"}})
    assert (gold.status_code, gold.json()["errorCode"]) == (400, "GENERAL")
    assert "'tier-gold', which is not a variant" in gold.json()["errorDetails"]
    bulk = api.post("/ofrep/v1/evaluate/flags", json={"context": {"targetingKey": "ana", "tier": "gold"}})
    assert bulk.status_code == 200 and bulk.json()["flags"][0]["errorCode"] == "GENERAL"


def test_ofrep_bulk_evaluation_is_cached_by_an_etag_over_the_answer(api: TestClient) -> None:
    api.post("/api/v1/flags", json=checkout())
    limit = {"key": "limit", "type": "integer", "variants": {"low": 10}, "defaultVariant": "low"}
    api.post("/api/v1/flags", json=limit)
    first = api.post("/ofrep/v1/evaluate/flags", json=STAFF)
    assert first.status_code == 200
    assert [(item["key"], item["value"], item["reason"]) for item in first.json()["flags"]] == [
        ("limit", 10, "STATIC"), ("new-checkout", True, "TARGETING_MATCH")]
    etag = first.headers["ETag"]
    again = api.post("/ofrep/v1/evaluate/flags", json=STAFF, headers={"If-None-Match": etag})
    assert (again.status_code, again.content) == (304, b"")
    other_user = api.post("/ofrep/v1/evaluate/flags", json={"context": {"targetingKey": "bob"}},
                          headers={"If-None-Match": etag})
    assert other_user.status_code == 200 and other_user.headers["ETag"] != etag
    api.post("/api/v1/flags/limit/disable")
    assert api.post("/ofrep/v1/evaluate/flags", json=STAFF, headers={"If-None-Match": etag}).status_code == 200


def test_the_new_routes_are_in_the_openapi_document_and_measured(api: TestClient) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    assert {"/api/v1/flags", "/api/v1/flags/{key}", "/api/v1/flags/{key}/enable", "/api/v1/flags/{key}/disable",
            "/api/v1/flags/{key}/versions", "/flagd/v1/flags.json", "/flagd/v1/stream",
            "/ofrep/v1/evaluate/flags", "/ofrep/v1/evaluate/flags/{key}"} <= set(paths)
    api.post("/api/v1/flags", json=checkout())
    metrics = api.get("/metrics").text
    assert "ringmaster_flag_documents_published_total 2.0" in metrics
    assert "ringmaster_flag_streams 0.0" in metrics
