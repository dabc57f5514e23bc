"""How fast a pull of the andon cord stops N progressing Rollouts, and that nothing moves while it is pulled.

The benchmark starts a local control plane of its own in a temporary folder (no Prometheus), a
SQLite database beside it (`--postgres`: a throwaway database on the machine's PostgreSQL), and
`ringmaster serve`'s app in this process under uvicorn on a real port. In a fresh namespace it
creates N StatefulSets of 1 replica and N Rollouts whose canary ring bakes for an hour, runs one
Controller in this process (the default 0.25 s cord poll) until every Rollout is baking in canary,
then pulls the cord over HTTP with a puller token (global scope) `--pulls` times. Each time it
measures from just before the request until the bench's own Rollout watch has seen every Rollout's
status.phase Halted, holds the cord for a moment longer, releases it with a releaser token, and
waits until every Rollout bakes again. Every action the controller's Executor executes is recorded
with its time: while the cord is pulled, creating, scaling or deleting a StatefulSet or writing a
flag must not happen at all (the run fails if one does); status writes and Events are expected.

The baseline, in the same run: the same measurement with 1 Rollout (the floor: the cord's poll and
one reconcile). Further worker counts in `--workers` are measured only while the aim (p99 under
1 s to the last Halted) is missed with fewer.
Run: `python -m bench.andon [--rollouts 500] [--pulls 5] [--workers 4,16] [--postgres]`.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import secrets
import signal
import statistics
import tempfile
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import urllib3
import uvicorn
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from bench.controller import (
    controller_thread_group,
    cpu_s,
    create_all,
    fmt,
    machine_busy_s,
    percentile,
    rollout_body,
    statefulset_body,
    stop_on_sigterm,
    threads_cpu_s,
    wait_statefulsets_ready,
)
from bench.usage_ingest import postgres_database, sqlite_database
from cohorts.db import make_engine, upgrade
from rollout.api.app import create_app
from rollout.auth.tokens import TokenStore
from rollout.controller.act import Executor
from rollout.controller.actions import Action, CreateStatefulSet, DeleteStatefulSet, ScaleStatefulSet, SetFlagRings
from rollout.controller.controller import Controller, ControllerSettings
from rollout.controller.crd import install_crd
from rollout.controller.history import HistoryEntry
from rollout.controller.observed import RolloutView
from rollout.controller.spec import GROUP, PLURAL, VERSION
from rollout.controller.status import RolloutStatus
from rollout.localcluster.cluster import KUBE_VERSION, LocalCluster
from rollout.settings import ServiceSettings

BASELINE_COUNT = 1
AIM_S = 1.0
CANARY_BAKE = "1h"
# Once every Rollout is Halted the cord stays pulled this much longer, so that a late write is caught too.
HOLD_S = 1.0
# The controller is idle once no reconcile has finished for this long.
QUIET_S = 0.5
WAIT_S = 60.0
MUTATING = (CreateStatefulSet, ScaleStatefulSet, DeleteStatefulSet, SetFlagRings)
CLUSTER_PROCESSES = ("kube-apiserver", "etcd")
OBSERVER_THREAD = "bench-rollout-watch"
# The database row of a transition, written inside RecordEvent after the Event: timed apart.
HISTORY_ROW = "history row"
WORKERS = "controller workers"
MACHINE = "whole machine"
CLUSTER = "kube-apiserver + etcd"


def setup_timeout_s(count: int) -> float:
    return max(300.0, count * 1.2)


# What the bench's own watch sees


class Phases:
    """Every Rollout's phase as the bench's watch last saw it, and when each was first seen Halted."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.changed = threading.Condition()
        self.halted: set[str] = set()
        self.baking: set[str] = set()
        self.halted_at_s: dict[str, float] = {}
        self.restarts = 0

    def observe(self, obj: dict[str, Any]) -> None:
        seen_s = time.monotonic()
        name = obj["metadata"]["name"]
        status = obj.get("status") or {}
        phase = status.get("phase")
        with self.changed:
            self.halted.discard(name)
            self.baking.discard(name)
            if phase == "Halted":
                self.halted.add(name)
                self.halted_at_s.setdefault(name, seen_s)
            elif phase == "Progressing" and status.get("currentRing") == "canary" and status.get("bakeUntil"):
                self.baking.add(name)
            self.changed.notify_all()

    def forget_halts(self) -> None:
        with self.changed:
            self.halted_at_s.clear()

    def wait(self, reached: Callable[[], bool], timeout_s: float) -> bool:
        with self.changed:
            return self.changed.wait_for(reached, timeout_s)

    def all_halted(self) -> bool:
        return len(self.halted) >= self.count

    def all_baking(self) -> bool:
        return len(self.baking) >= self.count


@contextmanager
def observing(cluster: LocalCluster, namespace: str, phases: Phases) -> Iterator[None]:
    """Watch the namespace's Rollouts on an ApiClient of the bench's own, one event at a time."""
    stopping = threading.Event()
    watcher = watch.Watch()

    def follow() -> None:
        with cluster.api_client() as api_client:
            custom = client.CustomObjectsApi(api_client)
            while not stopping.is_set():
                try:
                    # Without a resourceVersion every Rollout comes first as ADDED: observing is idempotent.
                    for event in watcher.stream(custom.list_namespaced_custom_object, GROUP, VERSION, namespace,
                                                PLURAL, timeout_seconds=3600, _request_timeout=(10, 3700)):
                        if event["type"] in ("ADDED", "MODIFIED"):
                            phases.observe(event["object"])
                except (ApiException, urllib3.exceptions.HTTPError, OSError):
                    stopping.wait(0.2)
                if not stopping.is_set():
                    phases.restarts += 1

    thread = threading.Thread(target=follow, name=OBSERVER_THREAD, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stopping.set()
        watcher.stop()


# What the controller does


@dataclass(frozen=True)
class Done:
    """One status write or action the Executor finished (or failed): when, what, its wall and CPU time."""

    started_s: float
    ended_s: float
    kind: str
    took_s: float
    cpu_s: float
    halted: bool = False
    failed: bool = False


class Recorder:
    """Wraps the controller's Executor: every status write, action and history row, timed."""

    def __init__(self, executor: Executor) -> None:
        self._write_status = executor.write_status
        self._execute = executor.execute
        self._record_history = executor.history.record
        self.lock = threading.Lock()
        self.done: list[Done] = []
        # The Executor is the one door to Kubernetes and the flags: wrapping it sees every write.
        executor.write_status = self.write_status  # type: ignore[method-assign]
        executor.execute = self.execute  # type: ignore[method-assign]
        executor.history.record = self.record_history  # type: ignore[method-assign]

    def write_status(self, rollout: RolloutView, status: RolloutStatus) -> dict[str, Any]:
        with self._timing("status", halted=status.phase == "Halted"):
            return self._write_status(rollout, status)

    def execute(self, rollout: RolloutView, action: Action) -> None:
        with self._timing(type(action).__name__):
            self._execute(rollout, action)

    def record_history(self, entry: HistoryEntry) -> bool:
        with self._timing(HISTORY_ROW):
            return self._record_history(entry)

    @contextmanager
    def _timing(self, kind: str, halted: bool = False) -> Iterator[None]:
        started_s, started_cpu_s = time.monotonic(), time.thread_time()
        failed = True
        try:
            yield
            failed = False
        finally:
            ended_s = time.monotonic()
            self._keep(Done(started_s, ended_s, kind, ended_s - started_s, time.thread_time() - started_cpu_s, halted,
                            failed))

    def _keep(self, done: Done) -> None:
        with self.lock:
            self.done.append(done)

    def started_between(self, start_s: float, end_s: float) -> list[Done]:
        """What began in [start_s, end_s), finished since or not yet (not yet: not in the list)."""
        with self.lock:
            return [done for done in self.done if start_s <= done.started_s < end_s]


# The service


@contextmanager
def serving(database_url: str) -> Iterator[str]:
    """`ringmaster serve`'s app under uvicorn in a thread of this process; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(create_app(ServiceSettings(database_url=database_url)), host="127.0.0.1",
                                           port=0, log_level="warning", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline_s = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline_s:
            raise SystemExit("`ringmaster serve`'s app did not start under uvicorn within 15 s")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


# One pull and one run


@dataclass
class PullFigures:
    """Seconds from just before the pull request, and what happened while the cord was pulled."""

    answered_s: float = math.nan
    cord_seen_s: float = math.nan
    first_halted_s: float = math.nan
    last_halted_s: float = math.nan
    last_written_s: float = math.nan
    timed_out: bool = False
    status_writes: int = 0
    actions: Counter[str] = field(default_factory=Counter)
    # Status writes and actions that raised (a conflict is retried from fresh state), by kind.
    failed: Counter[str] = field(default_factory=Counter)
    mutating: Counter[str] = field(default_factory=Counter)
    reconciles: int = 0
    reconcile_ms: float = math.nan
    status_write_ms: float = math.nan
    event_ms: float = math.nan
    history_row_ms: float = math.nan
    # CPU seconds by part from the pull request until the last Rollout was seen Halted, and until the release.
    cpu_s: dict[str, float] = field(default_factory=dict)
    pulled_cpu_s: dict[str, float] = field(default_factory=dict)
    # CPU seconds the workers spent in status writes, RecordEvent actions and (inside those) history rows.
    work_cpu_s: dict[str, float] = field(default_factory=dict)
    resumed_s: float = math.nan


@dataclass
class Run:
    count: int
    workers: int
    poll_s: float
    pulls: list[PullFigures] = field(default_factory=list)
    baking_s: float = math.nan

    @property
    def label(self) -> str:
        return f"{self.count:,} Rollout{'s' if self.count != 1 else ''}, {self.workers} workers"

    def last_halted(self) -> list[float]:
        return [pull.last_halted_s for pull in self.pulls]

    @property
    def mutating(self) -> Counter[str]:
        return sum((pull.mutating for pull in self.pulls), Counter())

    @property
    def met_aim(self) -> bool:
        latencies = self.last_halted()
        return bool(latencies) and not any(pull.timed_out for pull in self.pulls) \
            and percentile(latencies, 0.99) < AIM_S


class Cord:
    """The cord over real HTTP: a puller's token pulls it, a releaser's releases it."""

    def __init__(self, base_url: str, database_url: str) -> None:
        engine = make_engine(database_url)
        tokens = TokenStore(engine)
        suffix = secrets.token_hex(3)
        self.puller = tokens.create(f"bench-puller-{suffix}", "puller", "bench")[1]
        self.releaser = tokens.create(f"bench-releaser-{suffix}", "releaser", "bench")[1]
        engine.dispose()
        self.http = httpx.Client(base_url=base_url, timeout=10)

    def pull(self, reason: str) -> int:
        response = self.http.post("/api/v1/andon/pull", json={"reason": reason, "scope": {}},
                                  headers={"Authorization": f"Bearer {self.puller}"})
        if response.status_code != 201:
            raise SystemExit(f"the pull was refused: {response.status_code} {response.text}")
        pull_id: int = response.json()["id"]
        return pull_id

    def release(self, pull_id: int) -> None:
        response = self.http.post("/api/v1/andon/release", json={"id": pull_id, "reason": "bench: line runs again"},
                                  headers={"Authorization": f"Bearer {self.releaser}"})
        if response.status_code != 200:
            raise SystemExit(f"the release of pull {pull_id} was refused: {response.status_code} {response.text}")


def thread_group(name: str) -> str:
    if name == OBSERVER_THREAD:
        return "bench's Rollout watch"
    if name == "uvicorn" or name.startswith("AnyIO worker"):
        return "serve (uvicorn)"
    return controller_thread_group(name)


class CpuClock:
    """CPU seconds of this process's threads by part, of the API server and etcd, and of the whole machine."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.pids = [pid for name, pid in cluster.status().running.items() if name in CLUSTER_PROCESSES]

    def read(self) -> dict[str, float]:
        used = threads_cpu_s(threading.enumerate(), thread_group)
        used[CLUSTER] = sum(cpu_s(Path(f"/proc/{pid}/stat")) for pid in self.pids)
        used[MACHINE] = machine_busy_s()
        return used

    @staticmethod
    def since(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        # A thread that started in between counts from its start.
        return {part: seconds - before.get(part, 0.0) for part, seconds in after.items()}


def wait_quiet(controller: Controller, timeout_s: float = WAIT_S) -> None:
    """Until no reconcile has finished for QUIET_S."""
    deadline_s = time.monotonic() + timeout_s
    seen = controller.reconciler.stats.reconciles
    quiet_since_s = time.monotonic()
    while time.monotonic() < deadline_s:
        time.sleep(0.05)
        now = controller.reconciler.stats.reconciles
        if now != seen:
            seen, quiet_since_s = now, time.monotonic()
        elif time.monotonic() - quiet_since_s >= QUIET_S:
            return
    raise SystemExit(f"the controller was still reconciling after {timeout_s:.0f} s of waiting for it to be idle")


def record_cord_changes(controller: Controller) -> list[float]:
    """When the controller's cord poll saw the cord change (its reaction: every Rollout queued at once)."""
    changes: list[float] = []
    enqueue_every_rollout = controller.cord.on_change

    def noted_then_enqueued() -> None:
        changes.append(time.monotonic())
        enqueue_every_rollout()

    controller.cord.on_change = noted_then_enqueued
    return changes


def measure_pull(number: int, cord: Cord, controller: Controller, cord_changes: list[float], recorder: Recorder,
                 phases: Phases, clock: CpuClock) -> PullFigures:
    figures = PullFigures()
    stats = controller.reconciler.stats
    samples_before, reconciles_before = len(stats.reconcile_s), stats.reconciles
    phases.forget_halts()
    cpu_before = clock.read()
    started_s = time.monotonic()
    pull_id = cord.pull(f"bench: pull {number}")
    figures.answered_s = time.monotonic() - started_s
    figures.timed_out = not phases.wait(phases.all_halted, WAIT_S + phases.count * 0.1)
    halted_s = time.monotonic()
    figures.cpu_s = CpuClock.since(cpu_before, clock.read())
    with phases.changed:
        halted_at_s = list(phases.halted_at_s.values())
    figures.first_halted_s = min(halted_at_s, default=math.nan) - started_s
    figures.last_halted_s = (halted_s if figures.timed_out else max(halted_at_s, default=math.nan)) - started_s
    figures.cord_seen_s = min((at_s for at_s in cord_changes if at_s >= started_s), default=math.nan) - started_s
    time.sleep(HOLD_S)
    figures.pulled_cpu_s = CpuClock.since(cpu_before, clock.read())
    figures.reconciles = stats.reconciles - reconciles_before
    figures.reconcile_ms = percentile(stats.reconcile_s[samples_before:], 0.5) * 1000
    released_s = time.monotonic()
    cord.release(pull_id)
    if not phases.wait(lambda: not phases.halted and phases.all_baking(), WAIT_S + phases.count * 0.1):
        raise SystemExit(f"after the release of pull {pull_id}, {len(phases.halted)} Rollouts were still Halted "
                         f"and {len(phases.baking)} of {phases.count} baking")
    figures.resumed_s = time.monotonic() - released_s
    wait_quiet(controller)
    # Now every call begun while the cord was pulled has finished, even one that ended after the release.
    account(figures, recorder.started_between(started_s, released_s), started_s)
    return figures


def account(figures: PullFigures, pulled: list[Done], started_s: float) -> None:
    """What the Executor did while the cord was pulled: counts, durations, the workers' CPU in each kind."""
    halts = [done for done in pulled if done.halted]
    figures.last_written_s = max((done.ended_s for done in halts), default=math.nan) - started_s
    figures.status_writes = sum(done.kind == "status" and not done.failed for done in pulled)
    figures.failed = Counter(done.kind for done in pulled if done.failed)
    figures.status_write_ms = percentile([done.took_s for done in halts], 0.5) * 1000
    figures.event_ms = percentile([done.took_s for done in pulled if done.kind == "RecordEvent"], 0.5) * 1000
    figures.history_row_ms = percentile([done.took_s for done in pulled if done.kind == HISTORY_ROW], 0.5) * 1000
    figures.actions = Counter(done.kind for done in pulled if done.kind not in ("status", HISTORY_ROW))
    figures.mutating = Counter({kind.__name__: figures.actions[kind.__name__] for kind in MUTATING
                                if figures.actions[kind.__name__]})
    figures.work_cpu_s = {kind: sum(done.cpu_s for done in pulled if done.kind == kind)
                          for kind in ("status", "RecordEvent", HISTORY_ROW)}


@dataclass
class Scenario:
    """One namespace of N StatefulSets and Rollouts, baking in canary."""

    cluster: LocalCluster
    namespace: str
    count: int
    setup_s: float


def prepare(cluster: LocalCluster, count: int, namespace: str | None = None) -> Scenario:
    namespace = namespace or f"bench-andon-{count}-{secrets.token_hex(3)}"
    names = [f"app-{number:04d}" for number in range(count)]
    started_s = time.monotonic()
    with cluster.api_client() as api_client:
        client.CoreV1Api(api_client).create_namespace({"metadata": {"name": namespace}})
        apps = client.AppsV1Api(api_client)
        custom = client.CustomObjectsApi(api_client)
        create_all(lambda body: apps.create_namespaced_stateful_set(namespace, body),
                   [statefulset_body(name, 1) for name in names])
        wait_statefulsets_ready(apps, namespace, count, 1, setup_timeout_s(count))
        bodies = [rollout_body(name, f"{namespace}-{name}") for name in names]
        for body in bodies:
            body["spec"]["rings"][0]["bake"] = CANARY_BAKE
        create_all(lambda body: custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body),
                   bodies)
    return Scenario(cluster, namespace, count, time.monotonic() - started_s)


def run_controller(scenario: Scenario, database_url: str, cord: Cord, workers: int, pulls: int) -> Run:
    """One Controller over the scenario's namespace: until every Rollout bakes, then `pulls` pulls."""
    engine = make_engine(database_url)
    settings = ControllerSettings(namespace=scenario.namespace, identity=f"bench-{secrets.token_hex(3)}",
                                  lease_namespace=scenario.namespace, workers=workers)
    phases = Phases(scenario.count)
    run = Run(scenario.count, workers, settings.andon_poll_s)
    clock = CpuClock(scenario.cluster)
    with scenario.cluster.api_client() as controller_client, observing(scenario.cluster, scenario.namespace, phases):
        controller = Controller(controller_client, engine, settings)
        recorder = Recorder(controller.executor)
        cord_changes = record_cord_changes(controller)
        thread = threading.Thread(target=controller.run, name="controller", daemon=True)
        started_s = time.monotonic()
        thread.start()
        try:
            if not phases.wait(phases.all_baking, setup_timeout_s(scenario.count)):
                raise SystemExit(f"only {len(phases.baking)} of {scenario.count} Rollouts were baking in canary "
                                 f"after {setup_timeout_s(scenario.count):.0f} s")
            wait_quiet(controller, setup_timeout_s(scenario.count))
            run.baking_s = time.monotonic() - started_s
            print(f"    every Rollout baking {run.baking_s:.1f} s after the controller started", flush=True)
            for number in range(1, pulls + 1):
                figures = measure_pull(number, cord, controller, cord_changes, recorder, phases, clock)
                run.pulls.append(figures)
                print(f"    pull {number}: last Halted after {ms(figures.last_halted_s)} ms"
                      + (" (timed out)" if figures.timed_out else "")
                      + f", {figures.status_writes} status writes, {sum(figures.mutating.values())} "
                        "StatefulSet/flag writes", flush=True)
        finally:
            controller.stop()
            thread.join(60)
    engine.dispose()
    if phases.restarts:
        print(f"    (the bench's watch restarted {phases.restarts} times: some Halted times may be late)")
    return run


# Reporting

COLUMNS = (
    ("pull", 4), ("HTTP 201", 9), ("cord seen", 10), ("first Halted", 13), ("last Halted", 12), ("last write", 11),
    ("reconciles", 11), ("status writes", 14), ("Events", 7), ("StatefulSet/flag", 17), ("reconcile", 10),
    ("status write", 13), ("Event+row", 10), ("row", 6), ("resumed", 8),
)
NOTES = (
    "Times are milliseconds from just before the pull request: HTTP 201 is the service's answer, cord seen the "
    "controller's cord poll noticing the pull, first and last Halted what the bench's own Rollout watch saw, last "
    "write when the controller's last Halted status write returned. Reconciles, status writes, Events and "
    "StatefulSet/flag writes count from the request until the release, "
    f"{HOLD_S:g} s after the last Halted; reconcile, status write, Event+row (the Event and the history row) "
    "and row (the history row alone) are p50 durations in that time. Resumed: from the release until every "
    "Rollout bakes again. p99 is the nearest rank: with 5 pulls, the slowest."
)


def ms(value: float) -> str:
    return fmt(value * 1000, 0)


def report(runs: list[Run]) -> None:
    print()
    for run in runs:
        print(f"{run.label}, cord polled every {run.poll_s:g} s")
        print("  " + " ".join(f"{title:>{width}}" for title, width in COLUMNS))
        for number, pull in enumerate(run.pulls, 1):
            cells = (
                str(number), ms(pull.answered_s), ms(pull.cord_seen_s), ms(pull.first_halted_s),
                ms(pull.last_halted_s) + (" (timeout)" if pull.timed_out else ""), ms(pull.last_written_s),
                str(pull.reconciles), str(pull.status_writes), str(pull.actions["RecordEvent"]),
                str(sum(pull.mutating.values())), fmt(pull.reconcile_ms), fmt(pull.status_write_ms),
                fmt(pull.event_ms), fmt(pull.history_row_ms), ms(pull.resumed_s),
            )
            print("  " + " ".join(f"{cell:>{width}}" for cell, (_, width) in zip(cells, COLUMNS, strict=True)))
        first = [pull.first_halted_s for pull in run.pulls]
        last = run.last_halted()
        print(f"  first Halted p50 / p99: {ms(percentile(first, 0.5))} / {ms(percentile(first, 0.99))} ms; "
              f"last Halted p50 / p99: {ms(percentile(last, 0.5))} / {ms(percentile(last, 0.99))} ms: "
              f"{'meets' if run.met_aim else 'MISSES'} the aim of p99 under {AIM_S * 1000:.0f} ms")
        mutating = run.mutating
        print(f"  mutating StatefulSet and flag writes while pulled: {sum(mutating.values())}"
              + (" (NOT ZERO: " + ", ".join(f"{kind} x{count}" for kind, count in mutating.items()) + ")"
                 if mutating else ""))
        failed = sum((pull.failed for pull in run.pulls), Counter())
        if failed:
            print("  failed while pulled (retried): " + ", ".join(f"{kind} x{count}" for kind, count in failed.items()))
        for line in where_the_time_went(run):
            print(f"  {line}")
        print()
    print(textwrap.fill(NOTES, 110), flush=True)


def where_the_time_went(run: Run) -> list[str]:
    """From the figures (medians over the pulls): the cord's poll, the reconciles, and what they cost."""
    halted = [pull for pull in run.pulls if not pull.timed_out]
    if not halted:
        return ["no pull halted every Rollout in time: nothing to break down"]

    def median(values: Iterator[float]) -> float:
        return statistics.median(values)

    seen_s = median(pull.cord_seen_s for pull in halted)
    span_s = median(pull.last_written_s - pull.cord_seen_s for pull in halted)
    window_s = median(pull.last_halted_s for pull in halted)
    parts = sorted({part for pull in halted for part in pull.cpu_s} - {MACHINE, CLUSTER})
    cores = os.cpu_count() or 1
    lines = [
        f"where the time went: the cord seen {ms(seen_s)} ms after the request (its poll is every "
        f"{run.poll_s * 1000:.0f} ms); from then {ms(span_s)} ms until the last Halted status write, "
        f"{fmt(run.count / span_s if span_s > 0 else math.nan, 0)} Rollouts halted per second with "
        f"{run.workers} workers",
        f"CPU (ms) from the request to the last Halted ({ms(window_s)} ms): "
        + ", ".join(f"{part} {ms(median(pull.cpu_s.get(part, 0.0) for pull in halted))}" for part in parts)
        + f" (this process {ms(median(sum(pull.cpu_s.get(part, 0.0) for part in parts) for pull in halted))}); "
          f"{CLUSTER} {ms(median(pull.cpu_s.get(CLUSTER, 0.0) for pull in halted))}; the {MACHINE} "
          f"{ms(median(pull.cpu_s.get(MACHINE, 0.0) for pull in halted))} of {ms(window_s * cores)} on {cores} cores",
    ]
    if run.count == 1:
        return lines

    def per_rollout_ms(cpu_s: Callable[[PullFigures], float]) -> float:
        return median(cpu_s(pull) for pull in halted) / run.count * 1000

    process_ms = per_rollout_ms(lambda pull: sum(pull.pulled_cpu_s.get(part, 0.0) for part in parts))
    cluster_ms = per_rollout_ms(lambda pull: pull.pulled_cpu_s.get(CLUSTER, 0.0))
    status_ms = per_rollout_ms(lambda pull: pull.work_cpu_s.get("status", 0.0))
    row_ms = per_rollout_ms(lambda pull: pull.work_cpu_s.get(HISTORY_ROW, 0.0))
    # The history row is written inside RecordEvent, after the Event.
    event_ms = per_rollout_ms(lambda pull: pull.work_cpu_s.get("RecordEvent", 0.0)) - row_ms
    workers_ms = per_rollout_ms(lambda pull: pull.pulled_cpu_s.get(WORKERS, 0.0))
    reconciles = median(pull.reconciles for pull in halted) / run.count
    lines += [
        f"CPU per Rollout halted, from the request to the release: {fmt(process_ms, 1)} ms in this process, of "
        f"which the workers {fmt(workers_ms, 1)} ({reconciles:.1f} reconciles per Rollout): the status write "
        f"{fmt(status_ms, 1)}, the Event {fmt(event_ms, 1)}, the history row {fmt(row_ms, 1)}, the rest "
        f"(observing, planning) {fmt(workers_ms - status_ms - event_ms - row_ms, 1)}; {fmt(cluster_ms, 1)} ms "
        f"in {CLUSTER}",
        f"so {run.count:,} Rollouts need at least {ms(process_ms * run.count / 1000)} ms in this process "
        f"(its threads share one GIL) and {ms((process_ms + cluster_ms) * run.count / 1000 / cores)} ms of "
        f"all {cores} cores; within the aim, after the poll, this process could spend "
        f"{fmt((AIM_S - seen_s) / run.count * 1000, 1)} ms per Rollout",
    ]
    return lines


# Main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rollouts", type=int, default=500, help="Rollouts baking when the cord is pulled")
    parser.add_argument("--pulls", type=int, default=5, help="pulls per run")
    parser.add_argument("--workers", default="4,16",
                        help="comma-separated reconcile worker counts; each after the first only if the aim was missed")
    parser.add_argument("--postgres", action="store_true", help="a throwaway PostgreSQL database instead of SQLite")
    arguments = parser.parse_args()
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    # The service logs every pull and release as a warning; the figures say what happened.
    logging.getLogger("rollout.api.andon").setLevel(logging.ERROR)
    worker_counts = [int(workers) for workers in arguments.workers.split(",")]
    backend = "PostgreSQL" if arguments.postgres else "SQLite"
    print(f"andon cord: {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()} "
          f"{platform.release()}; local control plane Kubernetes v{KUBE_VERSION}; {backend}; "
          f"{arguments.rollouts:,} Rollouts (1 replica each, canary bake {CANARY_BAKE}); {arguments.pulls} pulls",
          flush=True)
    started_s = time.monotonic()
    runs: list[Run] = []
    database = postgres_database() if arguments.postgres else sqlite_database()
    with database as database_url, tempfile.TemporaryDirectory(prefix="ringmaster-bench-andon-") as folder:
        upgrade(database_url)
        cluster = LocalCluster(Path(folder) / "localcluster")
        try:
            cluster.up(prometheus=False)
            with cluster.api_client() as api_client:
                install_crd(api_client)
            with serving(database_url) as base_url:
                cord = Cord(base_url, database_url)
                for count, counts_workers in ((BASELINE_COUNT, worker_counts[:1]), (arguments.rollouts, worker_counts)):
                    print(f"{count:,} Rollout{'s' if count != 1 else ''}: creating StatefulSets and Rollouts ...",
                          flush=True)
                    scenario = prepare(cluster, count)
                    print(f"  created and StatefulSets ready in {scenario.setup_s:.1f} s", flush=True)
                    for workers in counts_workers:
                        print(f"  {workers} workers: waiting until every Rollout bakes in canary, then "
                              f"{arguments.pulls} pulls", flush=True)
                        run = run_controller(scenario, database_url, cord, workers, arguments.pulls)
                        runs.append(run)
                        if run.met_aim:
                            break
        finally:
            cluster.down()
            if runs:
                report(runs)
    print(f"total benchmark time {(time.monotonic() - started_s) / 60:.1f} min")
    if any(run.mutating for run in runs):
        raise SystemExit("FAILED: the controller wrote to a StatefulSet or a flag while the cord was pulled")
    if any(pull.timed_out for run in runs for pull in run.pulls):
        raise SystemExit("FAILED: not every Rollout was seen Halted in time")


if __name__ == "__main__":
    main()
