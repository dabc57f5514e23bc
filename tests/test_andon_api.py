"""The andon cord's HTTP API on SQLite and PostgreSQL: who may pull and release, what a pull must
say, what the record and the metrics show, and a pull that survives a restart of the service."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from rollout.api.app import create_app
from rollout.settings import ServiceSettings
from tests.auth_helpers import authorized, create_token
from tests.test_api import assert_problem


@dataclasses.dataclass
class People:
    puller: dict[str, str]
    releaser: dict[str, str]
    viewer: dict[str, str]
    admin: dict[str, str]


@pytest.fixture
def people(database_url: str) -> People:
    return People(puller=authorized(database_url, "paula", "puller"),
                  releaser=authorized(database_url, "rita", "releaser"),
                  viewer=authorized(database_url, "victor", "viewer"),
                  admin=authorized(database_url, "ada", "admin"))


@pytest.fixture
def api(database_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(ServiceSettings(database_url=database_url))) as client:
        yield client


def pull(api: TestClient, headers: dict[str, str], reason: str = "checkout errors up in eu-west",
         **scope: str) -> Any:
    return api.post("/api/v1/andon/pull", json={"reason": reason, "scope": scope}, headers=headers)


def test_a_pull_answers_201_with_its_id_and_shows_until_released(api: TestClient, people: People) -> None:
    pulled = pull(api, people.puller, namespace="shop")
    assert pulled.status_code == 201, pulled.text
    body = pulled.json()
    assert (body["actor"], body["reason"], body["active"], body["scope"]) == (
        "paula", "checkout errors up in eu-west", True, {"kind": "namespace", "namespace": "shop", "rollout": None})
    cord = api.get("/api/v1/andon").json()
    assert cord["pulled"] is True and [item["id"] for item in cord["active"]] == [body["id"]]

    released = api.post("/api/v1/andon/release", json={"id": body["id"], "reason": "config rolled back"},
                        headers=people.releaser)
    assert released.status_code == 200, released.text
    assert released.json()["release"]["actor"] == "rita" and released.json()["active"] is False
    assert api.get("/api/v1/andon").json() == {"pulled": False, "active": []}
    history = api.get("/api/v1/andon/history").json()["items"]
    assert [(item["kind"], item["pullId"], item["actor"]) for item in history] == [
        ("release", body["id"], "rita"), ("pull", body["id"], "paula")]


def test_only_pullers_pull_and_only_releasers_release(api: TestClient, people: People) -> None:
    assert_problem(pull(api, {}), 401)
    assert_problem(pull(api, {"Authorization": "Bearer rmt_not-a-token"}), 401)
    assert_problem(pull(api, people.viewer), 403)
    pulled = pull(api, people.puller).json()
    refused = api.post("/api/v1/andon/release", json={"id": pulled["id"], "reason": "I pulled, I release"},
                       headers=people.puller)
    assert_problem(refused, 403)
    assert api.get("/api/v1/andon").json()["pulled"] is True
    for headers in (people.releaser, people.admin):
        assert pull(api, headers).status_code == 201  # a releaser (and an admin) may pull too


@pytest.mark.parametrize(("body", "field"), [
    ({"scope": {}}, "reason"),
    ({"reason": "no", "scope": {}}, "reason"),
    ({"reason": "x" * 501, "scope": {}}, "reason"),
    ({"reason": "why not", "scope": {"rollout": "web"}}, "scope"),
    ({"reason": "why not", "scope": {"namespace": "Not_Valid"}}, "scope.namespace"),
    ({"reason": "why not", "scope": {"cluster": "prod"}}, "scope.cluster"),
])
def test_a_pull_without_a_proper_reason_or_scope_is_refused_naming_the_field(
        api: TestClient, people: People, body: dict[str, Any], field: str) -> None:
    refused = api.post("/api/v1/andon/pull", json=body, headers=people.puller)
    problem = assert_problem(refused, 422)
    assert any(error["field"].startswith(field) for error in problem["errors"]), problem
    assert api.get("/api/v1/andon/history").json()["items"] == []


def test_releasing_twice_or_an_unknown_pull_is_a_clear_error(api: TestClient, people: People) -> None:
    pulled = pull(api, people.puller).json()
    assert api.post("/api/v1/andon/release", json={"id": pulled["id"], "reason": "fixed"},
                    headers=people.releaser).status_code == 200
    again = api.post("/api/v1/andon/release", json={"id": pulled["id"], "reason": "fixed"}, headers=people.releaser)
    assert "already released by rita" in assert_problem(again, 409)["detail"]
    unknown = api.post("/api/v1/andon/release", json={"id": 999, "reason": "fixed"}, headers=people.releaser)
    assert_problem(unknown, 404)


def test_a_deployment_can_require_someone_else_to_release(database_url: str) -> None:
    settings = dataclasses.replace(ServiceSettings(database_url=database_url), andon_release_by_other=True)
    both = authorized(database_url, "rita", "releaser")
    other = authorized(database_url, "ruth", "releaser")
    with TestClient(create_app(settings)) as api:
        pulled = pull(api, both).json()
        own = api.post("/api/v1/andon/release", json={"id": pulled["id"], "reason": "all good"}, headers=both)
        assert "someone else" in assert_problem(own, 403)["detail"]
        assert api.post("/api/v1/andon/release", json={"id": pulled["id"], "reason": "all good"},
                        headers=other).status_code == 200


def test_a_pull_survives_a_restart_of_the_service(database_url: str) -> None:
    headers = authorized(database_url, "paula", "puller")
    with TestClient(create_app(ServiceSettings(database_url=database_url))) as api:
        pulled = pull(api, headers, namespace="shop").json()
    with TestClient(create_app(ServiceSettings(database_url=database_url))) as api:
        assert [item["id"] for item in api.get("/api/v1/andon").json()["active"]] == [pulled["id"]]


def test_the_metrics_show_the_cord_and_count_pulls(api: TestClient, people: People) -> None:
    def scraped() -> dict[str, float]:
        lines = api.get("/metrics").text.splitlines()
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines
                if line.startswith("ringmaster_andon_")}

    assert scraped()['ringmaster_andon_active{scope="global"}'] == 0
    first = pull(api, people.puller).json()
    pull(api, people.puller, namespace="shop")
    metrics = scraped()
    assert (metrics['ringmaster_andon_active{scope="global"}'], metrics['ringmaster_andon_active{scope="namespace"}'],
            metrics["ringmaster_andon_pulls_total"]) == (1, 1, 2)
    api.post("/api/v1/andon/release", json={"id": first["id"], "reason": "fixed"}, headers=people.releaser)
    metrics = scraped()
    assert (metrics['ringmaster_andon_active{scope="global"}'], metrics["ringmaster_andon_releases_total"]) == (0, 1)


def test_with_the_database_down_a_pull_is_refused_with_503_and_says_what_happens(tmp_path: Any) -> None:
    from cohorts.db import upgrade

    url = f"sqlite:///{tmp_path / 'cord.db'}"
    upgrade(url)
    headers = {"Authorization": f"Bearer {create_token(url, 'paula', 'puller')}"}
    with TestClient(create_app(ServiceSettings(database_url=url))) as api:
        # The token is verified (and cached) first; then the record's table goes away.
        assert api.get("/api/v1/andon", headers=headers).status_code == 200
        import sqlite3

        with sqlite3.connect(tmp_path / "cord.db") as connection:
            connection.execute("ALTER TABLE andon_events RENAME TO andon_events_gone")
        refused = pull(api, headers)
    problem = assert_problem(refused, 503)
    assert "nothing was recorded" in problem["detail"] and "halts every rollout" in problem["detail"]
