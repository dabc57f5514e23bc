"""What one controller costs at scale: N Rollouts at once, each moving its own StatefulSet through the rings.

The benchmark starts a local control plane of its own in a temporary folder (etcd, kube-apiserver,
kube-controller-manager and the node simulator; docs/localcluster.md) and a SQLite database beside
it. For 1 Rollout (the baseline), then 100 and 1,000, it creates in a fresh namespace as many
StatefulSets (`--replicas` each, Parallel, pods Ready 200 ms after they start), waits until they
are ready, creates one Rollout per StatefulSet (a flag of its own, bakes 0s, the default cohort
set, configured sizing, maxSurge 1) all at once, and runs one Controller in this process until
every Rollout has Succeeded. Reported per run: wall time, reconciles and their errors, plan() and
whole-reconcile latency, API requests per reconcile, the informers' own requests, this process's
RSS and the CPU time of every part of the system.

Everything shares this machine's cores: the API server, etcd, the StatefulSet controller and the
simulator that plays every pod compete with the controller, so the CPU rows say where the time
went. With `--replicas 0` the StatefulSets have no pods and a rollout moves only flags and
status: the controller's own overhead. When 1,000 rollouts with pods do not finish within 15
minutes, the default invocation runs 1,000 with 0 replicas as well.
Run: `python -m bench.controller [--counts 100,1000] [--replicas 1] [--workers 4]`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import secrets
import signal
import tempfile
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from cohorts.db import make_engine, upgrade
from rollout.controller.controller import Controller, ControllerSettings
from rollout.controller.crd import install_crd
from rollout.controller.spec import GROUP, PLURAL, VERSION
from rollout.localcluster.cluster import KUBE_VERSION, LocalCluster

BASELINE_COUNT = 1
DEFAULT_COUNTS = (100, 1000)
RINGS = ("canary", "early-adopter", "stable", "laggard")
READY_DELAY = "200ms"
# Under load a new pod can take minutes to be Ready; a rollback would end the measurement early.
READY_TIMEOUT = "60m"
FEASIBLE_S = 15 * 60
GIL_BOUND = 0.85
CORES_SATURATED = 0.8
CREATE_THREADS = 8
POLL_S = 1.0
CLUSTER_PROCESSES = ("kube-apiserver", "etcd", "kube-controller-manager", "simulator")
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
OTHERS = "other processes on this machine"
# The StatefulSets' and flags' names in status messages, so that alike messages count together.
NAMES = re.compile(r"(bench-[0-9a-z-]+-)?app-\d+(-[0-9a-z]+)?")
BENCH_WATCH_THREAD = "bench-watch"
# What the figures mean, printed under the table.
NOTES = (
    "Wall time runs from the controller's start (Lease, informers' first lists) until the last Rollout is seen "
    "Succeeded. "
    "API requests per reconcile count the controller's writes and Events (its reads come from the "
    "informers' caches); flag writes go to the database. The informers' lists (500 objects a page) and "
    "watches are counted apart; the Lease is renewed once per 2 s and not counted. RSS is this whole "
    "process's, which also holds the bench's own API client and watch; the baseline is taken right before "
    "the controller starts, and the peak is reset there. CPU is per thread of this process "
    "(/proc/self/task) and per process of the control plane, during the controller's run."
)


def timeout_for(count: int) -> float:
    return max(300.0, count * 1.2)


# Bodies


def statefulset_body(name: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "serviceName": name, "replicas": replicas, "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": {"sim.ringmaster.dev/ready-delay": READY_DELAY}},
                "spec": {"containers": [{"name": "app", "image": "registry.example.com/web:1.0.0"}]},
            },
        },
    }


def rollout_body(name: str, flag_key: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "Rollout", "metadata": {"name": name},
        "spec": {
            "statefulSetName": name, "image": "registry.example.com/web:2.0.0", "cohortSet": "default",
            "rings": [{"name": ring, "bake": "0s"} for ring in RINGS], "flag": {"key": flag_key},
            "sizing": "configured",
            "scaling": {"maxSurge": 1, "readyTimeout": READY_TIMEOUT, "rollbackWindow": "1h"},
        },
    }


# Measuring this process and the others


def rss_mib(field_name: str) -> float:
    """VmRSS (now) or VmHWM (peak since start, or since reset_peak_rss) of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field_name}")


def reset_peak_rss() -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux 4.0+), so the peak is this run's.
    Path("/proc/self/clear_refs").write_text("5")


def cpu_s(stat_path: Path) -> float:
    """User + system CPU seconds from a /proc stat file (a process's or one thread's); 0 once it is gone."""
    try:
        stat = stat_path.read_text()
    except OSError:
        return 0.0
    # The command name may hold spaces and parentheses; the fields after its last ')' are fixed.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def machine_busy_s() -> float:
    """CPU seconds every process on this machine has used since boot (/proc/stat, all but idle and iowait)."""
    ticks = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLOCK_TICKS_PER_S


def controller_thread_group(name: str) -> str:
    if name.startswith("reconcile-"):
        return "controller workers"
    if name.startswith(("informer ", "resync ")):
        return "controller informers + handlers"
    return "controller loop + Lease"


def bench_thread_group(name: str) -> str:
    return "bench: watching Rollouts" if name == BENCH_WATCH_THREAD else "bench: main thread"


def threads_cpu_s(threads: Sequence[threading.Thread], group_of: Callable[[str], str]) -> dict[str, float]:
    grouped: dict[str, float] = {}
    for thread in threads:
        if thread.native_id is None:
            continue
        group = group_of(thread.name)
        grouped[group] = grouped.get(group, 0.0) + cpu_s(Path(f"/proc/self/task/{thread.native_id}/stat"))
    return grouped


def percentile(samples: Sequence[float], share: float) -> float:
    """Nearest-rank percentile; nan for no samples."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


# Following the Rollouts


@dataclass
class Progress:
    """What the bench's own watch has seen of the Rollouts: phases, and each one's ring timings."""

    count: int
    phases: dict[str, str] = field(default_factory=dict)
    places: dict[str, str] = field(default_factory=dict)
    succeeded_at_s: dict[str, float] = field(default_factory=dict)
    first_ring_s: list[float] = field(default_factory=list)
    later_rings_s: list[float] = field(default_factory=list)
    seen_all: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, obj: dict[str, Any]) -> None:
        with self.lock:
            self._observe(obj)

    def _observe(self, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        status = obj.get("status") or {}
        phase = status.get("phase", "")
        self.phases[name] = phase
        ring = f" in {status['currentRing']}" if status.get("currentRing") else ""
        doing = status.get("step") or NAMES.sub("<name>", status.get("message", ""))[:100]
        self.places[name] = f"{phase or 'no status yet'}{ring}" + (f" ({doing})" if doing else "")
        if len(self.phases) >= self.count:
            self.seen_all.set()
        if phase == "Succeeded" and name not in self.succeeded_at_s:
            self.succeeded_at_s[name] = time.monotonic()
            for index, record in enumerate(status.get("history") or []):
                if record.get("readyAt"):
                    waited_s = (datetime.fromisoformat(record["readyAt"])
                                - datetime.fromisoformat(record["startedAt"])).total_seconds()
                    (self.first_ring_s if index == 0 else self.later_rings_s).append(waited_s)
        if sum(phase in ("Succeeded", "RolledBack", "Failed") for phase in self.phases.values()) >= self.count:
            self.finished.set()

    def count_of(self, phase: str) -> int:
        with self.lock:
            return sum(seen == phase for seen in self.phases.values())

    def unfinished(self) -> str:
        """Where the Rollouts that have not Succeeded are, the commonest places first."""
        with self.lock:
            places = Counter(place for name, place in self.places.items() if self.phases[name] != "Succeeded")
        return ", ".join(f"{count:,} {place}" for place, count in places.most_common(4))

    def succeeded_times_s(self) -> list[float]:
        with self.lock:
            return list(self.succeeded_at_s.values())


@contextmanager
def following(api_client: Any, namespace: str, progress: Progress) -> Iterator[None]:
    """Watch the namespace's Rollouts in a thread of the bench's own, one event at a time (no list held)."""
    custom = client.CustomObjectsApi(api_client)
    watcher = watch.Watch()
    stopping = threading.Event()

    def follow() -> None:
        while not stopping.is_set():
            try:
                # Without a resourceVersion the watch starts with every Rollout as ADDED: observing is idempotent.
                for event in watcher.stream(custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL,
                                            _request_timeout=(10, 120)):
                    if event["type"] in ("ADDED", "MODIFIED"):
                        progress.observe(event["object"])
            except (ApiException, urllib3.exceptions.HTTPError, OSError):
                stopping.wait(POLL_S)

    thread = threading.Thread(target=follow, name=BENCH_WATCH_THREAD, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stopping.set()
        watcher.stop()


# One run


@dataclass
class Run:
    count: int
    replicas: int
    statefulsets_ready_s: float = math.nan
    rollouts_created_s: float = math.nan
    wall_s: float = math.nan
    succeeded: int = 0
    timed_out: bool = False
    unfinished: str = ""
    queued_at_end: int = 0
    reconciles: int = 0
    errors: int = 0
    plan_ms: tuple[float, float] = (math.nan, math.nan)
    reconcile_ms: tuple[float, float] = (math.nan, math.nan)
    api_requests: int = 0
    writes: int = 0
    informer_requests: str = ""
    rss_before_mib: float = math.nan
    rss_peak_mib: float = math.nan
    rss_after_mib: float = math.nan
    cpu_s: dict[str, float] = field(default_factory=dict)
    rollout_done_s: tuple[float, float] = (math.nan, math.nan)
    first_ring_s: float = math.nan
    later_rings_s: float = math.nan

    @property
    def label(self) -> str:
        return f"{self.count:,} x {self.replicas}"

    @property
    def controller_cpu_s(self) -> float:
        return sum(seconds for group, seconds in self.cpu_s.items() if group.startswith("controller"))


def create_all(create: Callable[[dict[str, Any]], object], bodies: Sequence[dict[str, Any]]) -> float:
    started_s = time.monotonic()
    with ThreadPoolExecutor(CREATE_THREADS) as pool:
        for _ in pool.map(create, bodies):
            pass
    return time.monotonic() - started_s


def wait_statefulsets_ready(apps: client.AppsV1Api, namespace: str, count: int, replicas: int,
                            timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        response = apps.list_namespaced_stateful_set(namespace, _preload_content=False)
        items = json.loads(response.data)["items"]
        ready = sum(
            (item.get("status") or {}).get("observedGeneration", 0) >= item["metadata"]["generation"]
            and (item.get("status") or {}).get("readyReplicas", 0) == replicas
            for item in items
        )
        if ready >= count:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"only {ready} of {count} StatefulSets were ready after {timeout_s:.0f} s; "
                             "see the simulator's log in the cluster folder")
        time.sleep(POLL_S)


def delete_namespace(core: client.CoreV1Api, namespace: str, timeout_s: float) -> float | None:
    """Seconds until the namespace and all in it were gone; None if that took longer than `timeout_s`."""
    started_s = time.monotonic()
    core.delete_namespace(namespace)
    while time.monotonic() - started_s < timeout_s:
        try:
            core.read_namespace(namespace)
        except ApiException as error:
            if error.status == 404:
                return time.monotonic() - started_s
            raise
        time.sleep(POLL_S)
    return None


def measure(cluster: LocalCluster, database_url: str, namespace: str, count: int, replicas: int,
            workers: int) -> Run:
    run = Run(count, replicas)
    names = [f"app-{number:04d}" for number in range(count)]
    with cluster.api_client() as api_client:
        core = client.CoreV1Api(api_client)
        apps = client.AppsV1Api(api_client)
        custom = client.CustomObjectsApi(api_client)
        core.create_namespace({"metadata": {"name": namespace}})
        started_s = time.monotonic()
        create_all(lambda body: apps.create_namespaced_stateful_set(namespace, body),
                   [statefulset_body(name, replicas) for name in names])
        wait_statefulsets_ready(apps, namespace, count, replicas, timeout_for(count))
        run.statefulsets_ready_s = time.monotonic() - started_s
        run.rollouts_created_s = create_all(
            lambda body: custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body),
            # Flags outlive a namespace in the database, and a release needs a flag of its own: name them by both.
            [rollout_body(name, f"{namespace}-{name}") for name in names])
        progress = Progress(count)
        with following(api_client, namespace, progress):
            progress.seen_all.wait(60)
            controller_run(run, cluster, database_url, namespace, workers, progress)
    return run


def controller_run(run: Run, cluster: LocalCluster, database_url: str, namespace: str, workers: int,
                   progress: Progress) -> None:
    """One Controller on its own ApiClient and engine until every Rollout is done or the time is up."""
    engine = make_engine(database_url)
    processes = {name: pid for name, pid in cluster.status().running.items() if name in CLUSTER_PROCESSES}
    with cluster.api_client() as controller_client:
        settings = ControllerSettings(namespace=namespace, identity=f"bench-{secrets.token_hex(3)}",
                                      lease_namespace=namespace, workers=workers)
        controller = Controller(controller_client, engine, settings)
        controller_thread = threading.Thread(target=controller.run, name="controller", daemon=True)
        bench_threads = [thread for thread in threading.enumerate() if thread is not controller_thread]
        bench_before = threads_cpu_s(bench_threads, bench_thread_group)
        processes_before = {name: cpu_s(Path(f"/proc/{pid}/stat")) for name, pid in processes.items()}
        process_before_s = time.process_time()
        machine_before_s = machine_busy_s()
        run.rss_before_mib = rss_mib("VmRSS")
        reset_peak_rss()
        started_s = time.monotonic()
        controller_thread.start()
        run.timed_out = not progress.finished.wait(timeout_for(run.count))
        last_done_s = max(progress.succeeded_times_s(), default=math.nan)
        run.wall_s = (last_done_s if not run.timed_out else time.monotonic()) - started_s
        run.rss_peak_mib = rss_mib("VmHWM")
        run.rss_after_mib = rss_mib("VmRSS")
        # The controller's threads all started with it; the bench's own ran before and count from their start.
        run.cpu_s = threads_cpu_s([thread for thread in threading.enumerate() if thread not in bench_threads],
                                  controller_thread_group)
        for group, seconds in threads_cpu_s(bench_threads, bench_thread_group).items():
            run.cpu_s[group] = seconds - bench_before.get(group, 0.0)
        run.cpu_s["bench process, all threads"] = time.process_time() - process_before_s
        for name, pid in processes.items():
            run.cpu_s[name] = cpu_s(Path(f"/proc/{pid}/stat")) - processes_before[name]
        ours_s = sum(seconds for group, seconds in run.cpu_s.items() if group in CPU_TOTAL_GROUPS)
        run.cpu_s[OTHERS] = max(0.0, machine_busy_s() - machine_before_s - ours_s)
        stats = controller.reconciler.stats
        informers = (controller.rollouts.stats, controller.statefulsets.stats)
        run.queued_at_end = len(controller.queue)
        run.unfinished = progress.unfinished()
        controller.stop()
        controller_thread.join(60)
    engine.dispose()
    run.succeeded = progress.count_of("Succeeded")
    run.reconciles, run.errors = stats.reconciles, stats.errors
    run.plan_ms = (percentile(stats.plan_s, 0.5) * 1000, percentile(stats.plan_s, 0.99) * 1000)
    run.reconcile_ms = (percentile(stats.reconcile_s, 0.5) * 1000, percentile(stats.reconcile_s, 0.99) * 1000)
    # The Executor's own count: the reconciler's per-reconcile deltas also catch other workers' requests.
    run.api_requests, run.writes = controller.executor.api_requests, controller.executor.writes
    lists = sum(informer.lists for informer in informers)
    watches = sum(informer.watches for informer in informers)
    run.informer_requests = f"{lists} lists + {watches} watches"
    done_s = [at_s - started_s for at_s in progress.succeeded_times_s()]
    run.rollout_done_s = (percentile(done_s, 0.5), percentile(done_s, 1.0))
    with progress.lock:
        run.first_ring_s = percentile(progress.first_ring_s, 0.5)
        run.later_rings_s = percentile(progress.later_rings_s, 0.5)


# Reporting


def fmt(value: float, digits: int = 1) -> str:
    return "—" if math.isnan(value) else f"{value:,.{digits}f}"


def table(runs: Sequence[Run]) -> list[str]:
    def per_reconcile(total: float, run: Run) -> str:
        return fmt(total / run.reconciles, 2) if run.reconciles else "—"

    rows: list[tuple[str, Callable[[Run], str]]] = [
        ("Rollouts Succeeded",
         lambda run: f"{run.succeeded:,}/{run.count:,}" + (" (timeout)" if run.timed_out else "")),
        ("StatefulSets created and ready (s)", lambda run: fmt(run.statefulsets_ready_s)),
        ("Rollouts created (s)", lambda run: fmt(run.rollouts_created_s)),
        ("wall time to all Succeeded (s)", lambda run: fmt(run.wall_s)),
        ("one Rollout Succeeded, p50 / last (s)",
         lambda run: f"{fmt(run.rollout_done_s[0])} / {fmt(run.rollout_done_s[1])}"),
        ("first ring ready, p50 (s; new pods)", lambda run: fmt(run.first_ring_s, 2)),
        ("later rings ready, p50 (s; flag only)", lambda run: fmt(run.later_rings_s, 2)),
        ("reconciles", lambda run: f"{run.reconciles:,}"),
        ("reconciles per second", lambda run: fmt(run.reconciles / run.wall_s) if run.wall_s > 0 else "—"),
        ("reconcile errors", lambda run: f"{run.errors:,}"),
        ("plan() p50 / p99 (ms)", lambda run: f"{fmt(run.plan_ms[0], 2)} / {fmt(run.plan_ms[1], 2)}"),
        ("reconcile p50 / p99 (ms)", lambda run: f"{fmt(run.reconcile_ms[0])} / {fmt(run.reconcile_ms[1])}"),
        ("API requests per reconcile", lambda run: per_reconcile(run.api_requests, run)),
        ("writes per reconcile (API + flags)", lambda run: per_reconcile(run.writes, run)),
        ("informer requests", lambda run: run.informer_requests),
        ("controller CPU per reconcile (ms)", lambda run: per_reconcile(run.controller_cpu_s * 1000, run)),
        ("RSS before the controller (MiB)", lambda run: fmt(run.rss_before_mib)),
        ("RSS peak during the run (MiB)", lambda run: fmt(run.rss_peak_mib)),
        ("RSS growth, peak / at the end (MiB)",
         lambda run: f"{fmt(run.rss_peak_mib - run.rss_before_mib)} / {fmt(run.rss_after_mib - run.rss_before_mib)}"),
    ]
    groups = sorted({group for run in runs for group in run.cpu_s}, key=cpu_order)
    rows += [(f"CPU: {group} (s)", cpu_cell(group)) for group in groups]
    rows.append(("CPU: all of it, share of all cores (%)", lambda run: fmt(cores_busy(run) * 100, 0)))
    width = max(len(run.label) for run in runs) + 6
    width = max(width, *(len(cell(run)) + 2 for run in runs for _, cell in rows))
    lines = [f"{'Rollouts x replicas':<40}" + "".join(f"{run.label:>{width}}" for run in runs)]
    lines += [f"{title:<40}" + "".join(f"{cell(run):>{width}}" for run in runs) for title, cell in rows]
    return lines


CPU_ORDER = ("controller workers", "controller informers + handlers", "controller loop + Lease",
             "bench: watching Rollouts", "bench: main thread", "bench process, all threads", *CLUSTER_PROCESSES,
             OTHERS)
CPU_TOTAL_GROUPS = ("bench process, all threads", *CLUSTER_PROCESSES)


def cpu_order(group: str) -> int:
    return CPU_ORDER.index(group) if group in CPU_ORDER else len(CPU_ORDER)


def cpu_cell(group: str) -> Callable[[Run], str]:
    return lambda run: fmt(run.cpu_s.get(group, math.nan))


def cores_busy(run: Run) -> float:
    """The share of all the machine's cores in use during the run, by anything."""
    if math.isnan(run.wall_s) or run.wall_s <= 0:
        return math.nan
    used_s = sum(seconds for group, seconds in run.cpu_s.items() if group in (*CPU_TOTAL_GROUPS, OTHERS))
    return used_s / (run.wall_s * (os.cpu_count() or 1))


def verdict(run: Run) -> str:
    """Where the wall time of one run went, from its own figures."""
    if math.isnan(run.wall_s) or run.wall_s <= 0:
        return f"{run.label}: nothing measured"
    controller_share = run.controller_cpu_s / run.wall_s
    pods_s = run.cpu_s.get("simulator", 0.0) + run.cpu_s.get("kube-controller-manager", 0.0)
    line = (f"{run.label}: controller threads busy {controller_share * 100:.0f} % of the wall time "
            f"({run.controller_cpu_s:,.1f} s CPU in {run.wall_s:,.1f} s); pod side (simulator + "
            f"StatefulSet controller) {pods_s:,.1f} s CPU")
    if run.replicas > 0 and not math.isnan(run.first_ring_s) and not math.isnan(run.later_rings_s):
        line += (f"; a first ring (new pods) took {run.first_ring_s:,.1f} s at the median, "
                 f"a flag-only ring {run.later_rings_s:,.1f} s")
    # Python threads share one GIL: a process near one core of CPU can go no faster, however many workers.
    process_share = run.cpu_s.get("bench process, all threads", 0.0) / run.wall_s
    busy = cores_busy(run)
    if process_share >= GIL_BOUND:
        line += (f". Bottleneck: the controller's process, busy {process_share * 100:.0f} % of one core "
                 "(its threads share one GIL)")
    elif busy >= CORES_SATURATED:
        api_s = run.cpu_s.get("kube-apiserver", 0.0) + run.cpu_s.get("etcd", 0.0)
        line += (f". Bottleneck: the machine, its {os.cpu_count()} cores {busy * 100:.0f} % busy (controller "
                 f"{run.controller_cpu_s:,.0f} s, API server + etcd {api_s:,.0f} s, pod side {pods_s:,.0f} s "
                 f"of CPU): every part waits its turn for a core")
    elif run.replicas > 0 and run.first_ring_s > 5 * run.later_rings_s and run.first_ring_s > 1:
        line += ". Bottleneck: waiting on pods (the first ring waits for the new pods; later rings only for flags)"
    return line


def scaling(runs: Sequence[Run]) -> str:
    """plan() and the whole reconcile, from the baseline to the largest run: what grows with the count."""
    first, last = runs[0], max(runs, key=lambda run: run.count)
    return (f"from {first.label} to {last.label}: plan() p50 {fmt(first.plan_ms[0], 2)} → {fmt(last.plan_ms[0], 2)} "
            f"ms; reconcile p50 {fmt(first.reconcile_ms[0])} → {fmt(last.reconcile_ms[0])} ms; controller CPU "
            f"per reconcile {fmt(first.controller_cpu_s * 1000 / max(1, first.reconciles))} → "
            f"{fmt(last.controller_cpu_s * 1000 / max(1, last.reconciles))} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", help="comma-separated Rollout counts, after the baseline of 1 "
                                         f"(default {','.join(map(str, DEFAULT_COUNTS))})")
    parser.add_argument("--replicas", type=int, help="replicas of every StatefulSet (default 1; 0: no pods)")
    parser.add_argument("--workers", type=int, default=4, help="the controller's reconcile workers")
    arguments = parser.parse_args()
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    counts = [int(count) for count in arguments.counts.split(",")] if arguments.counts else list(DEFAULT_COUNTS)
    replicas = 1 if arguments.replicas is None else arguments.replicas
    default_invocation = arguments.counts is None and arguments.replicas is None
    scenarios = [(BASELINE_COUNT, replicas), *((count, replicas) for count in counts)]
    print(f"controller at scale: {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{platform.system()} {platform.release()} {platform.machine()}; local control plane "
          f"Kubernetes v{KUBE_VERSION}; {arguments.workers} reconcile workers; SQLite", flush=True)
    started_s = time.monotonic()
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="ringmaster-bench-") as folder:
        cluster = LocalCluster(Path(folder) / "localcluster")
        database_url = f"sqlite:///{Path(folder) / 'ringmaster.db'}"
        upgrade(database_url)
        try:
            cluster.up()
            with cluster.api_client() as api_client:
                install_crd(api_client)
            index = 0
            while index < len(scenarios):
                count, replicas_each = scenarios[index]
                index += 1
                print(f"{count:,} Rollouts x {replicas_each} replicas: running ...", flush=True)
                namespace = f"bench-{count}-{replicas_each}-{secrets.token_hex(3)}"
                run = measure(cluster, database_url, namespace, count, replicas_each, arguments.workers)
                runs.append(run)
                print(f"  {run.succeeded:,} of {count:,} Succeeded in {fmt(run.wall_s)} s"
                      + (f" (stopped at the {timeout_for(count) / 60:.0f}-minute timeout)" if run.timed_out else "")
                      + f"; {run.reconciles:,} reconciles; StatefulSets created and ready in "
                      + f"{fmt(run.statefulsets_ready_s)} s", flush=True)
                if run.timed_out:
                    print(f"  not done: {run.unfinished}; {run.queued_at_end:,} keys in the work queue", flush=True)
                infeasible = replicas_each > 0 and count >= 1000 and (run.timed_out or run.wall_s > FEASIBLE_S)
                if infeasible:
                    print(f"  NOT FEASIBLE HERE: {count:,} Rollouts with {replicas_each} replica(s) each did not "
                          f"all succeed within {FEASIBLE_S // 60} minutes on {os.cpu_count()} cores; the figures "
                          "are what was measured (see where the time went, below). `--replicas 0` measures "
                          "the controller without pods.", flush=True)
                    if default_invocation and (count, 0) not in scenarios:
                        scenarios.append((count, 0))
                if index < len(scenarios):
                    # The next run starts on a quiet cluster: wait until this one's objects and pods are gone.
                    with cluster.api_client() as api_client:
                        deleted_s = delete_namespace(client.CoreV1Api(api_client), namespace, timeout_for(count))
                    took = fmt(deleted_s) if deleted_s is not None else f"more than {timeout_for(count):.0f}"
                    print(f"  namespace deleted in {took} s", flush=True)
        finally:
            cluster.down()
            # Interrupted or not, what was measured is shown.
            report(runs)
    print(f"total benchmark time {(time.monotonic() - started_s) / 60:.1f} min")


def report(runs: Sequence[Run]) -> None:
    if not runs:
        return
    print()
    for line in table(runs):
        print(line)
    print()
    print("Where the time went:")
    for run in runs:
        print(f"  {verdict(run)}")
    if len(runs) > 1:
        print(f"  {scaling(runs)}")
    print()
    print(textwrap.fill(NOTES, 110), flush=True)


def stop_on_sigterm(_signal: int, _frame: object) -> None:
    # SystemExit unwinds through the finally blocks: the control plane is stopped, the folder removed.
    raise SystemExit("stopped by SIGTERM; stopping the local control plane")


if __name__ == "__main__":
    main()
