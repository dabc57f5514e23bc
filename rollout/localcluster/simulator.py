"""The node simulator: kubelet and scheduler of the local control plane, and the simulated application.

The local control plane has no kubelet and no kube-scheduler, so this process plays both for one
Node: it keeps the Node Ready, binds every unscheduled pod to it, runs bound pods through the lives
in `lifecycle` (Ready after a delay, never Ready, or crashing in a loop, as the pod's
`sim.ringmaster.dev/*` annotations ask; see `annotations`), and finishes graceful deletes, which
nothing else would. Each Ready pod serves the synthetic metrics of `traffic` over HTTP, and the
Prometheus file_sd targets file lists exactly the Ready pods.

    python -m rollout.localcluster.simulator --kubeconfig PATH --metrics-port PORT --targets-file PATH
        [--node-name sim-node-1]

Threads: one lists and watches pods onto a `PodBoard`; one works through the pods the board says are
due, level-triggered (every pass derives what to write from the pod as last seen and the time, so a
lost event or a failed write is made good on the next pass); one keeps the Node's heartbeat; the HTTP
server answers scrapes. The main thread waits for SIGTERM or SIGINT, then clears the targets file.
"""

from __future__ import annotations

import argparse
import enum
import heapq
import json
import logging
import platform
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.watch.watch import iter_resp_lines

from rollout.localcluster.annotations import AnnotationProblem, PodBehaviour, read_behaviour
from rollout.localcluster.lifecycle import (
    ContainerLife,
    ContainerSpec,
    Stage,
    advance,
    life_from_status,
    next_change_s,
    pod_address,
    pod_status,
    started,
    status_fingerprint,
    timestamp,
)
from rollout.localcluster.scrape import Pod, ServedPods, TargetsFile, metrics_handler

log = logging.getLogger("ringmaster.simulator")

COMPONENT = "ringmaster-node-simulator"
DEFAULT_NODE_NAME = "sim-node-1"
HOST_IP = "127.0.0.1"
NODE_CAPACITY = {"cpu": "64", "memory": "256Gi", "pods": "1000", "ephemeral-storage": "1Ti"}
KUBELET_VERSION = "v1.20.2"
HEARTBEAT_S = 10.0
# The server ends a watch after WATCH_S; the client gives up on a silent connection a little later,
# so a half-open connection cannot hang the watch forever.
WATCH_S = 60
WATCH_READ_TIMEOUT_S = WATCH_S + 15
CONNECT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = (CONNECT_TIMEOUT_S, 15.0)
# Every pod is looked at again this often even when nothing about it changed.
RESYNC_S = 60.0
RETRY_S = 2.0
MAX_BACKOFF_S = 10.0


def _raw(response: object) -> urllib3.BaseHTTPResponse:
    # With _preload_content=False the generated API returns urllib3's response, whatever its signature says.
    return cast(urllib3.BaseHTTPResponse, response)


def _discard(response: object) -> None:
    # Reading the body lets urllib3 reuse the connection.
    raw = _raw(response)
    raw.drain_conn()
    raw.release_conn()


def _ref(pod: Pod) -> str:
    metadata = pod.get("metadata") or {}
    return f"{metadata.get('namespace')}/{metadata.get('name')}"


def _uid(pod: Pod) -> str:
    return str((pod.get("metadata") or {}).get("uid", ""))


class _Backoff:
    """Exponential back-off with jitter, for reconnecting to an API server that went away."""

    def __init__(self) -> None:
        self._failures = 0

    def reset(self) -> None:
        self._failures = 0

    def next_s(self) -> float:
        self._failures += 1
        return min(MAX_BACKOFF_S, 0.2 * 2.0**self._failures) * random.uniform(0.5, 1.0)


class Health:
    """What /healthz says: the simulator is of use once its Node is registered and it has listed the pods."""

    def __init__(self) -> None:
        self.node_registered = threading.Event()
        self.pods_listed = threading.Event()

    def unhealthy_because(self) -> str | None:
        if not self.node_registered.is_set():
            return "the node is not registered"
        if not self.pods_listed.is_set():
            return "the pods have not been listed yet"
        return None


class PodBoard:
    """The pods as last seen by the watch, and which of them are due to be looked at: changed since,
    or with a timer (a ready delay, a crash) gone off. Shared by the watch and the kubelet threads."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._pods: dict[str, Pod] = {}
        self._due: set[str] = set()
        self._timers: list[tuple[float, str]] = []
        self._next_timer: dict[str, float] = {}

    def replace_all(self, pods: Iterable[Pod]) -> None:
        """Take a fresh list as the whole truth: pods missing from it are gone, and every pod is due."""
        with self._changed:
            listed = {_uid(pod): pod for pod in pods}
            self._due.update(self._pods.keys() - listed.keys())
            self._due.update(listed)
            self._pods = listed
            self._changed.notify()

    def put(self, pod: Pod) -> None:
        with self._changed:
            self._pods[_uid(pod)] = pod
            self._due.add(_uid(pod))
            self._changed.notify()

    def remove(self, uid: str) -> None:
        with self._changed:
            self._pods.pop(uid, None)
            self._due.add(uid)
            self._changed.notify()

    def get(self, uid: str) -> Pod | None:
        with self._changed:
            return self._pods.get(uid)

    def all_due(self) -> None:
        with self._changed:
            self._due.update(self._pods)
            self._changed.notify()

    def due_at(self, uid: str, at_s: float) -> None:
        """Look at the pod again at `at_s` (Unix time)."""
        with self._changed:
            if self._next_timer.get(uid) == at_s:
                return
            self._next_timer[uid] = at_s
            heapq.heappush(self._timers, (at_s, uid))
            self._changed.notify()

    def take_due(self, max_wait_s: float) -> set[str]:
        """The pods due now, waiting up to `max_wait_s` for one to become due."""
        with self._changed:
            deadline_s = time.time() + max_wait_s
            while True:
                now_s = time.time()
                while self._timers and self._timers[0][0] <= now_s:
                    at_s, uid = heapq.heappop(self._timers)
                    if self._next_timer.get(uid) == at_s:
                        del self._next_timer[uid]
                    self._due.add(uid)
                if self._due or now_s >= deadline_s:
                    due, self._due = self._due, set()
                    return due
                wake_s = min(deadline_s, self._timers[0][0]) if self._timers else deadline_s
                self._changed.wait(wake_s - now_s)


class WatchExpired(Exception):
    """The watch's resourceVersion is too old (410 Gone): only a fresh list can go on from here."""


def watch_pods(core: client.CoreV1Api, board: PodBoard, health: Health, stop: threading.Event) -> None:
    """List every pod, then watch from the list's resourceVersion, for as long as the simulator runs."""
    backoff = _Backoff()
    while not stop.is_set():
        try:
            resource_version = _list_pods(core, board)
            health.pods_listed.set()
            backoff.reset()
            while not stop.is_set():
                resource_version = follow_pods(core, board, resource_version, stop)
        except WatchExpired:
            log.info("the pod watch expired; listing pods again")
        except Exception as error:
            wait_s = backoff.next_s()
            log.warning("watching pods failed (%s); trying again in %.1f s", _describe(error), wait_s)
            stop.wait(wait_s)


def _list_pods(core: client.CoreV1Api, board: PodBoard) -> str:
    response = _raw(core.list_pod_for_all_namespaces(_preload_content=False, _request_timeout=REQUEST_TIMEOUT_S))
    try:
        pod_list = json.loads(response.data)
    finally:
        response.release_conn()
    pods = pod_list.get("items") or []
    board.replace_all(pods)
    resource_version = str(pod_list["metadata"]["resourceVersion"])
    log.info("listed %d pods; watching from resourceVersion %s", len(pods), resource_version)
    return resource_version


def follow_pods(core: client.CoreV1Api, board: PodBoard, resource_version: str, stop: threading.Event) -> str:
    """Apply one watch's events to the board, until the server ends it; returns where to go on from.
    Raises WatchExpired when `resource_version` is too old to watch from.

    The client's Watch.stream is not used: deserialising pods into models is slow, and without
    deserialising it fails on ERROR events, which are the ones that say the version expired."""
    try:
        response = _raw(
            core.list_pod_for_all_namespaces(
                watch=True,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=WATCH_S,
                _request_timeout=(CONNECT_TIMEOUT_S, WATCH_READ_TIMEOUT_S),
                _preload_content=False,
            )
        )
    except ApiException as error:
        if error.status == 410:
            raise WatchExpired from error
        raise
    try:
        for line in iter_resp_lines(response):
            if stop.is_set():
                break
            if not line.strip():
                continue
            event = json.loads(line)
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise WatchExpired
                raise RuntimeError(f"the pod watch ended with an error: {obj.get('message')}")
            resource_version = str((obj.get("metadata") or {}).get("resourceVersion") or resource_version)
            if kind in ("ADDED", "MODIFIED"):
                board.put(obj)
            elif kind == "DELETED":
                board.remove(_uid(obj))
    finally:
        response.close()
        response.release_conn()
    return resource_version


def _describe(error: BaseException) -> str:
    if isinstance(error, ApiException):
        return f"HTTP {error.status} {error.reason}"
    if isinstance(error, urllib3.exceptions.MaxRetryError) and error.reason is not None:
        return f"cannot reach the API server: {error.reason}"
    return f"{type(error).__name__}: {error}"


class Outcome(enum.Enum):
    DONE = "done"
    OUTDATED = "outdated"  # the pod is gone or is another pod now: expected, nothing to do
    FAILED = "failed"  # worth trying again


class Kubelet:
    """The scheduler and kubelet roles, one pod at a time, each pass derived from the pod as seen."""

    def __init__(
        self, core: client.CoreV1Api, board: PodBoard, served: ServedPods, targets: TargetsFile, node_name: str
    ) -> None:
        self._core = core
        self._board = board
        self._served = served
        self._targets = targets
        self._node_name = node_name
        self._lives: dict[str, ContainerLife] = {}
        self._reported: dict[str, set[AnnotationProblem]] = {}
        self._deletes_sent: set[str] = set()

    def run(self, stop: threading.Event) -> None:
        next_resync_s = time.time() + RESYNC_S
        written_generation = -1
        while not stop.is_set():
            for uid in self._board.take_due(max_wait_s=1.0):
                self._look_after(uid)
            if self._served.generation != written_generation:
                written_generation = self._served.generation
                self._write_targets()
            if time.time() >= next_resync_s:
                next_resync_s = time.time() + RESYNC_S
                self._board.all_due()

    def _write_targets(self) -> None:
        try:
            self._targets.write(self._served.labels())
        except OSError as error:
            log.error("cannot write the Prometheus targets file %s: %s", self._targets.path, error)

    def _look_after(self, uid: str) -> None:
        pod = self._board.get(uid)
        try:
            if pod is None:
                self._forget(uid)
            else:
                self._reconcile(uid, pod)
        except Exception:
            # A pod the simulator cannot make sense of must not stop it looking after the others.
            log.exception("looking after pod %s failed; trying again in %.0f s", _ref(pod or {}), RETRY_S * 5)
            self._board.due_at(uid, time.time() + RETRY_S * 5)

    def _forget(self, uid: str) -> None:
        self._lives.pop(uid, None)
        self._reported.pop(uid, None)
        self._deletes_sent.discard(uid)
        self._served.stop_serving(uid)

    def _reconcile(self, uid: str, pod: Pod) -> None:
        metadata, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        node_name = spec.get("nodeName")
        if not node_name:
            if not metadata.get("deletionTimestamp"):
                self._bind(uid, pod)
            return
        if node_name != self._node_name:
            return
        if metadata.get("deletionTimestamp"):
            self._served.stop_serving(uid)
            self._finish_deleting(uid, pod)
            return
        behaviour = self._behaviour(uid, pod)
        now_s = time.time()
        status = pod.get("status") or {}
        before = self._lives.get(uid) or life_from_status(status)
        life = advance(before or started(now_s), behaviour, now_s, restarts=spec.get("restartPolicy") != "Never")
        desired = pod_status(life, _containers(spec), pod_ip=pod_address(uid), host_ip=HOST_IP)
        if status_fingerprint(desired) != status_fingerprint(status):
            outcome = self._write_status(uid, pod, desired)
            if outcome is Outcome.OUTDATED:
                return
            if outcome is Outcome.FAILED:
                self._board.due_at(uid, now_s + RETRY_S)
                return
            _log_change(pod, before, life, self._node_name)
        self._lives[uid] = life
        if life.ready:
            self._served.serve(pod, life.since_s, behaviour.traffic, now_s)
        else:
            self._served.stop_serving(uid)
        due_s = next_change_s(life, behaviour)
        if due_s is not None:
            self._board.due_at(uid, due_s)

    def _behaviour(self, uid: str, pod: Pod) -> PodBehaviour:
        behaviour, problems = read_behaviour((pod.get("metadata") or {}).get("annotations"))
        reported = self._reported.setdefault(uid, set())
        for problem in problems:
            if problem not in reported:
                reported.add(problem)
                self._report(pod, problem)
        return behaviour

    def _report(self, pod: Pod, problem: AnnotationProblem) -> None:
        metadata = pod.get("metadata") or {}
        log.warning("%s: %s", _ref(pod), problem)
        now = datetime.now(UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{metadata.get('name')}.", namespace=metadata.get("namespace")),
            involved_object=client.V1ObjectReference(
                api_version="v1",
                kind="Pod",
                name=metadata.get("name"),
                namespace=metadata.get("namespace"),
                uid=metadata.get("uid"),
            ),
            reason="InvalidSimulatorAnnotation",
            message=str(problem),
            type="Warning",
            source=client.V1EventSource(component=COMPONENT, host=self._node_name),
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            reporting_component=COMPONENT,
            reporting_instance=self._node_name,
        )
        self._attempt(
            pod,
            "record an event about it",
            lambda: self._core.create_namespaced_event(
                str(metadata.get("namespace")), event, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S
            ),
        )

    def _bind(self, uid: str, pod: Pod) -> None:
        metadata = pod.get("metadata") or {}
        binding = client.V1Binding(
            metadata=client.V1ObjectMeta(name=metadata.get("name"), uid=uid),
            target=client.V1ObjectReference(api_version="v1", kind="Node", name=self._node_name),
        )
        # The server answers a binding with a Status, which the client fails to read as a V1Binding.
        outcome = self._attempt(
            pod,
            "bind it",
            lambda: self._core.create_namespaced_pod_binding(
                str(metadata.get("name")),
                str(metadata.get("namespace")),
                binding,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT_S,
            ),
        )
        if outcome is Outcome.DONE:
            log.info("%s: scheduled on %s", _ref(pod), self._node_name)
        elif outcome is Outcome.FAILED:
            self._board.due_at(uid, time.time() + RETRY_S)

    def _finish_deleting(self, uid: str, pod: Pod) -> None:
        if uid in self._deletes_sent:
            return
        metadata = pod.get("metadata") or {}
        # The uid precondition keeps a StatefulSet's replacement pod, which has the same name, safe.
        options = client.V1DeleteOptions(grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid))
        outcome = self._attempt(
            pod,
            "finish deleting it",
            lambda: self._core.delete_namespaced_pod(
                str(metadata.get("name")),
                str(metadata.get("namespace")),
                grace_period_seconds=0,
                body=options,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT_S,
            ),
        )
        if outcome is Outcome.FAILED:
            self._board.due_at(uid, time.time() + RETRY_S)
            return
        self._deletes_sent.add(uid)
        if outcome is Outcome.DONE:
            log.info("%s: deleted", _ref(pod))

    def _write_status(self, uid: str, pod: Pod, status: dict[str, Any]) -> Outcome:
        metadata = pod.get("metadata") or {}
        # The uid in the patch is a precondition: a pod recreated under the same name answers 409.
        patch = {"metadata": {"uid": uid}, "status": status}
        return self._attempt(
            pod,
            "write its status",
            lambda: self._core.patch_namespaced_pod_status(
                str(metadata.get("name")),
                str(metadata.get("namespace")),
                patch,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT_S,
            ),
        )

    def _attempt(self, pod: Pod, action: str, call: Callable[[], object]) -> Outcome:
        try:
            _discard(call())
        except ApiException as error:
            if error.status in (404, 409):
                log.debug("%s: could not %s: %s", _ref(pod), action, _describe(error))
                return Outcome.OUTDATED
            log.warning("%s: could not %s: %s", _ref(pod), action, _describe(error))
            return Outcome.FAILED
        except (urllib3.exceptions.HTTPError, OSError) as error:
            log.warning("%s: could not %s: %s", _ref(pod), action, _describe(error))
            return Outcome.FAILED
        return Outcome.DONE


def _containers(spec: Mapping[str, Any]) -> list[ContainerSpec]:
    return [
        ContainerSpec(name=str(container.get("name", "")), image=str(container.get("image", "")))
        for container in spec.get("containers") or ()
    ]


def _log_change(pod: Pod, before: ContainerLife | None, after: ContainerLife, node_name: str) -> None:
    if before is None:
        log.info("%s: started on %s", _ref(pod), node_name)
    elif (before.stage, before.restart_count) == (after.stage, after.restart_count):
        return
    if after.stage is Stage.READY:
        log.info("%s: Ready (restarts: %d)", _ref(pod), after.restart_count)
    elif after.stage is Stage.BACKING_OFF:
        log.info("%s: crashed; restart %d after back-off", _ref(pod), after.restart_count)
    elif after.stage is Stage.FAILED:
        log.info("%s: crashed; failed for good (restartPolicy Never)", _ref(pod))
    elif before is not None and before.ready:
        log.info("%s: no longer Ready", _ref(pod))


def _architecture() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def node_conditions(ready_since_s: float, now_s: float) -> list[dict[str, Any]]:
    """A healthy kubelet's node conditions, with a fresh heartbeat."""
    healthy = [
        ("MemoryPressure", "False", "KubeletHasSufficientMemory", "the simulator has sufficient memory"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure", "the simulator has no disk pressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID", "the simulator has sufficient PID"),
        ("Ready", "True", "KubeletReady", "the node simulator is posting ready status"),
    ]
    return [
        {
            "type": kind,
            "status": holds,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": timestamp(now_s),
            "lastTransitionTime": timestamp(ready_since_s),
        }
        for kind, holds, reason, message in healthy
    ]


def node_manifest(node_name: str, ready_since_s: float, now_s: float) -> dict[str, Any]:
    architecture = _architecture()
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node_name,
            "labels": {
                "kubernetes.io/hostname": node_name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": architecture,
                "node.ringmaster.dev/simulated": "true",
            },
        },
        "spec": {},
        "status": {
            "capacity": NODE_CAPACITY,
            "allocatable": NODE_CAPACITY,
            "conditions": node_conditions(ready_since_s, now_s),
            "addresses": [{"type": "InternalIP", "address": HOST_IP}, {"type": "Hostname", "address": node_name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "architecture": architecture,
                "bootID": "",
                "containerRuntimeVersion": "sim://1",
                "kernelVersion": platform.release(),
                "kubeProxyVersion": KUBELET_VERSION,
                "kubeletVersion": KUBELET_VERSION,
                "machineID": "",
                "operatingSystem": "linux",
                "osImage": "Ringmaster node simulator",
                "systemUUID": "",
            },
        },
    }


def keep_node_ready(core: client.CoreV1Api, node_name: str, health: Health, stop: threading.Event) -> None:
    """Register the Node (create it, or take over one left by an earlier run), then post its Ready
    heartbeat every HEARTBEAT_S; register it again if it is deleted."""
    ready_since_s = time.time()
    backoff = _Backoff()
    while not stop.is_set():
        now_s = time.time()
        try:
            if health.node_registered.is_set():
                heartbeat = {"status": {"conditions": node_conditions(ready_since_s, now_s)}}
                _discard(
                    core.patch_node_status(
                        node_name, heartbeat, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S
                    )
                )
            else:
                _register_node(core, node_manifest(node_name, ready_since_s, now_s))
                log.info("node %s registered and Ready", node_name)
                health.node_registered.set()
            backoff.reset()
            stop.wait(HEARTBEAT_S)
        except Exception as error:
            if isinstance(error, ApiException) and error.status == 404:
                health.node_registered.clear()
            wait_s = backoff.next_s()
            log.warning("keeping node %s Ready failed (%s); retrying in %.1f s", node_name, _describe(error), wait_s)
            stop.wait(wait_s)


def _register_node(core: client.CoreV1Api, manifest: dict[str, Any]) -> None:
    name = manifest["metadata"]["name"]
    try:
        _discard(
            core.create_node(
                client.V1Node.from_dict(manifest), _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S
            )
        )
        return
    except ApiException as error:
        if error.status != 409:
            raise
    # A Node from an earlier run: its status is only written through the status subresource.
    _discard(
        core.patch_node(
            name, {"metadata": manifest["metadata"]}, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S
        )
    )
    _discard(
        core.patch_node_status(
            name, {"status": manifest["status"]}, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S
        )
    )


@dataclass(frozen=True)
class Options:
    kubeconfig: Path
    metrics_port: int
    targets_file: Path
    node_name: str


def parse_options(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m rollout.localcluster.simulator",
        description="Play kubelet and scheduler for one simulated Node, and serve the simulated app's metrics.",
    )
    parser.add_argument("--kubeconfig", type=Path, required=True, help="kubeconfig of the API server to serve")
    parser.add_argument("--metrics-port", type=int, required=True, help="port on 127.0.0.1 for pod metrics")
    parser.add_argument("--targets-file", type=Path, required=True, help="Prometheus file_sd file to keep up to date")
    parser.add_argument("--node-name", default=DEFAULT_NODE_NAME, help="the Node to play (default %(default)s)")
    parsed = parser.parse_args(argv)
    return Options(parsed.kubeconfig, parsed.metrics_port, parsed.targets_file, parsed.node_name)


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # urllib3 warns of each retry; the simulator says once what failed and when it tries again.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    # Blocked before any thread starts, so every thread inherits the mask and only sigwait sees them.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        api_client = config.new_client_from_config(config_file=str(options.kubeconfig))
    except (ConfigException, OSError) as error:
        log.error("cannot use the kubeconfig %s: %s", options.kubeconfig, error)
        return 2
    served, health = ServedPods(), Health()
    try:
        server = ThreadingHTTPServer((HOST_IP, options.metrics_port), metrics_handler(served, health.unhealthy_because))
    except OSError as error:
        log.error("cannot serve metrics on %s:%d: %s", HOST_IP, options.metrics_port, error)
        return 2
    server.daemon_threads = True
    metrics_port = server.server_address[1]  # the port the system chose, when asked for port 0
    targets = TargetsFile(options.targets_file, f"{HOST_IP}:{metrics_port}")
    try:
        targets.write([])
    except OSError as error:
        log.error("cannot write the Prometheus targets file %s: %s", options.targets_file, error)
        return 2
    core = client.CoreV1Api(api_client)
    board = PodBoard()
    stop = threading.Event()
    kubelet = Kubelet(core, board, served, targets, options.node_name)
    for name, target in (
        ("metrics", server.serve_forever),
        ("node", lambda: keep_node_ready(core, options.node_name, health, stop)),
        ("watch", lambda: watch_pods(core, board, health, stop)),
        ("kubelet", lambda: kubelet.run(stop)),
    ):
        threading.Thread(target=target, name=name, daemon=True).start()
    log.info(
        "simulating node %s; pod metrics on http://%s:%d/pods/<namespace>/<pod>/metrics",
        options.node_name,
        HOST_IP,
        metrics_port,
    )
    received = signal.sigwait({signal.SIGTERM, signal.SIGINT})
    log.info("%s received; stopping", signal.Signals(received).name)
    stop.set()
    server.shutdown()
    try:
        targets.close()
    except OSError as error:
        log.error("cannot empty the Prometheus targets file %s: %s", options.targets_file, error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
