"""One `ringmaster controller` process over many Rollouts, most of them finished: its memory, its start,
its reconciles and the andon cord, beside a baseline process that sees only the progressing ones.

The benchmark starts a local control plane of its own in a temporary folder (etcd, kube-apiserver,
kube-controller-manager and the node simulator; no Prometheus), a SQLite database beside it
(`--postgres`: a throwaway PostgreSQL database), and, once the setup below is done, `ringmaster serve`'s
app in this process for the andon cord's HTTP API (bench/andon.py's pieces). It creates

* `--progressing` Rollouts in a namespace of their own, on StatefulSets of 1 replica (pods played by
  the simulator), whose canary ring bakes for an hour: bench/andon.py's scenario;
* the rest of `--rollouts` in another namespace, on StatefulSets of 0 replicas, to be finished. With
  `--finish rings` (the default) each goes through all four rings with bakes of 0s: no pods, so a ring
  moves the new StatefulSet, the flag and the status, and each ends with the status of a real finished
  rollout (its pin and ring history). With `--finish already-running` each names the image its
  StatefulSet already runs and is recorded Succeeded (`AlreadyRunning`) in one reconcile: much quicker
  to set up, but its status is smaller (no pin, no ring history) and no second StatefulSet is created.

A first controller process (setup, not measured) brings them there: every finished Rollout
Succeeded, every progressing one baking in canary. It is stopped, and each measured run is then a
fresh `ringmaster controller` process (`python -m rollout controller --workers N --metrics-address
...`) on the same objects:

* baseline: `--namespace` of the progressing Rollouts, so it sees only those;
* all: every namespace, so it sees all `--rollouts`.

For each: when /healthz first answers and when /readyz reports each informer's first list done
(polled every 50 ms from the process's start); when the reconcile histogram's count first reaches
the number of Rollouts (the first pass; /metrics polled every second); the process's RSS and CPU
from /proc/PID (sampled every 0.2 s: peak is VmHWM, steady the median over `--idle` seconds of
idling after the first pass); one more scrape of /metrics, timed; then `--pulls` pulls of the cord
over HTTP (every rollout in scope), each timed from just before the request until the bench's own
watch has seen every progressing Rollout Halted, released a second later, and followed until every
one bakes again and the controller has been idle for 2 s. Reconcile latency is the controller's own
histogram, `ringmaster_reconcile_duration_seconds`, over each window (the first pass; the pulls),
read as Prometheus's histogram_quantile reads it: linearly within a bucket (5, 10, 25, 50, 100,
250 ms, ...), so each percentile also names its bucket.
Run: `python -m bench.scale [--rollouts 1000] [--progressing 50] [--pulls 5] [--workers 4]
[--finish rings|already-running] [--postgres]`; the documented run is `--rollouts 10000 --progressing
200` (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from bench.andon import Cord, Phases, observing, prepare, serving
from bench.controller import (
    Progress,
    cpu_s,
    create_all,
    fmt,
    following,
    machine_busy_s,
    percentile,
    rollout_body,
    statefulset_body,
    stop_on_sigterm,
)
from bench.propagation import free_port
from bench.usage_ingest import postgres_database, sqlite_database
from cohorts.cache import CompiledSetCache
from cohorts.db import make_engine, upgrade
from cohorts.store import CohortStore
from rollout.controller.crd import install_crd
from rollout.controller.spec import GROUP, PLURAL, VERSION
from rollout.flags.document import compile_flags, render
from rollout.flags.store import FlagStore
from rollout.localcluster.cluster import KUBE_VERSION, LocalCluster

FINISH_MODES = ("rings", "already-running")
# statefulset_body's image: a Rollout naming it has nothing to roll out.
CURRENT_IMAGE = "registry.example.com/web:1.0.0"
CLUSTER_PROCESSES = ("kube-apiserver", "etcd", "kube-controller-manager", "simulator")
PROBE_EVERY_S = 0.05
SCRAPE_EVERY_S = 1.0
SAMPLE_EVERY_S = 0.2
QUIET_S = 2.0
HOLD_S = 1.0
REPORT_EVERY_S = 30.0
HISTOGRAM = "ringmaster_reconcile_duration_seconds"
NOTES = (
    "Times of the start are seconds from the controller process's start (so they include Python's imports): "
    "/healthz is the endpoint's first answer, an informer is synced when /readyz stops naming it, the first pass "
    "ends at the first scrape (one a second) whose reconcile count reaches the number of Rollouts. RSS is the "
    "controller process's own (/proc/PID/status: VmRSS, and VmHWM for the peak); the control plane's processes "
    "are listed apart. Reconcile p50 / p99 come from the controller's histogram over the window, interpolated "
    "within the bucket named beside them. A pull is timed from just before the HTTP request to the last "
    "progressing Rollout seen Halted by the bench's own watch; p99 is the nearest rank (with 5 pulls, the "
    "slowest). A pull cycle runs from the pull until the controller is quiet after the release: a pull and a "
    "release each make the controller look at every Rollout in its scope again."
)


# The controller as a process of its own


def status_mib(pid: int, field_name: str) -> float:
    """VmRSS (now) or VmHWM (the peak) of a process, in MiB; nan once it is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return math.nan
    for line in lines:
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1]) / 1024
    return math.nan


@dataclass(frozen=True)
class Sample:
    at_s: float
    rss_mib: float
    cpu_s: float


class Sampler:
    """A process's RSS and CPU time every SAMPLE_EVERY_S, in a thread of this process."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[Sample] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        stat = Path(f"/proc/{self.pid}/stat")
        while not self._stopping.wait(SAMPLE_EVERY_S):
            rss = status_mib(self.pid, "VmRSS")
            if not math.isnan(rss):
                self.samples.append(Sample(time.monotonic(), rss, cpu_s(stat)))

    def between(self, start_s: float, end_s: float) -> list[Sample]:
        return [sample for sample in list(self.samples) if start_s <= sample.at_s <= end_s]

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(5)


@dataclass(frozen=True)
class Scrape:
    """What one scrape of the controller's /metrics said, and what it cost."""

    at_s: float
    took_s: float
    size_bytes: int
    # The reconcile histogram over every result: (upper bound, cumulative count), +Inf last.
    buckets: tuple[tuple[float, float], ...]
    results: dict[str, float]
    depth: float
    rollout_series: int

    @property
    def reconciles(self) -> float:
        return self.buckets[-1][1] if self.buckets else 0.0


def parse_scrape(text: str, at_s: float, took_s: float) -> Scrape:
    cumulative: dict[float, float] = {}
    results: dict[str, float] = {}
    depth, series = math.nan, 0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{HISTOGRAM}_bucket":
                bound = float(sample.labels["le"])
                cumulative[bound] = cumulative.get(bound, 0.0) + sample.value
            elif sample.name == f"{HISTOGRAM}_count":
                results[sample.labels["result"]] = sample.value
            elif sample.name == "ringmaster_workqueue_depth":
                depth = sample.value
            elif sample.name == "ringmaster_rollout_info":
                series += 1
    return Scrape(at_s, took_s, len(text.encode()), tuple(sorted(cumulative.items())), results, depth, series)


class ControllerProcess:
    """`ringmaster controller` in a process of its own, its /metrics, /healthz and /readyz on a free port."""

    def __init__(self, label: str, cluster: LocalCluster, database_url: str, folder: Path, workers: int,
                 namespace: str | None) -> None:
        self.label = label
        self.log_path = folder / f"controller-{label}.log"
        port = free_port()
        command = [sys.executable, "-m", "rollout", "controller", "--kubeconfig", str(cluster.kubeconfig),
                   "--no-install-crd", "--identity", f"bench-scale-{label}", "--workers", str(workers),
                   "--metrics-address", f"127.0.0.1:{port}"]
        if namespace is not None:
            command += ["--namespace", namespace]
        # The data folder of the benchmark: no local Prometheus is found there, so gates are not configured.
        environment = {**os.environ, "RINGMASTER_DATABASE_URL": database_url, "RINGMASTER_DATA_DIR": str(folder)}
        environment.pop("RINGMASTER_PROMETHEUS_URL", None)
        with self.log_path.open("wb") as log:
            self.started_s = time.monotonic()
            self.process = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)
        self.sampler = Sampler(self.process.pid)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)

    @property
    def pid(self) -> int:
        return self.process.pid

    def since_start(self) -> float:
        return time.monotonic() - self.started_s

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
            raise SystemExit(f"controller {self.label} exited with status {code}; the end of its log:\n{tail}")

    def scrape(self) -> Scrape:
        self.check_alive()
        started_s = time.monotonic()
        response = self.http.get("/metrics")
        response.raise_for_status()
        took_s = time.monotonic() - started_s
        return parse_scrape(response.text, started_s, took_s)

    def stop(self) -> int:
        self.sampler.stop()
        self.http.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait(10)


@contextmanager
def controller_process(label: str, cluster: LocalCluster, database_url: str, folder: Path, workers: int,
                       namespace: str | None = None) -> Iterator[ControllerProcess]:
    controller = ControllerProcess(label, cluster, database_url, folder, workers, namespace)
    try:
        yield controller
    finally:
        code = controller.stop()
        if code != 0:
            print(f"  controller {label} exited with status {code}; its log: {controller.log_path}", flush=True)


# Histograms


def histogram_delta(before: Scrape, after: Scrape) -> list[tuple[float, float]]:
    earlier = dict(before.buckets)
    return [(bound, count - earlier.get(bound, 0.0)) for bound, count in after.buckets]


def histogram_quantile(share: float, buckets: Sequence[tuple[float, float]]) -> tuple[float, str]:
    """Seconds at `share` of cumulative buckets, as Prometheus's histogram_quantile, and the bucket's bounds."""
    if not buckets or buckets[-1][1] <= 0:
        return math.nan, ""
    rank = share * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= rank and cumulative > lower_count:
            if math.isinf(bound):
                return lower_bound, f">{lower_bound * 1000:g} ms"
            value = lower_bound + (bound - lower_bound) * (rank - lower_count) / (cumulative - lower_count)
            return value, f"{lower_bound * 1000:g} to {bound * 1000:g} ms"
        lower_bound, lower_count = bound, cumulative
    return lower_bound, f">{lower_bound * 1000:g} ms"


def latency_cell(buckets: Sequence[tuple[float, float]]) -> str:
    p50, p50_bucket = histogram_quantile(0.5, buckets)
    p99, p99_bucket = histogram_quantile(0.99, buckets)
    if math.isnan(p50):
        return "—"
    return f"{p50 * 1000:.1f} ({p50_bucket}) / {p99 * 1000:.1f} ({p99_bucket})"


# The objects


@dataclass(frozen=True)
class Finished:
    namespace: str
    count: int
    created_s: float


def prepare_finished(cluster: LocalCluster, count: int, finish: str) -> Finished:
    """`count` StatefulSets of 0 replicas and a Rollout for each, in a namespace of their own."""
    namespace = f"bench-scale-finished-{os.urandom(3).hex()}"
    names = [f"app-{number:05d}" for number in range(count)]
    started_s = time.monotonic()
    with cluster.api_client() as api_client:
        client.CoreV1Api(api_client).create_namespace({"metadata": {"name": namespace}})
        apps = client.AppsV1Api(api_client)
        custom = client.CustomObjectsApi(api_client)
        create_all(lambda body: apps.create_namespaced_stateful_set(namespace, body),
                   [statefulset_body(name, 0) for name in names])
        bodies = [rollout_body(name, f"{namespace}-{name}") for name in names]
        if finish == "already-running":
            for body in bodies:
                body["spec"]["image"] = CURRENT_IMAGE
        create_all(lambda body: custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body),
                   bodies)
    return Finished(namespace, count, time.monotonic() - started_s)


def bring_to_start(cluster: LocalCluster, database_url: str, folder: Path, workers: int, finished: Finished,
                   phases: Phases) -> float:
    """A setup controller until every finished Rollout Succeeded and every progressing one bakes; seconds taken."""
    progress = Progress(finished.count)
    timeout_s = max(600.0, finished.count * 1.2)
    with cluster.api_client() as api_client, following(api_client, finished.namespace, progress), \
            controller_process("setup", cluster, database_url, folder, workers) as controller:
        while not (progress.finished.is_set() and phases.all_baking()):
            if progress.finished.is_set():
                phases.wait(phases.all_baking, REPORT_EVERY_S)
            else:
                progress.finished.wait(REPORT_EVERY_S)
            controller.check_alive()
            elapsed_s = controller.since_start()
            print(f"    {elapsed_s:5.0f} s: {progress.count_of('Succeeded'):,} of {finished.count:,} Succeeded, "
                  f"{len(phases.baking):,} of {phases.count:,} baking", flush=True)
            if elapsed_s > timeout_s:
                raise SystemExit(f"setup not done after {timeout_s:.0f} s: {progress.unfinished()}")
        took_s = controller.since_start()
    if progress.count_of("Succeeded") != finished.count:
        raise SystemExit(f"not every finished Rollout Succeeded: {progress.unfinished()}")
    return took_s


def flag_document(database_url: str) -> str:
    """The flagd document `serve` publishes (every Rollout's flag among them): flags, size, compile time."""
    engine = make_engine(database_url)
    try:
        cohort_store = CohortStore(engine)
        started_s = time.perf_counter()
        document = compile_flags(FlagStore(engine, cohort_store), CompiledSetCache(cohort_store), datetime.now(UTC))
        size_bytes = len(render(document).text.encode())
        took_s = time.perf_counter() - started_s
    finally:
        engine.dispose()
    return (f"{len(document['flags']):,} flags, {size_bytes / 1024:,.0f} KiB, compiled and rendered in "
            f"{took_s * 1000:,.0f} ms")


# One measured controller


@dataclass
class Pull:
    first_halted_s: float = math.nan
    last_halted_s: float = math.nan
    timed_out: bool = False
    cycle_s: float = math.nan
    reconciles: float = 0.0
    buckets: list[tuple[float, float]] = field(default_factory=list)
    controller_cpu_s: float = math.nan
    cluster_cpu_s: float = math.nan


@dataclass
class Run:
    label: str
    rollouts: int
    healthz_s: float = math.nan
    synced_s: dict[str, float] = field(default_factory=dict)
    ready_s: float = math.nan
    first_pass_s: float = math.nan
    first_pass_cpu_s: float = math.nan
    first_pass_reconciles: float = 0.0
    first_pass_buckets: list[tuple[float, float]] = field(default_factory=list)
    rss_ready_mib: float = math.nan
    rss_steady_mib: float = math.nan
    rss_peak_mib: float = math.nan
    rss_end_mib: float = math.nan
    idle_cpu_share: float = math.nan
    scrape_ms: float = math.nan
    scrape_bytes: int = 0
    rollout_series: int = 0
    pulls: list[Pull] = field(default_factory=list)
    cluster_rss_mib: dict[str, float] = field(default_factory=dict)
    machine_busy_share: float = math.nan
    load_before: str = ""
    load_after: str = ""
    exit_code: int | None = None

    def pull_buckets(self) -> list[tuple[float, float]]:
        summed: dict[float, float] = {}
        for pull in self.pulls:
            for bound, count in pull.buckets:
                summed[bound] = summed.get(bound, 0.0) + count
        return sorted(summed.items())


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cluster_pids(cluster: LocalCluster) -> dict[str, int]:
    return {name: pid for name, pid in cluster.status().running.items() if name in CLUSTER_PROCESSES}


def wait_started(controller: ControllerProcess, run: Run, timeout_s: float) -> None:
    """Poll /readyz from the process's start: when it first answers, when each informer is synced, when ready."""
    unsynced: set[str] | None = None
    while True:
        controller.check_alive()
        if controller.since_start() > timeout_s:
            raise SystemExit(f"controller {controller.label} not ready after {timeout_s:.0f} s")
        try:
            response = controller.http.get("/readyz", timeout=5)
        except httpx.TransportError:
            time.sleep(PROBE_EVERY_S)
            continue
        at_s = controller.since_start()
        if math.isnan(run.healthz_s):
            run.healthz_s = at_s
        # 503 "caches not synced yet: rollouts, statefulsets"
        naming = set() if response.status_code == 200 else {
            name.strip() for name in response.text.split(":", 1)[-1].split(",") if name.strip()}
        for name in (unsynced or {"rollouts", "statefulsets", "slogates"}) - naming:
            run.synced_s.setdefault(name, at_s)
        unsynced = naming
        if response.status_code == 200:
            run.ready_s = at_s
            return
        time.sleep(PROBE_EVERY_S)


def wait_quiet(controller: ControllerProcess, timeout_s: float) -> Scrape:
    """Until the reconcile count has not moved for QUIET_S; the last scrape."""
    last = controller.scrape()
    quiet_since_s = time.monotonic()
    deadline_s = time.monotonic() + timeout_s
    while time.monotonic() < deadline_s:
        time.sleep(SCRAPE_EVERY_S)
        now = controller.scrape()
        if now.reconciles != last.reconciles:
            quiet_since_s = time.monotonic()
        elif time.monotonic() - quiet_since_s >= QUIET_S:
            return now
        last = now
    raise SystemExit(f"controller {controller.label} still reconciling after {timeout_s:.0f} s")


def measure(label: str, cluster: LocalCluster, database_url: str, folder: Path, workers: int,
            namespace: str | None, rollouts: int, cord: Cord, phases: Phases, pulls: int, idle_s: float) -> Run:
    run = Run(label, rollouts)
    run.load_before = load_average()
    pids = cluster_pids(cluster)
    timeout_s = 120.0 + rollouts * 0.1
    machine_before_s, wall_started_s = machine_busy_s(), time.monotonic()
    with controller_process(label, cluster, database_url, folder, workers, namespace) as controller:
        wait_started(controller, run, timeout_s)
        ready_at_s = time.monotonic()
        first = controller.scrape()
        while first.reconciles < rollouts:
            if controller.since_start() > timeout_s:
                raise SystemExit(f"controller {label}: {first.reconciles:.0f} of {rollouts} reconciled after "
                                 f"{timeout_s:.0f} s")
            time.sleep(SCRAPE_EVERY_S)
            first = controller.scrape()
        run.first_pass_s = first.at_s - controller.started_s
        run.first_pass_cpu_s = cpu_s(Path(f"/proc/{controller.pid}/stat"))
        quiet = wait_quiet(controller, timeout_s)
        run.first_pass_reconciles = quiet.reconciles
        run.first_pass_buckets = list(quiet.buckets)
        after_ready = controller.sampler.between(ready_at_s, ready_at_s + 1.0)
        run.rss_ready_mib = after_ready[0].rss_mib if after_ready else math.nan
        idle_started_s = time.monotonic()
        time.sleep(idle_s)
        idle = controller.sampler.between(idle_started_s, time.monotonic())
        if len(idle) >= 2:
            run.rss_steady_mib = statistics.median(sample.rss_mib for sample in idle)
            run.idle_cpu_share = (idle[-1].cpu_s - idle[0].cpu_s) / (idle[-1].at_s - idle[0].at_s)
        timed = controller.scrape()
        run.scrape_ms, run.scrape_bytes, run.rollout_series = timed.took_s * 1000, timed.size_bytes, \
            timed.rollout_series
        for number in range(1, pulls + 1):
            pull = pull_cycle(number, controller, cord, phases, pids, timeout_s)
            run.pulls.append(pull)
            print(f"    pull {number}: last Halted after {fmt(pull.last_halted_s * 1000, 0)} ms"
                  + (" (timed out)" if pull.timed_out else "")
                  + f"; {pull.reconciles:,.0f} reconciles in the cycle of {fmt(pull.cycle_s)} s", flush=True)
        run.rss_peak_mib = status_mib(controller.pid, "VmHWM")
        run.rss_end_mib = status_mib(controller.pid, "VmRSS")
        run.cluster_rss_mib = {name: status_mib(pid, "VmRSS") for name, pid in pids.items()}
    run.exit_code = controller.process.returncode
    wall_s = time.monotonic() - wall_started_s
    run.machine_busy_share = (machine_busy_s() - machine_before_s) / (wall_s * (os.cpu_count() or 1))
    run.load_after = load_average()
    return run


def pull_cycle(number: int, controller: ControllerProcess, cord: Cord, phases: Phases, pids: dict[str, int],
               timeout_s: float) -> Pull:
    pull = Pull()
    before = controller.scrape()
    phases.forget_halts()
    api_pids = [pid for name, pid in pids.items() if name in ("kube-apiserver", "etcd")]
    controller_stat = Path(f"/proc/{controller.pid}/stat")
    controller_before_s = cpu_s(controller_stat)
    cluster_before_s = sum(cpu_s(Path(f"/proc/{pid}/stat")) for pid in api_pids)
    started_s = time.monotonic()
    pull_id = cord.pull(f"bench.scale: pull {number}")
    pull.timed_out = not phases.wait(phases.all_halted, timeout_s)
    halted_s = time.monotonic()
    with phases.changed:
        halted_at_s = list(phases.halted_at_s.values())
    pull.first_halted_s = min(halted_at_s, default=math.nan) - started_s
    pull.last_halted_s = (halted_s if pull.timed_out else max(halted_at_s, default=math.nan)) - started_s
    time.sleep(HOLD_S)
    cord.release(pull_id)
    if not phases.wait(lambda: not phases.halted and phases.all_baking(), timeout_s):
        raise SystemExit(f"after the release of pull {pull_id}, {len(phases.halted)} Rollouts were still Halted")
    after = wait_quiet(controller, timeout_s)
    # Up to the scrape that found the controller quiet: the QUIET_S that confirmed it are not part of the cycle.
    pull.cycle_s = after.at_s - QUIET_S - started_s
    pull.controller_cpu_s = cpu_s(controller_stat) - controller_before_s
    pull.cluster_cpu_s = sum(cpu_s(Path(f"/proc/{pid}/stat")) for pid in api_pids) - cluster_before_s
    pull.buckets = histogram_delta(before, after)
    pull.reconciles = after.reconciles - before.reconciles
    return pull


# Reporting


def ms(seconds: float) -> str:
    return fmt(seconds * 1000, 0)


def table(runs: Sequence[Run]) -> list[str]:
    def halted(run: Run, share: float, which: str) -> str:
        values = [getattr(pull, which) for pull in run.pulls]
        return ms(percentile(values, share))

    def per_cycle(run: Run, value: str) -> float:
        return statistics.median(getattr(pull, value) for pull in run.pulls) if run.pulls else math.nan

    rows: list[tuple[str, Callable[[Run], str]]] = [
        ("Rollouts the controller sees", lambda run: f"{run.rollouts:,}"),
        ("start: /healthz answers (s)", lambda run: fmt(run.healthz_s, 2)),
        ("start: rollouts informer synced (s)", lambda run: fmt(run.synced_s.get("rollouts", math.nan), 2)),
        ("start: statefulsets informer synced (s)", lambda run: fmt(run.synced_s.get("statefulsets", math.nan), 2)),
        ("start: /readyz 200, every cache synced (s)", lambda run: fmt(run.ready_s, 2)),
        ("start: every Rollout reconciled once (s, ±1)", lambda run: fmt(run.first_pass_s, 1)),
        ("first pass: reconciles", lambda run: f"{run.first_pass_reconciles:,.0f}"),
        ("start to first pass: controller CPU (s)", lambda run: fmt(run.first_pass_cpu_s, 1)),
        ("first pass: reconcile p50 / p99 (ms)", lambda run: latency_cell(run.first_pass_buckets)),
        ("RSS when ready (MiB)", lambda run: fmt(run.rss_ready_mib)),
        ("RSS peak, VmHWM (MiB)", lambda run: fmt(run.rss_peak_mib)),
        ("RSS steady, idle after the first pass (MiB)", lambda run: fmt(run.rss_steady_mib)),
        ("RSS at the end, after the pulls (MiB)", lambda run: fmt(run.rss_end_mib)),
        ("CPU while idle (% of one core)", lambda run: fmt(run.idle_cpu_share * 100)),
        ("/metrics scrape (ms; KiB; rollout_info series)",
         lambda run: f"{fmt(run.scrape_ms, 0)}; {run.scrape_bytes / 1024:,.0f}; {run.rollout_series:,}"),
        ("andon: first Halted p50 (ms)", lambda run: halted(run, 0.5, "first_halted_s")),
        ("andon: last Halted p50 / p99 (ms)",
         lambda run: f"{halted(run, 0.5, 'last_halted_s')} / {halted(run, 0.99, 'last_halted_s')}"),
        ("andon: timed out", lambda run: str(sum(pull.timed_out for pull in run.pulls))),
        ("pull cycle: reconciles, median", lambda run: fmt(per_cycle(run, "reconciles"), 0)),
        ("pull cycle: seconds, median", lambda run: fmt(per_cycle(run, "cycle_s"))),
        ("pull cycle: reconciles per second, median",
         lambda run: fmt(statistics.median(pull.reconciles / pull.cycle_s for pull in run.pulls), 0)
         if run.pulls else "—"),
        ("pull cycle: reconcile p50 / p99 (ms)", lambda run: latency_cell(run.pull_buckets())),
        ("pull cycle: controller CPU (s), median", lambda run: fmt(per_cycle(run, "controller_cpu_s"), 2)),
        ("pull cycle: apiserver + etcd CPU (s), median", lambda run: fmt(per_cycle(run, "cluster_cpu_s"), 2)),
        *((f"RSS of {name} at the end (MiB)", cluster_cell(name)) for name in CLUSTER_PROCESSES),
        ("machine: all cores busy during the run (%)", lambda run: fmt(run.machine_busy_share * 100, 0)),
        ("machine: load average before → after", lambda run: f"{run.load_before} → {run.load_after}"),
    ]
    cells = [[cell(run) for run in runs] for _, cell in rows]
    width = max(len(text) for row in cells for text in row) + 2
    width = max(width, *(len(run.label) + 2 for run in runs))
    lines = [f"{'':<48}" + "".join(f"{run.label:>{width}}" for run in runs)]
    lines += [f"{title:<48}" + "".join(f"{text:>{width}}" for text in row) for (title, _), row in zip(rows, cells,
                                                                                                      strict=True)]
    return lines


def cluster_cell(name: str) -> Callable[[Run], str]:
    return lambda run: fmt(run.cluster_rss_mib.get(name, math.nan))


def report(runs: Sequence[Run]) -> None:
    if not runs:
        return
    print()
    for line in table(runs):
        print(line)
    print()
    print(textwrap.fill(NOTES, 110), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rollouts", type=int, default=1000, help="Rollouts in all, progressing ones included")
    parser.add_argument("--progressing", type=int, default=50, help="Rollouts baking in canary when the cord is pulled")
    parser.add_argument("--finish", choices=FINISH_MODES, default="rings",
                        help="how the finished Rollouts finish: through every ring, or already running their image")
    parser.add_argument("--pulls", type=int, default=5, help="pulls of the cord per measured controller")
    parser.add_argument("--workers", type=int, default=4, help="the controllers' reconcile workers")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idling measured after the first pass")
    parser.add_argument("--postgres", action="store_true", help="a throwaway PostgreSQL database instead of SQLite")
    arguments = parser.parse_args()
    if not 0 < arguments.progressing < arguments.rollouts:
        parser.error("--progressing must be more than 0 and fewer than --rollouts")
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    # The service logs every pull and release as a warning; the figures say what happened.
    logging.getLogger("rollout.api.andon").setLevel(logging.ERROR)
    finished_count = arguments.rollouts - arguments.progressing
    backend = "PostgreSQL" if arguments.postgres else "SQLite"
    print(f"controller at scale: {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()} "
          f"{platform.release()}; local control plane Kubernetes v{KUBE_VERSION}; {backend}; "
          f"{arguments.rollouts:,} Rollouts: {finished_count:,} finished ({arguments.finish}), "
          f"{arguments.progressing:,} progressing; {arguments.workers} workers; load average {load_average()}",
          flush=True)
    started_s = time.monotonic()
    runs: list[Run] = []
    database = postgres_database() if arguments.postgres else sqlite_database()
    with database as database_url, tempfile.TemporaryDirectory(prefix="ringmaster-bench-scale-") as folder_name:
        folder = Path(folder_name)
        upgrade(database_url)
        cluster = LocalCluster(folder / "localcluster")
        try:
            cluster.up(prometheus=False)
            with cluster.api_client() as api_client:
                install_crd(api_client)
            print(f"{arguments.progressing:,} progressing: StatefulSets of 1 replica, Rollouts ...", flush=True)
            # Named to come after the finished ones in the controller's queue: where the last of a few
            # progressing Rollouts spread among many finished ones would be anyway.
            progressing = prepare(cluster, arguments.progressing, f"bench-scale-progressing-{os.urandom(3).hex()}")
            print(f"  created, StatefulSets ready, in {progressing.setup_s:.1f} s", flush=True)
            print(f"{finished_count:,} to finish: StatefulSets of 0 replicas, Rollouts ...", flush=True)
            finished = prepare_finished(cluster, finished_count, arguments.finish)
            print(f"  created in {finished.created_s:.1f} s", flush=True)
            phases = Phases(arguments.progressing)
            with observing(cluster, progressing.namespace, phases):
                print("setup controller: finishing and starting them ...", flush=True)
                setup_s = bring_to_start(cluster, database_url, folder, arguments.workers, finished, phases)
                print(f"  done in {setup_s:.0f} s ({finished_count / setup_s:.1f} finished Rollouts a second)",
                      flush=True)
                document = flag_document(database_url)
                print(f"  the flag document serve publishes: {document}", flush=True)
                # Started only now: while the rollouts' flags change, serve would recompile its document all along.
                with serving(database_url) as base_url:
                    cord = Cord(base_url, database_url)
                    for label, namespace, count in (
                            (f"baseline: {arguments.progressing:,}", progressing.namespace, arguments.progressing),
                            (f"all: {arguments.rollouts:,}", None, arguments.rollouts)):
                        print(f"{label}: a fresh controller process ...", flush=True)
                        runs.append(measure(label, cluster, database_url, folder, arguments.workers, namespace,
                                            count, cord, phases, arguments.pulls, arguments.idle))
        finally:
            cluster.down()
            report(runs)
    print(f"total benchmark time {(time.monotonic() - started_s) / 60:.1f} min; load average {load_average()}")
    if any(pull.timed_out for run in runs for pull in run.pulls):
        raise SystemExit("FAILED: not every progressing Rollout was seen Halted in time")


if __name__ == "__main__":
    main()
