"""What the controller's integration tests share: a sample StatefulSet, Rollouts, a capacity sampler.

The sampler reads both StatefulSets of a rollout every few milliseconds through the API server and
keeps every sample, so a test can assert the make-before-break invariant over the whole run.
"""

from __future__ import annotations

import secrets
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Self

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from sqlalchemy import Engine

from rollout.controller.controller import Controller, ControllerSettings
from rollout.controller.spec import GROUP, PLURAL, VERSION
from tests.polling import eventually

CANARY_RINGS = ("canary", "early-adopter", "stable", "laggard")


def statefulset(name: str, replicas: int, image: str, *, ready_delay: str = "200ms") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "serviceName": name, "replicas": replicas, "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name},
                             "annotations": {"sim.ringmaster.dev/ready-delay": ready_delay}},
                "spec": {"containers": [{"name": "app", "image": image}]},
            },
        },
    }


def rollout(name: str, target: str, *, flag: str, bakes: tuple[str, ...] = ("0s", "0s", "0s", "0s"),
            image: str | None = "registry.example.com/web:2.0.0", template: Mapping[str, Any] | None = None,
            ready_timeout: str = "2m", max_surge: int | str = 1, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "statefulSetName": target,
        "cohortSet": "default",
        "rings": [{"name": ring, "bake": bake} for ring, bake in zip(CANARY_RINGS, bakes, strict=True)],
        "flag": {"key": flag},
        "sizing": "configured",
        "scaling": {"maxSurge": max_surge, "readyTimeout": ready_timeout, "rollbackWindow": "1h"},
        **spec,
    }
    if template is not None:
        body["template"] = dict(template)
    else:
        body["image"] = image
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Rollout", "metadata": {"name": name}, "spec": body}


def wait_for(what: str, predicate: Callable[[], Any], timeout_s: float, poll_s: float = 0.1) -> Any:
    return eventually(predicate, timeout_s, what, poll_s)


def get_rollout(api_client: Any, namespace: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name)
    return found


def phase_of(api_client: Any, namespace: str, name: str) -> str | None:
    phase: str | None = (get_rollout(api_client, namespace, name).get("status") or {}).get("phase")
    return phase


def wait_ready(api_client: Any, namespace: str, name: str, replicas: int, timeout_s: float = 60) -> None:
    apps = client.AppsV1Api(api_client)
    wait_for(f"StatefulSet {name} to have {replicas} ready", lambda: (
        (apps.read_namespaced_stateful_set(name, namespace).status.ready_replicas or 0) == replicas), timeout_s)


@dataclass(frozen=True)
class Sample:
    at_s: float
    replicas: Mapping[str, int]
    ready: Mapping[str, int]


class Sampler(ABC):
    """Calls `read()` every `interval_s` on a thread of its own until stopped, keeping (time, reading);
    a reading of None (the read failed) is skipped."""

    def __init__(self, interval_s: float = 0.02) -> None:
        self.interval_s = interval_s
        self.readings: list[tuple[float, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @abstractmethod
    def read(self) -> Any:
        """One reading; None when there is nothing to keep this time."""

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            reading = self.read()
            if reading is not None:
                self.readings.append((time.monotonic(), reading))
            self._stop.wait(self.interval_s)


class CapacitySampler(Sampler):
    """Samples the spec and ready replicas of every StatefulSet in a namespace until stopped."""

    def __init__(self, api_client: Any, namespace: str, interval_s: float = 0.02) -> None:
        super().__init__(interval_s)
        self.apps = client.AppsV1Api(api_client)
        self.namespace = namespace

    def read(self) -> Sample | None:
        try:
            items = self.apps.list_namespaced_stateful_set(self.namespace, _request_timeout=5).items
        except (ApiException, OSError):
            return None
        return Sample(
            time.monotonic(),
            {item.metadata.name: item.spec.replicas or 0 for item in items},
            {item.metadata.name: item.status.ready_replicas or 0 for item in items},
        )

    @property
    def samples(self) -> list[Sample]:
        return [sample for _, sample in self.readings]

    def total_ready(self) -> list[int]:
        return [sum(sample.ready.values()) for sample in self.samples]

    def total_replicas(self) -> list[int]:
        return [sum(sample.replicas.values()) for sample in self.samples]

    def max_replicas(self, name: str) -> int:
        return max((sample.replicas.get(name, 0) for sample in self.samples), default=0)


@contextmanager
def controller_thread(api_client: Any, engine: Engine, namespace: str, **settings: Any) -> Iterator[Controller]:
    """A controller in this process on `namespace` (its Lease there too) until the block ends."""
    running = Controller(api_client, engine, ControllerSettings(
        namespace=namespace, identity=f"test-{secrets.token_hex(3)}", lease_namespace=namespace, **settings))
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    try:
        yield running
    finally:
        running.stop()
        thread.join(timeout=30)
