"""Informers against the local control plane: what the controller can rely on seeing, and when.

Network trouble is made real with a TCP relay between the informer and the API server that a test can
cut and heal. Expired resourceVersions (410 Gone) are provoked on Events: the API server does not keep
them in its watch cache, so compacting etcd expires old versions at once (see test_kube_contract). Kinds
it does cache, like ConfigMaps, keep minutes of history there whatever etcd compacts, and resume instead.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from kubernetes import client

from rollout.controller.reactor import STATEFULSETS, Informer, ResourceKind
from rollout.localcluster.cluster import LocalCluster
from tests.fake_api import Answer, FakeApi, Received
from tests.polling import eventually

CONFIGMAPS = ResourceKind("", "v1", "configmaps")
EVENTS = ResourceKind("", "v1", "events")


class Recorder:
    """An on_change handler that remembers (event type, object name) in the order it was told."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[tuple[str, str]] = []

    def __call__(self, event_type: str, obj: dict[str, Any]) -> None:
        with self._lock:
            self._events.append((event_type, obj.get("metadata", {}).get("name", "")))

    @property
    def events(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._events)

    def types_for(self, name: str) -> list[str]:
        return [event_type for event_type, seen in self.events if seen == name]


class Partition:
    """A TCP relay in front of the API server; cut() drops every connection and refuses new ones until heal()."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._severed = False
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            self._severed = True
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
            self._connections.clear()

    def heal(self) -> None:
        with self._lock:
            self._severed = False

    def close(self) -> None:
        self._closed.set()
        self.cut()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                downstream, _ = self._listener.accept()
            except TimeoutError:
                continue
            with self._lock:
                if self._severed:
                    downstream.close()
                    continue
                upstream = socket.create_connection(self._upstream)
                self._connections |= {downstream, upstream}
            for source, sink in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()
        self._listener.close()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


@pytest.fixture(scope="module")
def api(local_cluster: LocalCluster) -> Iterator[client.ApiClient]:
    with local_cluster.api_client() as api_client:
        yield api_client


@pytest.fixture
def partition(api: client.ApiClient) -> Iterator[Partition]:
    server = urlsplit(api.configuration.host)
    assert server.hostname is not None and server.port is not None
    relay = Partition(server.hostname, server.port)
    yield relay
    relay.close()


@pytest.fixture
def api_through_partition(local_cluster: LocalCluster, partition: Partition) -> Iterator[client.ApiClient]:
    """An ApiClient whose every request goes through the partition (the server's certificate is for 127.0.0.1)."""
    with local_cluster.api_client() as api_client:
        # The kubeconfig loader's token-refresh hook rewrites the host before every request; the token is static.
        api_client.configuration.refresh_api_key_hook = None
        api_client.configuration.host = f"https://127.0.0.1:{partition.port}"
        yield api_client


@contextlib.contextmanager
def running(informer: Informer) -> Iterator[Informer]:
    """The informer started and synced, and stopped afterwards."""
    informer.start()
    try:
        assert informer.wait_synced(30), "the informer never listed"
        yield informer
    finally:
        informer.stop()


def make_configmap(api: client.ApiClient, namespace: str, name: str, **labels: str) -> None:
    client.CoreV1Api(api).create_namespaced_config_map(
        namespace, {"metadata": {"name": name, "labels": labels}, "data": {"ring": "canary"}}
    )


def set_ring(api: client.ApiClient, namespace: str, name: str, ring: str) -> None:
    client.CoreV1Api(api).patch_namespaced_config_map(name, namespace, {"data": {"ring": ring}})


def delete_configmap(api: client.ApiClient, namespace: str, name: str) -> None:
    client.CoreV1Api(api).delete_namespaced_config_map(name, namespace)


def make_event(api: client.ApiClient, namespace: str, name: str) -> None:
    client.CoreV1Api(api).create_namespaced_event(namespace, {
        "metadata": {"name": name}, "reason": "Tested", "message": name,
        "involvedObject": {"kind": "Pod", "name": "web-0", "namespace": namespace},
    })


def make_statefulset(api: client.ApiClient, namespace: str, name: str) -> None:
    labels = {"app": name}
    client.AppsV1Api(api).create_namespaced_stateful_set(namespace, {
        "metadata": {"name": name},
        "spec": {
            # No replicas: the test needs the object, not pods.
            "replicas": 0, "serviceName": name, "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels},
                         "spec": {"containers": [{"name": "app", "image": "example/web:1.0"}]}},
        },
    })


def cached_names(informer: Informer, namespace: str) -> list[str]:
    return [obj["metadata"]["name"] for obj in informer.list(namespace)]


def cached_ring(informer: Informer, namespace: str, name: str) -> str | None:
    cached = informer.get(namespace, name)
    return None if cached is None else str(cached["data"]["ring"])


def await_next_watch(informer: Informer) -> None:
    watches = informer.stats.watches
    eventually(lambda: informer.stats.watches > watches, what="the informer starting a new watch")


def test_the_first_list_fills_the_cache_reports_every_object_and_marks_the_informer_synced(
    api: client.ApiClient, namespace: str
) -> None:
    make_statefulset(api, namespace, "web-blue")
    make_statefulset(api, namespace, "web-green")
    recorder = Recorder()
    informer = Informer(api, STATEFULSETS, recorder, namespace=namespace)
    with running(informer):
        assert informer.wait_synced(0)
        assert cached_names(informer, namespace) == ["web-blue", "web-green"]
        blue = informer.get(namespace, "web-blue")
        assert blue is not None
        # Listed objects come without kind and apiVersion from the server; the cache has them like watched ones.
        assert (blue["kind"], blue["apiVersion"], blue["spec"]["replicas"]) == ("StatefulSet", "apps/v1", 0)
        assert informer.get(namespace, "web-red") is None
        assert informer.list("some-other-namespace") == []
        # The StatefulSet controller may still be writing their status; the list reported each once.
        assert sorted(event for event in recorder.events if event[0] == "SYNC") == [
            ("SYNC", "web-blue"), ("SYNC", "web-green")]
        assert informer.stats.lists == 1


def test_wait_synced_is_false_until_the_first_list_succeeds(
    api_through_partition: client.ApiClient, partition: Partition, namespace: str
) -> None:
    partition.cut()
    informer = Informer(api_through_partition, CONFIGMAPS, Recorder(), namespace=namespace)
    informer.start()
    try:
        assert not informer.wait_synced(0.5)
        eventually(lambda: informer.stats.errors >= 2, what="the informer retrying the unreachable server")
        assert informer.running, "errors must not end the informer"
        partition.heal()
        assert informer.wait_synced(30)
    finally:
        informer.stop()


def test_creates_updates_and_deletes_reach_the_cache_before_the_handler(
    api: client.ApiClient, namespace: str
) -> None:
    seen: list[tuple[str, str, bool]] = []
    informer: Informer

    def handler(event_type: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        cached = informer.get(namespace, name)
        if event_type == "DELETED":
            cache_is_current = cached is None
        else:
            cache_is_current = cached is not None and cached["data"] == obj["data"]
        seen.append((event_type, name, cache_is_current))

    informer = Informer(api, CONFIGMAPS, handler, namespace=namespace)
    with running(informer):
        make_configmap(api, namespace, "web")
        set_ring(api, namespace, "web", "stable")
        eventually(lambda: cached_ring(informer, namespace, "web") == "stable", what="the cache showing the update")
        delete_configmap(api, namespace, "web")
        eventually(lambda: informer.get(namespace, "web") is None, what="the cache dropping the deleted object")
        eventually(lambda: len(seen) == 3, what="the handler hearing of all three changes")
    assert seen == [("ADDED", "web", True), ("MODIFIED", "web", True), ("DELETED", "web", True)]


def test_a_label_selector_limits_what_is_cached_and_reported(api: client.ApiClient, namespace: str) -> None:
    make_configmap(api, namespace, "canary-before", ring="canary")
    make_configmap(api, namespace, "unlabelled-before")
    recorder = Recorder()
    informer = Informer(api, CONFIGMAPS, recorder, namespace=namespace, label_selector="ring=canary")
    with running(informer):
        make_configmap(api, namespace, "unlabelled-after")
        make_configmap(api, namespace, "canary-after", ring="canary")
        eventually(lambda: informer.get(namespace, "canary-after"), what="the new canary being cached")
        assert cached_names(informer, namespace) == ["canary-after", "canary-before"]
    assert {name for _, name in recorder.events} == {"canary-before", "canary-after"}


def test_watches_the_server_ends_are_resumed_without_losing_or_repeating_events(
    api: client.ApiClient, namespace: str
) -> None:
    recorder = Recorder()
    informer = Informer(api, CONFIGMAPS, recorder, namespace=namespace, watch_timeout_s=1, request_timeout_s=10)
    names = [f"ring-{index}" for index in range(5)]
    with running(informer):
        for name in names:
            # Each change lands just after the server ended a watch and the informer started the next.
            await_next_watch(informer)
            make_configmap(api, namespace, name)
        eventually(lambda: cached_names(informer, namespace) == names, what="every configmap being cached")
    assert recorder.events == [("ADDED", name) for name in names]
    assert informer.stats.lists == 1, "a watch the server ended is resumed, not relisted"
    assert informer.stats.watches >= len(names) + 1
    assert informer.stats.errors == 0


def test_bookmarks_advance_the_watch_but_never_reach_the_handler(api: client.ApiClient, namespace: str) -> None:
    make_configmap(api, namespace, "web")
    recorder = Recorder()
    # The 1.20 server sends a bookmark 2 s before a watch's deadline, if the kind changed during the watch.
    informer = Informer(api, CONFIGMAPS, recorder, namespace=namespace, watch_timeout_s=3, request_timeout_s=10)
    with running(informer):
        changes = 0

        def bookmarked() -> bool:
            nonlocal changes
            changes += 1
            set_ring(api, namespace, "web", f"ring-{changes}")
            return informer.stats.bookmarks >= 1

        eventually(bookmarked, what="a bookmark arriving")
        eventually(lambda: recorder.types_for("web").count("MODIFIED") == changes, what="every update being seen")
    assert {event_type for event_type, _ in recorder.events} == {"SYNC", "MODIFIED"}
    assert informer.stats.lists == 1


def test_after_a_partition_a_watch_resumes_from_its_resource_version_and_catches_up(
    api: client.ApiClient, api_through_partition: client.ApiClient, partition: Partition, namespace: str
) -> None:
    make_configmap(api, namespace, "kept")
    make_configmap(api, namespace, "doomed")
    recorder = Recorder()
    informer = Informer(api_through_partition, CONFIGMAPS, recorder, namespace=namespace)
    with running(informer):
        partition.cut()
        eventually(lambda: informer.stats.errors >= 1, what="the informer noticing the partition")
        set_ring(api, namespace, "kept", "stable")
        delete_configmap(api, namespace, "doomed")
        make_configmap(api, namespace, "born")
        partition.heal()
        eventually(lambda: cached_names(informer, namespace) == ["born", "kept"], what="the cache catching up")
        assert cached_ring(informer, namespace, "kept") == "stable"
        eventually(lambda: recorder.types_for("doomed") == ["SYNC", "DELETED"], what="the deletion being reported")
    assert informer.stats.lists == 1, "the server still had the missed changes, so no relist was needed"


def test_an_expired_resource_version_relists_and_reports_what_was_deleted_meanwhile(
    local_cluster: LocalCluster,
    api: client.ApiClient,
    api_through_partition: client.ApiClient,
    partition: Partition,
    namespace: str,
) -> None:
    make_event(api, namespace, "kept")
    make_event(api, namespace, "doomed")
    recorder = Recorder()
    informer = Informer(api_through_partition, EVENTS, recorder, namespace=namespace)
    with running(informer):
        assert cached_names(informer, namespace) == ["doomed", "kept"]
        partition.cut()
        eventually(lambda: informer.stats.errors >= 1, what="the informer noticing the partition")
        client.CoreV1Api(api).delete_namespaced_event("doomed", namespace)
        make_event(api, namespace, "born")
        # Two writes since the informer's resourceVersion, then compaction: resuming from it gets 410 Gone.
        local_cluster.compact_etcd()
        partition.heal()
        eventually(lambda: informer.stats.relists_after_gone >= 1, what="a relist after 410 Gone")
        assert cached_names(informer, namespace) == ["born", "kept"]
        eventually(lambda: recorder.types_for("doomed") == ["SYNC", "DELETED"], what="the deletion being reported")
        assert recorder.types_for("born") == ["SYNC"]
        assert informer.stats.lists == 2
        # The informer watches on from the new list: later changes arrive as events.
        make_event(api, namespace, "after")
        eventually(lambda: recorder.types_for("after") == ["ADDED"], what="a change after the relist")


def test_resync_reports_every_cached_object_again_without_relisting(api: client.ApiClient, namespace: str) -> None:
    make_configmap(api, namespace, "web")
    make_configmap(api, namespace, "api")
    recorder = Recorder()
    informer = Informer(api, CONFIGMAPS, recorder, namespace=namespace, resync_s=0.2)
    with running(informer):
        eventually(lambda: all(recorder.types_for(name).count("SYNC") >= 3 for name in ("web", "api")),
                   what="two resyncs after the list")
    assert informer.stats.lists == 1


def test_a_failing_handler_does_not_stop_the_informer(api: client.ApiClient, namespace: str) -> None:
    recorder = Recorder()

    def handler(event_type: str, obj: dict[str, Any]) -> None:
        recorder(event_type, obj)
        if obj["metadata"]["name"] == "poison":
            raise RuntimeError("a bug in the handler")

    informer = Informer(api, CONFIGMAPS, handler, namespace=namespace)
    with running(informer):
        make_configmap(api, namespace, "poison")
        make_configmap(api, namespace, "after")
        eventually(lambda: recorder.types_for("after") == ["ADDED"], what="the change after the failure")
        assert cached_names(informer, namespace) == ["after", "poison"]
    assert (informer.stats.lists, informer.stats.errors) == (1, 0)


def test_stop_ends_an_idle_watch_promptly(api: client.ApiClient, namespace: str) -> None:
    recorder = Recorder()
    informer = Informer(api, CONFIGMAPS, recorder, namespace=namespace)
    informer.start()
    assert informer.wait_synced(30)
    make_configmap(api, namespace, "web")
    # Once the watch delivered an event it is established, and blocked reading a stream that stays silent.
    eventually(lambda: recorder.types_for("web") == ["ADDED"], what="the watch delivering an event")
    started_s = time.monotonic()
    informer.stop()
    assert time.monotonic() - started_s < 2
    assert not informer.running


def test_a_client_timeout_shorter_than_the_watch_is_refused() -> None:
    with pytest.raises(ValueError, match="must be longer than watch_timeout_s"):
        Informer(None, CONFIGMAPS, Recorder(), watch_timeout_s=300, request_timeout_s=60)


def test_a_server_that_expires_every_watch_is_listed_again_with_backoff_not_in_a_tight_loop() -> None:
    expired = {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                           "reason": "Expired", "message": "too old resource version", "code": 410}}

    def answer(request: Received) -> Answer:
        if request.watch:
            return Answer(200, [expired])
        return Answer(200, {"kind": "ConfigMapList", "apiVersion": "v1", "metadata": {"resourceVersion": "7"},
                            "items": []})

    with FakeApi(answer) as fake, fake.api_client() as api_client:
        informer = Informer(api_client, CONFIGMAPS, Recorder(), namespace="prod")
        with running(informer):
            time.sleep(2.5)
    lists = [request for request in fake.received if not request.watch]
    # The first 410 relists at once, the next ones wait 0.25-0.5 s, 0.5-1 s, 1-2 s: at most 5 lists in 2.5 s,
    # where listing again at once every time made hundreds.
    assert 3 <= len(lists) <= 6, f"{len(lists)} lists in 2.5 s"
    assert informer.stats.relists_after_gone >= 2
