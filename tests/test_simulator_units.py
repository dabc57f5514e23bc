"""The node simulator's pure parts: annotations, pod lives and their status, synthetic traffic, scrape targets."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from rollout.localcluster.annotations import (
    CRASH_AFTER,
    ERROR_RATIO,
    LATENCY_MS,
    READY,
    READY_DELAY,
    RPS,
    PodBehaviour,
    parse_duration_s,
    read_behaviour,
)
from rollout.localcluster.lifecycle import (
    ContainerLife,
    ContainerSpec,
    Exit,
    Stage,
    advance,
    life_from_status,
    next_change_s,
    pod_status,
    started,
    status_fingerprint,
)
from rollout.localcluster.scrape import ServedPods, TargetsFile, metrics_handler, target_labels
from rollout.localcluster.simulator import Health, PodBoard, WatchExpired, follow_pods
from rollout.localcluster.traffic import BUCKETS_S, TrafficMeter, TrafficProfile, TrafficTotals, render, served

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC).timestamp()  # whole seconds, as the API server keeps them
APP = [ContainerSpec(name="app", image="example/web:1.0.0")]


def status_of(life: ContainerLife) -> dict[str, Any]:
    return pod_status(life, APP, pod_ip="10.244.1.2", host_ip="127.0.0.1")


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(condition for condition in status["conditions"] if condition["type"] == kind)


def statefulset_pod(name: str = "web-0", **labels: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "shop",
            "uid": f"uid-{name}",
            "labels": {"app": "web", "controller-revision-hash": "web-5d8c7b9f4", **labels},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web", "controller": True}],
        }
    }


# Annotations


def test_a_pod_without_annotations_is_ready_after_a_second_and_serves_ten_good_requests_a_second() -> None:
    behaviour, problems = read_behaviour(None)
    assert problems == []
    assert behaviour == PodBehaviour(ready_delay_s=1.0, never_ready=False, crash_after_s=None)
    assert behaviour.traffic == TrafficProfile(rps=10.0, error_ratio=0.0, latency_ms=50.0)


def test_every_annotation_is_read() -> None:
    behaviour, problems = read_behaviour(
        {
            READY_DELAY: "5s",
            READY: "never",
            CRASH_AFTER: "2m",
            RPS: "20",
            ERROR_RATIO: "0.05",
            LATENCY_MS: "120",
            "kubectl.kubernetes.io/restartedAt": "2026-11-27T12:00:00Z",
        }
    )
    assert problems == []
    assert behaviour == PodBehaviour(
        ready_delay_s=5.0,
        never_ready=True,
        crash_after_s=120.0,
        traffic=TrafficProfile(rps=20.0, error_ratio=0.05, latency_ms=120.0),
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("5s", 5.0), ("2m", 120.0), ("1m30s", 90.0), ("1.5s", 1.5), ("1h", 3600.0), ("0s", 0.0)],
)
def test_durations_are_written_as_in_kubernetes(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == seconds


@pytest.mark.parametrize("text", ["30", "5 s", "5sec", "-1s", "", "s", "1d"])
def test_a_duration_without_a_known_unit_is_refused_with_examples(text: str) -> None:
    with pytest.raises(ValueError, match=r"use e\.g\. '500ms', '5s'"):
        parse_duration_s(text)


def test_a_bad_value_is_reported_and_only_that_setting_falls_back_to_its_default() -> None:
    behaviour, problems = read_behaviour({CRASH_AFTER: "30", ERROR_RATIO: "5%", RPS: "20"})
    assert behaviour.crash_after_s is None
    assert behaviour.traffic.error_ratio == 0.0
    assert behaviour.traffic.rps == 20.0
    assert [str(problem) for problem in problems] == [
        "sim.ringmaster.dev/crash-after: '30' is not a duration; use e.g. '500ms', '5s', '2m' or '1m30s'; ignored",
        "sim.ringmaster.dev/error-ratio: '5%' is not a ratio; use a number from 0 to 1 such as '0.05' for 5 %; ignored",
    ]


def test_a_misspelt_annotation_is_reported_not_silently_ignored() -> None:
    behaviour, problems = read_behaviour({"sim.ringmaster.dev/crash_after": "30s"})
    assert behaviour.crash_after_s is None
    assert [problem.annotation for problem in problems] == ["sim.ringmaster.dev/crash_after"]
    assert "is not a simulator annotation" in problems[0].message
    assert "crash-after" in problems[0].message


@pytest.mark.parametrize(
    ("annotation", "text", "advice"),
    [
        (CRASH_AFTER, "500ms", "use at least '1s'"),
        (READY, "false", "the only value is 'never'"),
        (ERROR_RATIO, "1.5", "from 0 to 1"),
        (RPS, "-3", "cannot be negative"),
        (RPS, "inf", "requests per second"),
        (LATENCY_MS, "0", "more than 0 ms"),
    ],
)
def test_values_out_of_range_are_refused_with_advice(annotation: str, text: str, advice: str) -> None:
    behaviour, problems = read_behaviour({annotation: text})
    assert behaviour == PodBehaviour()
    assert len(problems) == 1
    assert advice in problems[0].message


@given(st.dictionaries(st.sampled_from([READY_DELAY, READY, CRASH_AFTER, RPS, ERROR_RATIO, LATENCY_MS]), st.text()))
def test_no_annotation_value_makes_reading_fail(annotations: dict[str, str]) -> None:
    behaviour, problems = read_behaviour(annotations)
    assert len(problems) <= len(annotations)
    assert behaviour.ready_delay_s >= 0
    assert 0 <= behaviour.traffic.error_ratio <= 1


# Pod lives


def test_a_pod_becomes_ready_exactly_after_the_ready_delay() -> None:
    behaviour = PodBehaviour(ready_delay_s=5.0)
    life = started(T0)
    assert advance(life, behaviour, T0 + 4.9).stage is Stage.STARTING
    ready = advance(life, behaviour, T0 + 60)
    assert (ready.stage, ready.since_s) == (Stage.READY, T0 + 5)
    assert next_change_s(ready, behaviour) is None


def test_a_never_ready_pod_runs_unready_for_good() -> None:
    behaviour = PodBehaviour(never_ready=True)
    life = advance(started(T0), behaviour, T0 + 3600)
    assert life.stage is Stage.STARTING
    assert next_change_s(life, behaviour) is None
    status = status_of(life)
    assert status["phase"] == "Running"
    assert condition(status, "Ready")["status"] == "False"
    assert status["containerStatuses"][0]["state"]["running"]["startedAt"] == "2026-11-27T12:00:00Z"


def test_a_ready_pod_annotated_never_ready_loses_readiness_but_keeps_running() -> None:
    ready = advance(started(T0), PodBehaviour(), T0 + 10)
    unready = advance(ready, PodBehaviour(never_ready=True), T0 + 20)
    assert (unready.stage, unready.since_s) == (Stage.STARTING, T0 + 20)
    assert (unready.started_s, unready.restart_count) == (T0, 0)


def test_a_crashing_pod_backs_off_comes_back_ready_and_crashes_again() -> None:
    behaviour = PodBehaviour(ready_delay_s=2.0, crash_after_s=30.0)
    ready = advance(started(T0), behaviour, T0 + 2)
    crashed = advance(ready, behaviour, T0 + 32)
    assert crashed.stage is Stage.BACKING_OFF
    assert crashed.restart_count == 1
    assert crashed.last_exit == Exit(started_s=T0, finished_s=T0 + 32)
    back = advance(crashed, behaviour, T0 + 34)
    assert (back.stage, back.since_s, back.started_s) == (Stage.READY, T0 + 34, T0 + 34)
    again = advance(back, behaviour, T0 + 64)
    assert (again.stage, again.restart_count, again.last_exit) == (Stage.BACKING_OFF, 2, Exit(T0 + 34, T0 + 64))


def test_a_crash_shows_as_crash_loop_back_off_with_the_crashed_run_as_last_state() -> None:
    behaviour = PodBehaviour(ready_delay_s=2.0, crash_after_s=30.0)
    status = status_of(advance(started(T0), behaviour, T0 + 33))
    container = status["containerStatuses"][0]
    assert container["ready"] is False
    assert container["restartCount"] == 1
    assert container["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert container["lastState"]["terminated"]["exitCode"] == 1
    assert container["lastState"]["terminated"]["finishedAt"] == "2026-11-27T12:00:32Z"
    assert condition(status, "Ready")["status"] == "False"


def test_under_restart_policy_never_a_crash_fails_the_pod_for_good() -> None:
    behaviour = PodBehaviour(ready_delay_s=1.0, crash_after_s=10.0)
    failed = advance(started(T0), behaviour, T0 + 3600, restarts=False)
    assert (failed.stage, failed.since_s, failed.restart_count) == (Stage.FAILED, T0 + 11, 0)
    status = status_of(failed)
    assert status["phase"] == "Failed"
    assert status["containerStatuses"][0]["state"]["terminated"]["finishedAt"] == "2026-11-27T12:00:11Z"


def test_a_ready_status_carries_no_reason_left_over_from_starting() -> None:
    ready = status_of(advance(started(T0), PodBehaviour(), T0 + 1))
    assert condition(ready, "Ready") | condition(ready, "ContainersReady") == {
        "type": "ContainersReady",
        "status": "True",
        "reason": None,
        "message": None,
        "lastProbeTime": None,
        "lastTransitionTime": "2026-11-27T12:00:01Z",
    }


behaviours = st.builds(
    PodBehaviour,
    ready_delay_s=st.integers(0, 20).map(float),
    crash_after_s=st.none() | st.integers(1, 60).map(float),
)


@given(behaviours, st.booleans(), st.integers(0, 20_000))
def test_jumping_ahead_gives_the_life_lived_second_by_second(
    behaviour: PodBehaviour, restarts: bool, seconds: int
) -> None:
    # A simulator that was down, or late, must land where one that never stopped would be.
    stepped = started(T0)
    for second in range(0, seconds + 1, max(1, seconds // 200)):
        stepped = advance(stepped, behaviour, T0 + second, restarts=restarts)
    stepped = advance(stepped, behaviour, T0 + seconds, restarts=restarts)
    assert advance(started(T0), behaviour, T0 + seconds, restarts=restarts) == stepped


@given(behaviours, st.booleans(), st.integers(0, 5_000))
def test_a_restarted_simulator_reads_back_the_life_it_wrote(
    behaviour: PodBehaviour, restarts: bool, seconds: int
) -> None:
    life = advance(started(T0), behaviour, T0 + seconds, restarts=restarts)
    assert life_from_status(status_of(life)) == life


def test_a_status_the_simulator_never_wrote_starts_the_pod_afresh() -> None:
    assert life_from_status({"phase": "Pending", "qosClass": "BestEffort"}) is None
    waiting = {"startTime": "2026-11-27T12:00:00Z", "containerStatuses": [{"state": {"waiting": {}}}]}
    assert life_from_status(waiting) is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
status_keys = st.sampled_from(["startTime", "containerStatuses", "conditions", "phase", "state", "running"])


@given(st.dictionaries(status_keys, json_values))
def test_no_status_makes_reading_it_back_fail(status: dict[str, Any]) -> None:
    life = life_from_status(status)
    assert life is None or isinstance(life, ContainerLife)


def test_statuses_that_differ_only_in_timestamps_need_no_write() -> None:
    life = advance(started(T0), PodBehaviour(), T0 + 5)
    later = replace(life, since_s=T0 + 7, started_s=T0 + 6)
    assert status_fingerprint(status_of(life)) == status_fingerprint(status_of(later))
    assert status_fingerprint(status_of(life)) != status_fingerprint(status_of(replace(life, stage=Stage.STARTING)))
    assert status_fingerprint(status_of(life)) != status_fingerprint({"phase": "Pending"})


def test_a_condition_someone_else_owns_does_not_make_the_simulator_write_again() -> None:
    written = status_of(advance(started(T0), PodBehaviour(), T0 + 5))
    observed = {**written, "conditions": [*written["conditions"], {"type": "DisruptionTarget", "status": "True"}]}
    assert status_fingerprint(observed) == status_fingerprint(written)


# Traffic


def test_counters_grow_with_ready_time_at_the_annotated_rate_and_error_ratio() -> None:
    totals = served(TrafficProfile(rps=20, error_ratio=0.05, latency_ms=120), 100)
    assert (totals.requests, totals.succeeded, totals.failed) == (2000, 1900, 100)


def test_error_share_is_not_lost_to_floating_point() -> None:
    assert served(TrafficProfile(rps=1, error_ratio=0.29), 100).failed == 29


def test_latencies_centre_on_the_annotated_median() -> None:
    totals = served(TrafficProfile(rps=100, latency_ms=120), 100)
    faster = dict(zip(BUCKETS_S, totals.bucket_counts, strict=True))
    assert faster[0.1] < totals.requests / 2 < faster[0.25]
    assert faster[0.025] < totals.requests * 0.01
    assert faster[1.0] > totals.requests * 0.999
    assert totals.duration_sum_s / totals.requests == pytest.approx(0.120, rel=0.15)


profiles = st.builds(
    TrafficProfile,
    rps=st.floats(0, 1000),
    error_ratio=st.floats(0, 1),
    latency_ms=st.floats(0.1, 20_000),
)


def never_less(earlier: TrafficTotals, later: TrafficTotals) -> bool:
    return (
        later.succeeded >= earlier.succeeded
        and later.failed >= earlier.failed
        and all(mine >= theirs for mine, theirs in zip(later.bucket_counts, earlier.bucket_counts, strict=True))
        and later.duration_sum_s >= earlier.duration_sum_s
    )


@given(st.lists(st.tuples(st.floats(0, 600), profiles), min_size=1, max_size=6))
def test_counters_never_go_down_while_a_pod_stays_ready_even_when_its_profile_changes(
    scrapes: list[tuple[float, TrafficProfile]],
) -> None:
    meter = TrafficMeter(profile=scrapes[0][1], segment_start_s=T0)
    now_s = T0
    previous = meter.totals_at(now_s)
    for seconds_since_last_scrape, profile in scrapes:
        now_s += seconds_since_last_scrape
        meter = meter.with_profile(profile, now_s)
        totals = meter.totals_at(now_s)
        assert never_less(previous, totals)
        assert totals.bucket_counts == tuple(sorted(totals.bucket_counts))
        assert totals.bucket_counts[-1] <= totals.requests
        previous = totals


def test_the_exposition_is_what_prometheus_reads() -> None:
    totals = served(TrafficProfile(rps=20, error_ratio=0.05, latency_ms=120), 100)
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(render(totals).decode())
        for sample in family.samples
    }
    assert samples[("sim_http_requests_total", (("code", "200"),))] == 1900
    assert samples[("sim_http_requests_total", (("code", "500"),))] == 100
    assert samples[("sim_http_request_duration_seconds_bucket", (("le", "+Inf"),))] == 2000
    assert samples[("sim_http_request_duration_seconds_count", ())] == 2000
    assert ("sim_http_request_duration_seconds_bucket", (("le", "0.005"),)) in samples


# Scrape targets


def test_a_statefulset_pod_is_labelled_with_its_statefulset_revision_and_version() -> None:
    assert target_labels(statefulset_pod(**{"app.kubernetes.io/version": "2.1.0"})) == {
        "__metrics_path__": "/pods/shop/web-0/metrics",
        "namespace": "shop",
        "pod": "web-0",
        "statefulset": "web",
        "revision": "web-5d8c7b9f4",
        "version": "2.1.0",
    }


def test_a_pod_without_a_version_label_gets_no_version_label() -> None:
    assert "version" not in target_labels(statefulset_pod())


def test_the_targets_file_lists_ready_pods_and_is_emptied_when_the_simulator_stops(tmp_path: Path) -> None:
    path = tmp_path / "prometheus" / "targets.json"
    targets = TargetsFile(path, "127.0.0.1:9100")
    targets.write([target_labels(statefulset_pod("web-1")), target_labels(statefulset_pod("web-0"))])
    groups = json.loads(path.read_text())
    assert [group["labels"]["pod"] for group in groups] == ["web-0", "web-1"]
    assert groups[0]["targets"] == ["127.0.0.1:9100"]
    targets.close()
    targets.write([target_labels(statefulset_pod("web-2"))])
    assert json.loads(path.read_text()) == []
    assert [entry.name for entry in path.parent.iterdir()] == ["targets.json"]


def test_counters_start_again_from_zero_after_a_crash() -> None:
    pods = ServedPods()
    pod = statefulset_pod()
    pods.serve(pod, ready_since_s=T0, profile=TrafficProfile(rps=10), now_s=T0)
    assert (totals := pods.totals("shop", "web-0", T0 + 60)) is not None and totals.requests == 600
    pods.serve(pod, ready_since_s=T0 + 100, profile=TrafficProfile(rps=10), now_s=T0 + 100)
    assert (totals := pods.totals("shop", "web-0", T0 + 110)) is not None and totals.requests == 100
    pods.stop_serving("uid-web-0")
    assert pods.totals("shop", "web-0", T0 + 120) is None


@dataclass
class MetricsServer:
    pods: ServedPods
    health: Health
    url: str


@pytest.fixture
def metrics_server() -> Iterator[MetricsServer]:
    pods, health = ServedPods(), Health()
    server = ThreadingHTTPServer(("127.0.0.1", 0), metrics_handler(pods, health.unhealthy_because))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield MetricsServer(pods, health, f"http://127.0.0.1:{server.server_address[1]}")
    server.shutdown()
    server.server_close()


def test_healthz_answers_ok_once_the_node_is_registered_and_the_pods_listed(metrics_server: MetricsServer) -> None:
    health = metrics_server.health
    health.pods_listed.set()
    with pytest.raises(urllib.error.HTTPError) as waiting:
        urllib.request.urlopen(f"{metrics_server.url}/healthz")
    assert (waiting.value.code, waiting.value.read()) == (503, b"the node is not registered\n")
    health.node_registered.set()
    with urllib.request.urlopen(f"{metrics_server.url}/healthz") as response:
        assert response.status == 200


def test_only_ready_pods_answer_scrapes(metrics_server: MetricsServer) -> None:
    metrics_server.pods.serve(statefulset_pod(), ready_since_s=T0, profile=TrafficProfile(), now_s=T0)
    with urllib.request.urlopen(f"{metrics_server.url}/pods/shop/web-0/metrics") as response:
        assert b'sim_http_requests_total{code="200"}' in response.read()
    with pytest.raises(urllib.error.HTTPError) as not_ready:
        urllib.request.urlopen(f"{metrics_server.url}/pods/shop/web-1/metrics")
    assert not_ready.value.code == 404


# The work queue


def test_a_pod_is_due_when_it_changes_and_when_its_timer_goes_off() -> None:
    board = PodBoard()
    board.put(statefulset_pod("web-0"))
    assert board.take_due(max_wait_s=0) == {"uid-web-0"}
    assert board.take_due(max_wait_s=0) == set()
    board.due_at("uid-web-0", 0.0)
    assert board.take_due(max_wait_s=0) == {"uid-web-0"}


def test_a_fresh_list_makes_every_pod_due_and_forgets_the_vanished() -> None:
    board = PodBoard()
    board.put(statefulset_pod("web-0"))
    board.take_due(max_wait_s=0)
    board.replace_all([statefulset_pod("web-1")])
    assert board.take_due(max_wait_s=0) == {"uid-web-0", "uid-web-1"}
    assert board.get("uid-web-0") is None


class WatchResponse:
    """The part of urllib3's streamed response that reading a watch uses."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        body = b"".join(json.dumps(event).encode() + b"\n" for event in events)
        # Split mid-line, as chunks from the server are.
        self._chunks = [body[:37], body[37:]]

    def stream(self, amt: int | None = None, decode_content: bool = False) -> Iterator[bytes]:
        yield from self._chunks

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


class WatchingApi:
    def __init__(self, events: list[dict[str, Any]]) -> None:
        self._events = events

    def list_pod_for_all_namespaces(self, **_: Any) -> WatchResponse:
        return WatchResponse(self._events)


def pod_event(kind: str, name: str, resource_version: str) -> dict[str, Any]:
    pod = statefulset_pod(name)
    pod["metadata"]["resourceVersion"] = resource_version
    return {"type": kind, "object": pod}


def test_a_watch_applies_its_events_and_goes_on_from_the_last_bookmark() -> None:
    board = PodBoard()
    api = WatchingApi(
        [
            pod_event("ADDED", "web-0", "11"),
            pod_event("ADDED", "web-1", "12"),
            pod_event("DELETED", "web-0", "13"),
            {"type": "BOOKMARK", "object": {"kind": "Pod", "metadata": {"resourceVersion": "20"}}},
        ]
    )
    assert follow_pods(cast(Any, api), board, "10", threading.Event()) == "20"
    assert board.get("uid-web-0") is None
    assert board.get("uid-web-1") is not None
    assert board.take_due(max_wait_s=0) == {"uid-web-0", "uid-web-1"}


def test_a_watch_that_expired_asks_for_a_fresh_list() -> None:
    gone = {"kind": "Status", "status": "Failure", "message": "too old resource version: 10 (30)", "code": 410}
    api = WatchingApi([pod_event("ADDED", "web-0", "11"), {"type": "ERROR", "object": gone}])
    with pytest.raises(WatchExpired):
        follow_pods(cast(Any, api), PodBoard(), "10", threading.Event())
