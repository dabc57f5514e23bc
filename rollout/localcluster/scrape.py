"""Where Prometheus scrapes the simulated application: the HTTP server and the file_sd targets file.

Every Ready pod answers at http://127.0.0.1:<port>/pods/<namespace>/<pod>/metrics with the counters
of `traffic`; any other pod gets a 404. The targets file lists exactly those pods, each with the labels
a gate's query selects on: namespace, pod, statefulset, revision (the StatefulSet's
controller-revision-hash) and version (the pod's app.kubernetes.io/version label, when it has one).
Nothing here talks to Kubernetes: the simulator's kubelet says which pods are Ready.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from rollout.localcluster.traffic import TrafficMeter, TrafficProfile, TrafficTotals, render

log = logging.getLogger("ringmaster.simulator")

STATEFULSET_REVISION_LABEL = "controller-revision-hash"
VERSION_LABEL = "app.kubernetes.io/version"

Pod = Mapping[str, Any]


@dataclass(frozen=True)
class ServedPod:
    """A Ready pod the simulated application answers for: the counters of its current Ready stretch
    and the labels Prometheus gives its series."""

    uid: str
    ready_since_s: float
    meter: TrafficMeter
    target_labels: Mapping[str, str]


def target_labels(pod: Pod) -> dict[str, str]:
    """The file_sd labels of a pod's target: where to scrape it, and what it is a part of."""
    metadata = pod.get("metadata") or {}
    namespace, name = str(metadata.get("namespace", "")), str(metadata.get("name", ""))
    labels = {"__metrics_path__": f"/pods/{namespace}/{name}/metrics", "namespace": namespace, "pod": name}
    owner = next((owner for owner in metadata.get("ownerReferences") or () if owner.get("kind") == "StatefulSet"), None)
    if owner is not None:
        labels["statefulset"] = str(owner.get("name", ""))
    pod_labels = metadata.get("labels") or {}
    if STATEFULSET_REVISION_LABEL in pod_labels:
        labels["revision"] = str(pod_labels[STATEFULSET_REVISION_LABEL])
    if VERSION_LABEL in pod_labels:
        labels["version"] = str(pod_labels[VERSION_LABEL])
    return labels


def target_groups(labels_by_pod: Iterable[Mapping[str, str]], address: str) -> list[dict[str, Any]]:
    """Prometheus file_sd target groups, one per pod, in a stable order."""
    ordered = sorted(labels_by_pod, key=lambda labels: (labels["namespace"], labels["pod"]))
    return [{"targets": [address], "labels": dict(labels)} for labels in ordered]


class ServedPods:
    """The Ready pods, by namespace and name, shared by the kubelet thread and the HTTP server.

    Counters count from when the pod last became Ready: a crash (or losing readiness) starts them
    from zero again, as a restarted process's would."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pods: dict[tuple[str, str], ServedPod] = {}
        self.generation = 0  # bumped whenever the set of targets or their labels change

    def serve(self, pod: Pod, ready_since_s: float, profile: TrafficProfile, now_s: float) -> None:
        """Answer for `pod`, Ready since `ready_since_s`, at `profile` from now on."""
        metadata = pod.get("metadata") or {}
        uid = str(metadata.get("uid"))
        labels = target_labels(pod)
        key = (labels["namespace"], labels["pod"])
        with self._lock:
            current = self._pods.get(key)
            if current is not None and current.uid == uid and current.ready_since_s == ready_since_s:
                meter = current.meter.with_profile(profile, now_s)
            else:
                meter = TrafficMeter(profile=profile, segment_start_s=ready_since_s)
            if current is None or current.target_labels != labels:
                self.generation += 1
            self._pods[key] = ServedPod(uid, ready_since_s, meter, labels)

    def stop_serving(self, uid: str) -> None:
        with self._lock:
            for key in [key for key, served in self._pods.items() if served.uid == uid]:
                del self._pods[key]
                self.generation += 1

    def totals(self, namespace: str, name: str, now_s: float) -> TrafficTotals | None:
        with self._lock:
            served = self._pods.get((namespace, name))
        return None if served is None else served.meter.totals_at(now_s)

    def labels(self) -> list[Mapping[str, str]]:
        with self._lock:
            return [served.target_labels for served in self._pods.values()]


class TargetsFile:
    """The Prometheus file_sd file, replaced atomically so Prometheus never reads half of it."""

    def __init__(self, path: Path, address: str) -> None:
        self.path = path
        self.address = address
        self._lock = threading.Lock()
        self._written: str | None = None
        self._closed = False

    def write(self, labels_by_pod: Iterable[Mapping[str, str]]) -> None:
        with self._lock:
            if not self._closed:
                self._replace(json.dumps(target_groups(labels_by_pod, self.address), indent=2) + "\n")

    def close(self) -> None:
        """List no targets, for good: nothing answers scrapes once the simulator has stopped."""
        with self._lock:
            self._replace("[]\n")
            self._closed = True

    def _replace(self, text: str) -> None:
        if text == self._written:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(descriptor, "w") as file:
                file.write(text)
            os.chmod(temporary, 0o644)
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        self._written = text


def metrics_handler(
    served: ServedPods, unhealthy_because: Callable[[], str | None] = lambda: None
) -> type[BaseHTTPRequestHandler]:
    """The simulated application's HTTP side: /pods/<namespace>/<pod>/metrics for Ready pods, and
    /healthz, which answers 503 with `unhealthy_because()` until that returns None."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = self.path.split("?", 1)[0].strip("/").split("/")
            if parts == ["healthz"]:
                problem = unhealthy_because()
                if problem is None:
                    self._answer(200, b"ok\n", "text/plain; charset=utf-8")
                else:
                    self._answer(503, f"{problem}\n".encode(), "text/plain; charset=utf-8")
                return
            if len(parts) == 4 and parts[0] == "pods" and parts[3] == "metrics":
                totals = served.totals(parts[1], parts[2], time.time())
                if totals is not None:
                    self._answer(200, render(totals), CONTENT_TYPE_PLAIN_0_0_4)
                    return
            self._answer(404, b"no Ready pod here\n", "text/plain; charset=utf-8")

        def _answer(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            # One line per scrape would drown the pod lifecycle in the log.
            log.debug("http: " + format, *args)

    return Handler
