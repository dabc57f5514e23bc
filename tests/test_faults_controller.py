"""Faults the controller survives, on the local control plane with real `ringmaster controller` processes:
SIGKILLed while its gates measure, at every write of a rollback, around pulls and releases of the andon cord;
its leader killed while a ring's capacity moves; Prometheus down while a bad release bakes. Each rollout ends
as it should, capacity held throughout, the flag off before a rolled-back version loses a pod, and nothing
written while the cord is pulled.

Kill points come from `RINGMASTER_FAULT_KILL_AFTER_WRITES` (the controller SIGKILLs itself after its n-th write,
n drawn from a seed that RINGMASTER_CRASH_SEED replays) or from the test, at a moment it watches for.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client
from sqlalchemy import Engine

from cohorts.cache import CompiledSetCache
from cohorts.db import make_engine, upgrade
from cohorts.store import CohortStore
from rollout.andon.scope import Scope
from rollout.andon.store import AndonStore
from rollout.controller.act import Executor
from rollout.controller.actions import Action
from rollout.controller.crd import install_crd
from rollout.controller.gating import due
from rollout.controller.history import GateResults
from rollout.controller.observed import RolloutView
from rollout.controller.reconciler import Reconciler
from rollout.controller.spec import GROUP, PLURAL, VERSION
from rollout.controller.status import RolloutStatus
from rollout.flags.errors import FlagNotFound
from rollout.flags.spec import RingTargeting
from rollout.flags.store import FlagStore
from rollout.localcluster.cluster import LocalCluster
from rollout.localcluster.prometheus import PrometheusServer
from tests.controller_harness import (
    CANARY_RINGS,
    CapacitySampler,
    Sample,
    Sampler,
    get_rollout,
    rollout,
    statefulset,
    wait_for,
    wait_ready,
)
from tests.controller_processes import ControllerProcess, lease_holder
from tests.simulated_world import World as SimulatedWorld
from tests.test_gates_e2e import FlagWatch, controller_on, gated_rollout, new_version, traffic
from tests.test_plan_gates import gated

REPLICAS = 3
SURGE = 1
DEFAULT_SEED = 20261127

NEW = 'namespace="{{ namespace }}",statefulset="{{ newStatefulSet }}"'
NEW_REQUESTS = f"sum(increase(sim_http_requests_total{{{NEW}}}[{{{{ window }}}}]))"
NEW_ERRORS = f'sum(increase(sim_http_requests_total{{{NEW},code=~"5.."}}[{{{{ window }}}}]))'
# The canary's gate, as in examples/bad-release: the new version alone fails at most 5 % of 40 requests or more.
ERROR_RATIO = {"name": "error-ratio", "threshold": {"query": f"{NEW_ERRORS} / {NEW_REQUESTS}", "max": 0.05},
               "samples": NEW_REQUESTS, "minSamples": 40, "minWindow": "4s", "interval": "2s"}


@dataclass
class World:
    """One namespace, its SQLite database, and the controller processes a test starts (killed at the end)."""

    local_cluster: LocalCluster
    api_client: Any
    namespace: str
    database_url: str
    engine: Engine
    log_dir: Path
    processes: list[ControllerProcess] = field(default_factory=list)

    def controller(self, identity: str = "faulty", **options: Any) -> ControllerProcess:
        # One identity for every restart: the Lease a killed run held is taken back at once.
        process = ControllerProcess(self.local_cluster.kubeconfig, self.namespace, self.database_url, identity,
                                    self.log_dir, **options)
        self.processes.append(process)
        return process

    def create_statefulset(self, body: dict[str, Any]) -> None:
        client.AppsV1Api(self.api_client).create_namespaced_stateful_set(self.namespace, body)
        wait_ready(self.api_client, self.namespace, body["metadata"]["name"], body["spec"]["replicas"])

    def apply(self, body: dict[str, Any]) -> None:
        client.CustomObjectsApi(self.api_client).create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, body)

    def status(self) -> dict[str, Any]:
        found: dict[str, Any] = get_rollout(self.api_client, self.namespace, "web").get("status") or {}
        return found

    def wait(self, what: str, predicate: Callable[[dict[str, Any]], Any], timeout_s: float = 120,
             running: ControllerProcess | None = None) -> dict[str, Any]:
        def reached() -> bool:
            if running is not None and not running.alive():
                raise AssertionError(f"the controller exited while waiting for {what}:\n{running.log()[-3000:]}")
            return bool(predicate(self.status()))

        try:
            wait_for(what, reached, timeout_s, poll_s=0.05)
        except AssertionError as error:
            status = self.status()
            raise AssertionError(f"{error}; web is {status.get('phase')}/{status.get('step')} "
                                 f"({status.get('message')})") from None
        return self.status()

    def flag_rings(self, key: str) -> frozenset[str]:
        try:
            targeting = FlagStore(self.engine).get_flag(key).spec.targeting
        except FlagNotFound:
            return frozenset()
        assert isinstance(targeting, RingTargeting)
        return frozenset(ring for ring, variant in targeting.rings.variants.items() if variant == "on")

    def flag_versions(self, key: str) -> int:
        try:
            return len(FlagStore(self.engine).list_versions(key))
        except FlagNotFound:
            return 0

    def verdicts(self) -> list[tuple[str, str, str]]:
        return [(entry.ring, entry.gate, entry.verdict)
                for entry in GateResults(self.engine).entries(self.namespace, "web")]


@pytest.fixture
def world(local_cluster: LocalCluster, namespace: str, tmp_path: Path) -> Iterator[World]:
    url = f"sqlite:///{tmp_path / 'ringmaster.db'}"
    upgrade(url)
    engine = make_engine(url)
    with local_cluster.api_client() as api_client:
        install_crd(api_client)
        running = World(local_cluster, api_client, namespace, url, engine, tmp_path)
        try:
            yield running
        finally:
            for process in running.processes:
                if process.alive():
                    process.kill()
    engine.dispose()


class FlagRings(Sampler):
    """The rings a flag is on for, every 20 ms, to tell when it went off against the capacity samples."""

    def __init__(self, world: World, key: str) -> None:
        super().__init__()
        self.world, self.key = world, key

    def read(self) -> frozenset[str]:
        return self.world.flag_rings(self.key)


class Phases(Sampler):
    """The phase of Rollout `web`, every 20 ms."""

    def __init__(self, api_client: Any, namespace: str) -> None:
        super().__init__()
        self.api_client, self.namespace = api_client, namespace

    def read(self) -> str | None:
        try:
            found = get_rollout(self.api_client, self.namespace, "web")
        except client.ApiException:
            return None
        phase: str = (found.get("status") or {}).get("phase", "")
        return phase

    def changes(self, start_s: float, end_s: float) -> list[str]:
        """The phases seen from `start_s` to `end_s`, each once per stretch."""
        seen = [phase for at_s, phase in self.readings if start_s <= at_s <= end_s]
        return [phase for index, phase in enumerate(seen) if index == 0 or seen[index - 1] != phase]


def kill_after_each_few_writes(world: World, done: Callable[[dict[str, Any]], bool], rng: random.Random,
                               *, kills: int = 40, **options: Any) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Runs the controller again and again, each run SIGKILLing itself after 1 or 2 writes, until `done(status)`
    or `kills` kills; the status before and after each killed run."""
    runs: list[tuple[dict[str, Any], dict[str, Any]]] = []
    while len(runs) < kills and not done(before := world.status()):
        process = world.controller(kill_after_writes=rng.randint(1, 2), **options)

        def stopped(run: ControllerProcess = process) -> bool:
            return not run.alive() or done(world.status())

        wait_for("the controller to kill itself, or the rollout to get there", stopped, 120, poll_s=0.05)
        if process.alive():  # it got there with a write to spare
            process.kill()
            break
        code = process.wait(timeout_s=10)
        assert code == -9, f"the controller exited with {code}:\n{process.log()[-3000:]}"
        runs.append((before, world.status()))
    return runs


def crash_seed() -> int:
    return int(os.environ.get("RINGMASTER_CRASH_SEED", DEFAULT_SEED))


def measurements(status: dict[str, Any]) -> int:
    return sum(gate.get("measurements", 0) for gate in status.get("gates", []))


def assert_make_before_break(sampler: CapacitySampler) -> None:
    assert sampler.samples, "the sampler saw nothing"
    short = sorted({total for total in sampler.total_ready() if total < REPLICAS})
    assert not short, f"ready replicas fell below {REPLICAS}: {short}"
    assert max(sampler.total_replicas()) <= REPLICAS + SURGE, "more replicas than the surge allows"


def gated_by_error_ratio(flag: str, error_ratio: str, bakes: tuple[str, ...], **gate: Any) -> dict[str, Any]:
    """The new version at `error_ratio`, its canary judged by ERROR_RATIO with `gate`'s changes."""
    body = rollout("web", "web", flag=flag, bakes=bakes, template=new_version(error_ratio), image=None,
                   max_surge=SURGE)
    body["spec"]["rings"][0]["gates"] = [{**ERROR_RATIO, **gate}]
    return body


def serving_old_version(world: World) -> None:
    old = statefulset("web", REPLICAS, "registry.example.com/web:1.0.0")
    traffic(old["spec"], "0.01")
    world.create_statefulset(old)


def test_a_controller_killed_right_after_measuring_its_gates_still_bakes_in_full_and_promotes_on_evidence(
        world: World) -> None:
    serving_old_version(world)
    rng = random.Random(crash_seed())
    # 400 requests are 20 s of the canary's traffic: its gate holds that long, however slowly controllers start.
    with CapacitySampler(world.api_client, world.namespace) as sampler:
        world.apply(gated_by_error_ratio("web-v2", "0.01", bakes=("10s", "0s", "0s", "0s"), minSamples=400))
        first = world.controller(prometheus_url=world.local_cluster.prometheus_url)
        world.wait("a measurement in the canary's bake", lambda status: status.get("step") == "Baking"
                   and measurements(status) > 0, running=first)
        first.kill()
        # While the canary's gate is measured, a measurement is the only write: each run dies right after one.
        runs = kill_after_each_few_writes(world, lambda status: status.get("currentRing") != "canary", rng, kills=2,
                                          prometheus_url=world.local_cluster.prometheus_url)
        last = world.controller(prometheus_url=world.local_cluster.prometheus_url)
        status = world.wait("Succeeded", lambda status: status.get("phase") in ("Succeeded", "RolledBack", "Paused"),
                            running=last)
        assert last.terminate() == 0
    assert status["phase"] == "Succeeded", status.get("message")
    in_canary = [(before, after) for before, after in runs if after.get("currentRing") == "canary"]
    assert in_canary, "no controller was killed while the canary's gate was measured"
    assert all(measurements(after) > measurements(before) for before, after in in_canary), in_canary
    assert_make_before_break(sampler)
    assert world.flag_rings("web-v2") == frozenset(CANARY_RINGS)
    canary = status["history"][0]
    assert canary["ring"] == "canary" and canary["outcome"] == "promoted"
    # Bake time is kept in the status, so restarts neither cut the bake short nor start it again.
    baked_s = (datetime.fromisoformat(canary["promotedAt"]) - datetime.fromisoformat(canary["readyAt"])).total_seconds()
    assert baked_s >= 10, f"the canary baked {baked_s:.1f} s of its 10 s"
    # Every measurement is on record, the one that promoted the canary too, though controllers died right after
    # measuring: measurements are recorded before the status that counts them.
    verdicts = world.verdicts()
    assert verdicts[-1] == ("canary", "error-ratio", "Passed"), verdicts
    assert not [entry for entry in verdicts if entry[2] in ("Failed", "Inconclusive")], verdicts
    numbers = [entry.sequence for entry in GateResults(world.engine).entries(world.namespace, "web")]
    assert numbers == list(range(1, len(numbers) + 1)), numbers


class ShellCalls:
    """An executor that only notes what the reconciler asks of it, in order."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def write_status(self, rollout: RolloutView, status: RolloutStatus) -> dict[str, Any]:
        self.calls.append("status")
        return {"metadata": {"resourceVersion": "written"}, "status": status.to_wire()}

    def execute(self, rollout: RolloutView, action: Action) -> None:
        self.calls.append(type(action).__name__)


def test_a_gate_measurement_is_recorded_before_the_status_that_counts_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world = SimulatedWorld(gated(), replicas=10)
    world.run_until(lambda status: bool(due(status, world.spec_model(), False, world.now)))
    url = f"sqlite:///{tmp_path / 'ringmaster.db'}"
    upgrade(url)
    engine = make_engine(url)
    shell = ShellCalls()
    reconciler = Reconciler(
        rollout_of=lambda namespace, name: world.rollout, statefulset_of=lambda namespace, name: None,
        cohort_store=CohortStore(engine), compiled_sets=CompiledSetCache(CohortStore(engine)),
        flag_store=FlagStore(engine), executor=cast(Executor, shell), clock=lambda: world.now)
    # The simulated world stands in for the caches, the database and Prometheus.
    monkeypatch.setattr(reconciler, "observe", lambda rollout, now: world.observe()[1])
    monkeypatch.setattr(reconciler, "measure", lambda rollout, observed, andon, now: world.measured(rollout, observed))
    reconciler.reconcile(f"{world.rollout['metadata']['namespace']}/{world.rollout['metadata']['name']}")
    engine.dispose()
    assert shell.calls[:2] == ["RecordGateResult", "status"], shell.calls


def test_a_controller_killed_at_every_write_of_a_rollback_turns_the_flag_off_first_and_keeps_capacity(
        world: World) -> None:
    serving_old_version(world)
    rng = random.Random(crash_seed())
    with CapacitySampler(world.api_client, world.namespace) as sampler, FlagRings(world, "web-bad") as flag:
        world.apply(gated_by_error_ratio("web-bad", "0.3", bakes=("60s", "0s", "0s", "0s")))
        first = world.controller(prometheus_url=world.local_cluster.prometheus_url)
        new = world.wait("the canary's bake", lambda status: status.get("step") == "Baking",
                         running=first)["newStatefulSet"]
        first.kill()
        # From the canary's first measurements to the end of the rollback, no run gets more than two writes done.
        runs = kill_after_each_few_writes(world, lambda status: status.get("phase") == "RolledBack", rng,
                                          prometheus_url=world.local_cluster.prometheus_url)
    status = world.status()
    assert status["phase"] == "RolledBack", status.get("message")
    assert "gate error-ratio failed in ring canary" in status["rollbackReason"]
    killed_rolling_back = [after for _, after in runs if after.get("phase") == "RollingBack"]
    assert len(killed_rolling_back) >= 3, f"only {len(killed_rolling_back)} of {len(runs)} kills while RollingBack"
    assert_make_before_break(sampler)
    # The new version never grew past the canary's one replica, and the flag was off before it lost it.
    assert sampler.max_replicas(new) == 1 and sampler.max_replicas("web") <= REPLICAS
    grown = next(index for index, sample in enumerate(sampler.samples) if sample.replicas.get(new) == 1)
    shrunk_at = next(sample.at_s for sample in sampler.samples[grown:] if sample.replicas.get(new, 0) == 0)
    rings_then = [rings for at_s, rings in flag.readings if at_s <= shrunk_at]
    assert rings_then[-1] == frozenset(), f"the flag was on for {sorted(rings_then[-1])} when {new} shrank"
    assert frozenset({"canary"}) in rings_then, "the flag was never on for the canary"
    seen = [rings for _, rings in flag.readings]
    turned_off = seen.index(frozenset(), seen.index(frozenset({"canary"})))
    assert not [rings for rings in seen[turned_off:] if rings], "the flag came back on"
    assert world.flag_rings("web-bad") == frozenset()
    assert [record["ring"] for record in status["history"]] == ["canary"]


class StatefulSetWrites(Sampler):
    """Each StatefulSet's generation (moved by every write to its spec) and replicas, every 20 ms."""

    def __init__(self, api_client: Any, namespace: str) -> None:
        super().__init__()
        self.apps = client.AppsV1Api(api_client)
        self.namespace = namespace

    def read(self) -> frozenset[tuple[str, int, int]] | None:
        try:
            items = self.apps.list_namespaced_stateful_set(self.namespace, _request_timeout=5).items
        except (client.ApiException, OSError):
            return None
        return frozenset((item.metadata.name, item.metadata.generation, item.spec.replicas) for item in items)

    def between(self, start_s: float, end_s: float) -> set[frozenset[tuple[str, int, int]]]:
        return {reading for at_s, reading in self.readings if start_s <= at_s <= end_s}


def test_a_pull_made_while_the_controller_is_dead_halts_it_before_any_write_and_a_release_made_while_dead_resumes(
        world: World) -> None:
    world.create_statefulset(statefulset("web", REPLICAS, "registry.example.com/web:1.0.0"))
    cord = AndonStore(world.engine)
    with CapacitySampler(world.api_client, world.namespace) as sampler, \
            StatefulSetWrites(world.api_client, world.namespace) as writes, \
            Phases(world.api_client, world.namespace) as phases:
        world.apply(rollout("web", "web", flag="web-v2", bakes=("2s", "0s", "0s", "0s"), max_surge=SURGE))
        # Its one write is the status that starts the rollout: the new StatefulSet it planned is not created yet.
        first = world.controller(kill_after_writes=1)
        assert first.wait(timeout_s=120) == -9, first.log()[-3000:]
        started = world.status()
        assert started["phase"] == "Progressing" and started["step"] == "CreatingStatefulSet", started
        pull = cord.pull(Scope(), "freeze while the controller is down", "ana")
        pulled_at = time.monotonic()
        flag_versions = world.flag_versions("web-v2")

        second = world.controller()
        halted = world.wait("Halted", lambda status: status.get("phase") == "Halted", running=second)
        halted_at = time.monotonic()
        wait_for("3 s of a halted controller", lambda: time.monotonic() - halted_at > 3, 10)
        assert second.alive() and "leads" in second.log()
        second.kill()
        watched_until = time.monotonic()
        assert world.flag_versions("web-v2") == flag_versions, "the flag was written while the cord was pulled"
        cord.release(pull.id, "all clear", "bob")

        third = world.controller()
        status = world.wait("Succeeded", lambda status: status.get("phase") == "Succeeded", running=third)
        assert third.terminate() == 0
    assert status["history"][0]["ring"] == "canary"
    condition = next(item for item in halted["conditions"] if item["type"] == "Halted")
    assert (condition["status"], condition["reason"]) == ("True", "AndonPulled")
    assert f"pull {pull.id}" in condition["message"]
    # No StatefulSet was created or scaled while the cord was pulled (nor the flag set, above), and the first
    # status the restarted controller wrote was Halted.
    during = writes.between(pulled_at, watched_until)
    assert len(during) == 1 and {name for name, _, _ in next(iter(during))} == {"web"}, during
    assert phases.changes(pulled_at, watched_until) == ["Progressing", "Halted"]
    assert_make_before_break(sampler)


def in_transition(sample: Sample, new: str) -> bool:
    """The new StatefulSet scaled past one replica and not ready yet, the old one not scaled down for it yet."""
    return (sample.replicas.get(new, 0) >= 2 and sample.ready.get(new, 0) < sample.replicas[new]
            and sum(sample.replicas.values()) == REPLICAS + SURGE)


def test_the_standby_takes_over_a_ring_transition_from_a_killed_leader_without_scaling_twice(world: World) -> None:
    # Pods take 1.5 s to be ready, so the leader is killed between growing the new side and shrinking the old.
    world.create_statefulset(statefulset("web", REPLICAS, "registry.example.com/web:1.0.0", ready_delay="1500ms"))
    first = world.controller("first")
    wait_for("the first controller to lead", lambda: lease_holder(world.api_client, world.namespace) == "first", 30)
    second = world.controller("second")
    with CapacitySampler(world.api_client, world.namespace) as sampler:
        world.apply(rollout("web", "web", flag="web-v2", max_surge=SURGE))
        new = world.wait("the new StatefulSet", lambda status: status.get("newStatefulSet"),
                         running=first)["newStatefulSet"]
        moving = wait_for("a ring's capacity to be moving", lambda: next(
            (sample for sample in sampler.samples[-1:] if in_transition(sample, new)), None), 90, poll_s=0.01)
        first.kill()
        wait_for("the standby to lead", lambda: lease_holder(world.api_client, world.namespace) == "second", 30)
        status = world.wait("Succeeded", lambda status: status.get("phase") == "Succeeded", running=second)
    assert [record["ring"] for record in status["history"]] == list(CANARY_RINGS)
    assert all(record["outcome"] == "promoted" for record in status["history"])
    assert_make_before_break(sampler)
    assert sampler.max_replicas(new) <= REPLICAS, "the new StatefulSet grew past its plan"
    # No double scaling: the new side only ever grew, the old only ever shrank.
    new_sizes = [sample.replicas[new] for sample in sampler.samples if new in sample.replicas]
    old_sizes = [sample.replicas["web"] for sample in sampler.samples]
    assert new_sizes == sorted(new_sizes) and old_sizes == sorted(old_sizes, reverse=True), moving
    assert second.terminate() == 0


def test_prometheus_down_while_a_bad_release_bakes_holds_it_and_once_back_the_release_is_rolled_back(
        local_cluster: LocalCluster, namespace: str, tmp_path: Path) -> None:
    prometheus = PrometheusServer(tmp_path / "prometheus" / "data", targets_file=local_cluster.targets_file)
    prometheus.start()
    try:
        with controller_on(local_cluster, namespace, tmp_path, prometheus.url) as gated, \
                CapacitySampler(gated.api_client, namespace) as sampler, FlagWatch(gated, "web-bad") as flag, \
                Phases(gated.api_client, namespace) as phases:
            prometheus.stop()
            gated.apply(gated_rollout("web-bad", new_version("0.3"), bakes=("6s", "0s", "0s", "0s")))
            held = gated.wait("the bake to end with its gates holding", lambda status: status.get("step") ==
                              "AwaitingEvidence" and len([verdict for _, _, verdict in gated.verdicts()
                                                          if verdict == "Error"]) >= 4)
            assert (held["phase"], held["currentRing"], held["promotedRings"]) == ("Progressing", "canary", ["canary"])
            assert "cannot reach Prometheus" in held["message"], held["message"]
            down_until = time.monotonic()
            prometheus.start()
            status = gated.wait("RolledBack", lambda status: status.get("phase") in ("RolledBack", "Succeeded"))
    finally:
        prometheus.stop()
    assert status["phase"] == "RolledBack", status.get("message")
    assert "failed in ring canary" in status["rollbackReason"]
    verdicts = [verdict for ring, _, verdict in gated.verdicts() if ring == "canary"]
    first_failure = verdicts.index("Failed")
    assert set(verdicts[:first_failure]) <= {"Error", "NoData", "TooFewSamples"}, verdicts
    # While Prometheus was down the rollout held, the flag on for the canary; it rolled back only on evidence.
    assert "RollingBack" not in phases.changes(0, down_until)
    assert [rings for at_s, rings in flag.readings if at_s <= down_until][-1] == frozenset({"canary"})
    assert gated.flag_on_rings("web-bad") == set()
    assert_make_before_break(sampler)
