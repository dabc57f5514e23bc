"""The dashboard's HTML: what a rollout's card says about its rings, capacity and gates (pure views), and
the pages as `ringmaster serve` answers them, on SQLite and PostgreSQL, with and without Kubernetes.

tests/test_dashboard_browser.py drives the same page in a real browser against the whole system."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from kubernetes import client

from cohorts.db import make_engine
from rollout.andon.scope import Scope
from rollout.andon.store import AndonStore
from rollout.api.app import create_app
from rollout.api.dashboard import bake_left, duration, gate_views, ring_views
from rollout.api.sparklines import sparkline
from rollout.controller.crd import install_crd
from rollout.controller.history import GateResultEntry, HistoryEntry, RolloutHistory
from rollout.controller.status import GateStatus, RolloutStatus
from rollout.localcluster.cluster import LocalCluster
from rollout.settings import ServiceSettings
from tests.auth_helpers import authorized, bearer, create_token
from tests.test_api import assert_problem
from tests.test_cli import REPOSITORY
from tests.test_rollouts_api import NOW, create, gating_canary, measure, record

RINGS = ("canary", "early-adopter", "stable", "laggard")


def states(status: RolloutStatus) -> list[tuple[str, str, bool]]:
    return [(view.name, view.state, view.flag_on) for view in ring_views(RINGS, status)]


def test_rings_before_the_current_one_are_done_and_the_flag_is_on_for_the_promoted_ones() -> None:
    status = RolloutStatus(phase="Progressing", track="Progressing", ring_index=1, current_ring="early-adopter",
                           promoted_rings=["canary", "early-adopter"])
    assert states(status) == [("canary", "done", True), ("early-adopter", "current", True),
                              ("stable", "pending", False), ("laggard", "pending", False)]


def test_a_halted_rollout_keeps_its_current_ring_and_a_finished_one_has_none() -> None:
    halted = RolloutStatus(phase="Halted", track="Progressing", ring_index=0, current_ring="canary")
    assert [state for _, state, _ in states(halted)] == ["current", "pending", "pending", "pending"]
    succeeded = RolloutStatus(phase="Succeeded", track="Succeeded", ring_index=3, promoted_rings=list(RINGS))
    assert states(succeeded) == [(ring, "done", True) for ring in RINGS]
    rolled_back = RolloutStatus(phase="RolledBack", track="RolledBack", ring_index=2, current_ring="stable")
    assert states(rolled_back) == [(ring, "pending", False) for ring in RINGS]
    assert states(RolloutStatus()) == [(ring, "pending", False) for ring in RINGS]


def test_the_bake_counts_down_while_baking_and_stands_still_while_halted() -> None:
    now = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
    baking = RolloutStatus(bake_until=now + timedelta(seconds=95))
    assert bake_left(baking, now) == (95.0, False)
    assert bake_left(baking, now + timedelta(minutes=5)) == (0.0, False)
    assert bake_left(RolloutStatus(bake_remaining_seconds=42.5), now) == (42.5, True)
    assert bake_left(RolloutStatus(), now) == (None, False)
    assert [duration(seconds) for seconds in (4, 125, 3780, 0.4)] == ["4s", "2m 05s", "1h 03m", "0s"]


def measurement(gate: str, minute: int, values: dict[str, float], verdict: str = "Passed",
                revision: str = "rev2") -> GateResultEntry:
    return GateResultEntry(at=datetime(2025, 5, 1, 12, minute, tzinfo=UTC), namespace="shop", name="web",
                           rollout_uid="u1", revision=revision, ring="canary", gate=gate, kind="threshold",
                           sequence=minute, verdict=verdict, values=values, threshold="value <= 0.01")


def test_gates_show_the_baking_rings_gates_first_with_a_sparkline_per_value_of_this_revision() -> None:
    status = RolloutStatus(revision="rev2", gates=[GateStatus(name="latency", kind="threshold", ring="early-adopter",
                                                              phase="Held", measurements=1)])
    measurements = [
        measurement("errors", 0, {"value": 0.5}, revision="rev1"),  # an earlier revision's: left out
        measurement("errors", 1, {"value": 0.001}),
        measurement("errors", 2, {"value": 0.003}),
        measurement("latency", 3, {"value": 0.4, "samples": 12}, verdict="TooFewSamples"),
    ]
    latency, errors = gate_views(status, measurements)
    assert (latency.name, latency.phase, [line.label for line in latency.lines]) == ("latency", "Held",
                                                                                     ["samples", "value"])
    assert (errors.name, errors.phase, errors.verdict, errors.passed, errors.measurements) == (
        "errors", None, "Passed", 2, 2)
    (line,) = errors.lines
    assert (line.count, line.low, line.high, line.latest) == (2, 0.001, 0.003, 0.003)


def test_a_sparkline_spans_its_box_by_time_and_value() -> None:
    start = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
    line = sparkline("value", [(start + timedelta(minutes=2), 3.0), (start, 1.0), (start + timedelta(minutes=1), 1.0)],
                     width=100, height=20)
    assert line is not None
    assert line.points == "3.0,17.0 50.0,17.0 97.0,3.0"  # sorted by time; the highest value at the top
    assert (line.last_x, line.last_y, line.latest) == (97.0, 3.0, 3.0)
    flat = sparkline("value", [(start, 2.0)], width=100, height=20)
    assert flat is not None and flat.points == "97.0,10.0"  # one point: at "now", mid-height
    assert sparkline("value", []) is None


@pytest.fixture
def no_kubernetes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No kubeconfig, no cluster around, no local control plane in the data folder."""
    monkeypatch.setenv("RINGMASTER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


@pytest.fixture
def service(database_url: str, no_kubernetes: None) -> Iterator[TestClient]:
    with TestClient(create_app(ServiceSettings(database_url=database_url))) as test_client:
        yield test_client


def test_the_root_leads_to_the_dashboard(service: TestClient) -> None:
    answer = service.get("/", follow_redirects=False)
    assert answer.status_code == 307 and answer.headers["location"] == "/dashboard"


def test_without_kubernetes_the_page_shows_the_cord_and_the_record_and_says_so(service: TestClient) -> None:
    page = service.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "Kubernetes is not configured" in page.text and "RINGMASTER_KUBECONFIG" in page.text
    assert "Pull the andon cord" in page.text and "Not pulled: the line is running." in page.text
    assert "The cord has never been pulled." in page.text
    # Nothing but this origin's script and style may run or load on the page.
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert "<script>" not in page.text and " style=" not in page.text
    assert page.headers["cache-control"] == "no-store"
    assert "Kubernetes is not configured" in service.get("/dashboard/fragments/rollouts").text


def test_an_active_pull_shows_who_when_why_and_its_scope_with_a_release_button(
        service: TestClient, database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        pulled = AndonStore(engine).pull(Scope(namespace="shop"), "checkout <b>errors</b> & 5xx", "paula")
    finally:
        engine.dispose()
    cord = service.get("/dashboard/fragments/cord")
    assert cord.status_code == 200
    assert 'data-line-state="stopped"' in cord.text and "Pulled: 1 active pull" in cord.text
    assert f"Pull {pulled.id}" in cord.text and "over namespace shop" in cord.text and "by paula via api" in cord.text
    assert f'data-release="{pulled.id}"' in cord.text
    # The reason is shown as written, never as markup.
    assert "checkout &lt;b&gt;errors&lt;/b&gt; &amp; 5xx" in cord.text and "<b>errors</b>" not in cord.text
    assert 'data-line="stopped"' in service.get("/dashboard").text


def test_a_pull_made_from_the_dashboard_is_recorded_as_made_there(service: TestClient, database_url: str) -> None:
    headers = {**authorized(database_url, "paula", "puller"), "Ringmaster-Via": "dashboard"}
    pulled = service.post("/api/v1/andon/pull", json={"reason": "pulled from the page", "scope": {}},
                          headers=headers)
    assert pulled.status_code == 201 and pulled.json()["via"] == "dashboard"
    assert "by paula via dashboard" in service.get("/dashboard/fragments/cord").text


def test_the_record_lists_pulls_releases_and_rollout_transitions_newest_first(
        service: TestClient, database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        cord = AndonStore(engine)
        pulled = cord.pull(Scope(), "checkout errors up", "paula")
        cord.release(pulled.id, "config rolled back", "rita")
        history = RolloutHistory(engine)
        for sequence, reason in enumerate(("RolloutStarted", "RingPromoted")):
            history.record(HistoryEntry(at=NOW + timedelta(seconds=sequence), namespace="shop", name="web",
                                        rollout_uid="u1", sequence=sequence, reason=reason, type="Normal",
                                        revision="3f9a0c1d2e", ring="canary", message=f"{reason} happened"))
    finally:
        engine.dispose()
    record = service.get("/dashboard/fragments/history").text
    assert re.search(r"Released</strong> pull \d+\s+over every rollout by rita via api: config rolled back", record)
    assert record.index("Released") < record.index("Pulled")
    assert record.index("RingPromoted") < record.index("RolloutStarted")
    assert "shop/web</strong> RingPromoted (canary)" in record


def test_when_reads_need_a_token_the_page_carries_no_data_and_its_fragments_need_a_viewer_token(
        database_url: str, no_kubernetes: None) -> None:
    settings = dataclasses.replace(ServiceSettings(database_url=database_url), reads_require_token=True)
    engine = make_engine(database_url)
    try:
        AndonStore(engine).pull(Scope(), "secret incident 4711", "paula")
    finally:
        engine.dispose()
    with TestClient(create_app(settings)) as service:
        page = service.get("/dashboard")
        assert page.status_code == 200 and "Pull the andon cord" in page.text
        assert "secret incident 4711" not in page.text and "needs a viewer token" in page.text
        for section in ("rollouts", "cord", "history"):
            assert_problem(service.get(f"/dashboard/fragments/{section}"), 401)
        viewer = bearer(create_token(database_url, "victor", "viewer"))
        answer = service.get("/dashboard/fragments/cord", headers=viewer)
        assert answer.status_code == 200 and "secret incident 4711" in answer.text
        assert_problem(service.get("/dashboard/fragments/cord", headers=bearer("rmt_not-a-token")), 401)


def test_the_static_files_are_served_and_nothing_else(service: TestClient) -> None:
    script = service.get("/dashboard/static/dashboard.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert "sessionStorage" in script.text and "document.cookie" not in script.text
    assert service.get("/dashboard/static/dashboard.css").headers["content-type"].startswith("text/css")
    for path in ("/dashboard/static/app.py", "/dashboard/static/..%2Fdashboard.py",
                 "/dashboard/static/%2E%2E%2Ftemplates%2Fdashboard.html"):
        assert service.get(path).status_code == 404, path


def test_a_wheel_of_the_project_ships_the_templates_and_static_files(tmp_path: Path) -> None:
    # Built from a copy of the work tree, so the build leaves nothing in the repository.
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPOSITORY,
                            check=True, capture_output=True, text=True).stdout.splitlines()
    source = tmp_path / "source"
    for name in listed:
        if (REPOSITORY / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPOSITORY / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--wheel-dir", str(tmp_path), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("ringmaster-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {path.relative_to(REPOSITORY).as_posix()
               for folder in ("templates", "static") for path in (REPOSITORY / "rollout" / "api" / folder).iterdir()}
    assert shipped and shipped <= names, shipped - names


@pytest.fixture(scope="module")
def kube(local_cluster: LocalCluster) -> Iterator[client.ApiClient]:
    with local_cluster.api_client() as api_client:
        install_crd(api_client)
        yield api_client


def test_a_rollout_shows_its_rings_capacity_bake_and_gates_with_sparklines(
        database_url: str, local_cluster: LocalCluster, kube: client.ApiClient, namespace: str) -> None:
    created = create(kube, namespace, "web", gating_canary())
    measure(database_url, namespace, "web", created["metadata"]["uid"])
    record(database_url, namespace, "web", created["metadata"]["uid"])
    create(kube, namespace, "api")
    settings = ServiceSettings(database_url=database_url, kubeconfig=local_cluster.kubeconfig)
    with TestClient(create_app(settings)) as service:
        asked_at = datetime.now(UTC)
        page = service.get("/dashboard").text
        fragment = service.get("/dashboard/fragments/rollouts").text
    # The status's bake ends 20 minutes after NOW, which was taken when the test modules were imported.
    bake_left_s = (NOW + timedelta(minutes=20) - asked_at).total_seconds()
    for html in (page, fragment):
        web = html[html.index(f'data-rollout="{namespace}/web"'):]
        assert 'data-phase="Progressing"' in web[:200] and "revision 3f9a0c1d2e" in web
        assert re.search(r'data-ring="canary" data-state="current"\s+data-flag="on"', web)
        assert re.search(r'data-ring="early-adopter" data-state="pending"\s+data-flag="off"', web)
        shown = re.search(r"bake (\d+)m (\d\d)s left", web)
        assert shown and bake_left_s - 5 <= int(shown[1]) * 60 + int(shown[2]) <= bake_left_s + 1
        assert re.search(r'data-ready="new">1</strong> \+ old <strong data-ready="old">2</strong> ready\s+of 3 wanted',
                         web)
        assert "ring canary is up; baking" in web
        gates = web[web.index('data-gate="error-ratio"'):]
        assert "Passed" in gates and "value &lt;= 0.01" in gates and "3 passed, 0 failed of 3" in gates
        assert re.search(r'<polyline class="spark-line" points="[\d.]+,[\d.]+ [\d.]+,[\d.]+ [\d.]+,[\d.]+">', gates)
        latency = web[web.index('data-gate="latency-p99"'):]
        assert "TooFewSamples" in latency and "Held" in latency
        assert 'data-phase="NotStarted"' in html[html.index(f'data-rollout="{namespace}/api"'):][:200]
    assert f"{namespace}/web</strong> RingReady (canary)" in page
