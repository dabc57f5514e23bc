"""The andon cord as the controller obeys it, on the local control plane: a pull halts every rollout
in scope within a second, nothing is scaled and no flag changes while it lasts, bake time stands
still, a release lets them go on where they stopped; the cord outlives a controller restart; and a
cord nobody can read (the database down) halts everything until it can be read again."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from cohorts.db import make_engine, upgrade
from rollout.andon.scope import Scope
from rollout.andon.store import AndonStore
from rollout.controller.controller import Controller
from rollout.controller.crd import install_crd
from rollout.controller.spec import GROUP, PLURAL, VERSION
from rollout.flags.store import FlagStore
from rollout.localcluster.cluster import LocalCluster
from tests.controller_harness import (
    CapacitySampler,
    controller_thread,
    get_rollout,
    rollout,
    statefulset,
    wait_for,
    wait_ready,
)
from tests.tcp_proxy import TcpProxy

REPLICAS = 3
NAMES = ("web", "api")


@dataclass
class Line:
    api_client: Any
    namespace: str
    engine: Engine
    controller: Controller

    @property
    def cord(self) -> AndonStore:
        return AndonStore(self.engine)

    def status(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = get_rollout(self.api_client, self.namespace, name).get("status") or {}
        return found

    def wait(self, what: str, predicate: Any, timeout_s: float = 90) -> None:
        def reached() -> bool:
            if self.controller.stop_event.is_set():
                raise AssertionError(f"the controller stopped while waiting for {what}")
            return bool(predicate())

        wait_for(what, reached, timeout_s, poll_s=0.05)

    def phases(self) -> dict[str, str]:
        return {name: self.status(name).get("phase", "") for name in NAMES}

    def halted_condition(self, name: str) -> dict[str, Any]:
        return next(condition for condition in self.status(name)["conditions"] if condition["type"] == "Halted")

    def flag_versions(self) -> int:
        flags = FlagStore(self.engine)
        return sum(len(flags.list_versions(f"{name}-v2")) for name in NAMES)

    def events(self, name: str) -> list[str]:
        items = client.CoreV1Api(self.api_client).list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={name}").items
        return [event.reason for event in items]


@contextmanager
def line(local_cluster: LocalCluster, namespace: str, database_url: str,
         names: tuple[str, ...] = NAMES) -> Iterator[Line]:
    """A StatefulSet per name and a controller on `database_url`; the rollouts are applied by the test."""
    engine = make_engine(database_url)
    with local_cluster.api_client() as api_client:
        install_crd(api_client)
        apps = client.AppsV1Api(api_client)
        for name in names:
            old = statefulset(name, REPLICAS, f"registry.example.com/{name}:1")
            apps.create_namespaced_stateful_set(namespace, old)
        for name in names:
            wait_ready(api_client, namespace, name, REPLICAS)
        with controller_thread(api_client, engine, namespace, lease_duration_s=15, renew_deadline_s=10,
                               retry_period_s=1, workers=2) as running:
            yield Line(api_client, namespace, engine, running)
    engine.dispose()


def start_rollouts(line: Line, bakes: tuple[str, ...] = ("30s", "0s", "0s", "0s"),
                   names: tuple[str, ...] = NAMES, timeout_s: float = 90) -> None:
    for name in names:
        client.CustomObjectsApi(line.api_client).create_namespaced_custom_object(
            GROUP, VERSION, line.namespace, PLURAL,
            rollout(name, name, flag=f"{name}-v2", bakes=bakes, image=f"registry.example.com/{name}:2"))
    line.wait("every rollout to bake in canary", lambda: all(
        line.status(name).get("step") == "Baking" and line.status(name).get("currentRing") == "canary"
        for name in names), timeout_s)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'ringmaster.db'}"
    upgrade(url)
    return url


def test_a_pull_halts_every_rollout_and_changes_nothing_until_it_is_released(
        local_cluster: LocalCluster, namespace: str, sqlite_url: str) -> None:
    with line(local_cluster, namespace, sqlite_url) as running:
        # A 6 s bake: left alone, the rollouts would promote and scale while the test watches them halted.
        start_rollouts(running, bakes=("6s", "0s", "0s", "0s"))
        pull = running.cord.pull(Scope(), "checkout errors up in eu-west", "ana")
        running.wait("every rollout Halted", lambda: set(running.phases().values()) == {"Halted"}, timeout_s=10)
        halted = {name: running.status(name) for name in NAMES}
        flags_when_halted = running.flag_versions()
        with CapacitySampler(running.api_client, namespace) as sampler:
            running.wait("8 s to pass", lambda: bool(sampler.samples) and
                         sampler.samples[-1].at_s - sampler.samples[0].at_s > 8, timeout_s=30)
        still = {name: running.status(name) for name in NAMES}
        assert len({tuple(sorted(sample.replicas.items())) for sample in sampler.samples}) == 1, "something scaled"
        assert running.flag_versions() == flags_when_halted
        for name in NAMES:
            assert still[name]["phase"] == "Halted" and still[name]["currentRing"] == "canary"
            assert still[name]["bakeRemainingSeconds"] == halted[name]["bakeRemainingSeconds"] > 0
            condition = running.halted_condition(name)
            assert (condition["status"], condition["reason"]) == ("True", "AndonPulled")
            assert "checkout errors up in eu-west" in condition["message"] and f"pull {pull.id}" in condition["message"]
            assert "Halted" in running.events(name)

        running.cord.release(pull.id, "fixed by rolling back the config", "bob")
        running.wait("both rollouts to go on and succeed", lambda: set(running.phases().values()) == {"Succeeded"},
                     timeout_s=120)
        for name in NAMES:
            assert running.halted_condition(name)["status"] == "False"


def test_a_pull_over_one_rollout_or_another_namespace_halts_only_what_it_names(
        local_cluster: LocalCluster, namespace: str, sqlite_url: str) -> None:
    with line(local_cluster, namespace, sqlite_url) as running:
        start_rollouts(running, bakes=("15s", "0s", "0s", "0s"))
        running.cord.pull(Scope(namespace="elsewhere"), "another team's incident", "ana")
        running.cord.pull(Scope(namespace=namespace, rollout="web"), "web only", "ana")
        running.wait("web Halted", lambda: running.phases()["web"] == "Halted", timeout_s=10)
        running.wait("api Succeeded", lambda: running.phases()["api"] == "Succeeded", timeout_s=120)
        assert running.phases()["web"] == "Halted"
        assert "web only" in running.halted_condition("web")["message"]


def test_a_pull_outlives_a_restart_of_the_controller(
        local_cluster: LocalCluster, namespace: str, sqlite_url: str) -> None:
    with line(local_cluster, namespace, sqlite_url) as running:
        start_rollouts(running, bakes=("5s", "0s", "0s", "0s"))
        pull = running.cord.pull(Scope(), "freeze for the migration", "ana")
        running.wait("every rollout Halted", lambda: set(running.phases().values()) == {"Halted"}, timeout_s=10)
    engine = make_engine(sqlite_url)
    with local_cluster.api_client() as api_client, controller_thread(
            api_client, engine, namespace, lease_duration_s=15, renew_deadline_s=10, retry_period_s=1,
            workers=2) as successor:
        again = Line(api_client, namespace, engine, successor)
        again.wait("the successor to lead", successor.elector.is_leader, timeout_s=30)
        again.wait("a reconcile or two", lambda: successor.reconciler.stats.reconciles >= 2, timeout_s=30)
        assert set(again.phases().values()) == {"Halted"}
        again.cord.release(pull.id, "migration done", "bob")
        again.wait("both to succeed", lambda: set(again.phases().values()) == {"Succeeded"}, timeout_s=120)
    engine.dispose()


def test_a_cord_that_cannot_be_read_halts_everything_until_the_database_answers(
        local_cluster: LocalCluster, namespace: str, postgres_database_url: str) -> None:
    upgrade(postgres_database_url)
    real = make_url(postgres_database_url)
    with TcpProxy(real.host or "127.0.0.1", real.port or 5432) as proxy:
        through_proxy = real.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        with line(local_cluster, namespace, through_proxy) as running:
            start_rollouts(running, bakes=("20s", "0s", "0s", "0s"))
            proxy.cut()
            running.wait("every rollout Halted", lambda: set(running.phases().values()) == {"Halted"},
                         timeout_s=15)
            for name in NAMES:
                condition = running.halted_condition(name)
                assert (condition["status"], condition["reason"]) == ("True", "AndonStateUnknown")
                assert "cannot be read" in condition["message"]
            proxy.restore()
            running.wait("both to go on and succeed", lambda: set(running.phases().values()) == {"Succeeded"},
                         timeout_s=120)
