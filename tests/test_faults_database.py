"""The database going away and coming back, under `ringmaster serve` and `ringmaster controller` as real processes.

The database is PostgreSQL behind a TCP proxy (tests/tcp_proxy.py) that the test cuts (every connection dropped,
new ones refused) and restores, as a network partition or a failover looks to the processes using it. The
service keeps serving flags from the last good document and keeps its streams open, refuses a pull with a 503
that says what happens, reports itself not ready, and recovers by itself; the controller halts every rollout
(AndonStateUnknown), writes nothing, and goes on once the database answers.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from fastapi.testclient import TestClient
from kubernetes import client
from openfeature.schemas.protobuf.flagd.sync.v1 import sync_pb2, sync_pb2_grpc
from sqlalchemy.engine import make_url

from rollout.api.app import create_app
from rollout.controller.crd import install_crd
from rollout.controller.spec import GROUP, PLURAL, VERSION
from rollout.localcluster.cluster import LocalCluster
from rollout.settings import ServiceSettings
from tests.auth_helpers import bearer, create_token
from tests.controller_harness import (
    CANARY_RINGS,
    CapacitySampler,
    get_rollout,
    rollout,
    statefulset,
    wait_for,
    wait_ready,
)
from tests.controller_processes import ControllerProcess
from tests.polling import eventually
from tests.tcp_proxy import TcpProxy
from tests.test_api import assert_problem
from tests.test_cli import REPOSITORY, RINGMASTER, free_port, wait_until_serving
from tests.test_faults_controller import StatefulSetWrites
from tests.test_flag_serving import EventReader, checkout

STAFF = {"context": {"targetingKey": "ana", "team": "staff"}}
PULL = {"reason": "checkout errors up in eu-west", "scope": {}}

pytestmark = pytest.mark.postgres
on_postgres = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@contextmanager
def behind_a_proxy(database_url: str) -> Iterator[tuple[TcpProxy, str]]:
    """A proxy to the database, and the database's URL through it."""
    real = make_url(database_url)
    with TcpProxy(real.host or "127.0.0.1", real.port or 5432) as proxy:
        yield proxy, real.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)


@dataclass
class Serve:
    http: httpx.Client
    base_url: str
    sync_port: int


@contextmanager
def serving(database_url: str, log_path: Path) -> Iterator[Serve]:
    """`ringmaster serve` on free ports, on `database_url`, stopped afterwards."""
    port, sync_port = free_port(), free_port()
    environment = {**os.environ, "RINGMASTER_DATABASE_URL": database_url}
    with log_path.open("wb") as log:
        process = subprocess.Popen([*RINGMASTER, "serve", "--port", str(port), "--sync-port", str(sync_port)],
                                   env=environment, stdout=log, stderr=subprocess.STDOUT, cwd=REPOSITORY)
        try:
            wait_until_serving(process, port, log_path)
            base_url = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=base_url, timeout=10) as http:
                yield Serve(http, base_url, sync_port)
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class SyncStream:
    """flagd's SyncFlags stream, read on a thread: each flag document as it arrives."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.documents: queue.Queue[dict[str, Any]] = queue.Queue()
        self._responses = sync_pb2_grpc.FlagSyncServiceStub(self.channel).SyncFlags(sync_pb2.SyncFlagsRequest())
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for response in self._responses:
                self.documents.put(json.loads(response.flag_configuration))
        except grpc.RpcError:
            return  # cancelled by the test, or the stream broke: the test finds no further document

    def close(self) -> None:
        self._responses.cancel()
        self.channel.close()


def next_document_where(documents: queue.Queue[dict[str, Any]], wanted: Any, what: str,
                        timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            document = documents.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no document with {what} within {timeout_s} s") from None
        if wanted(document):
            return document


def sse_documents(reader: EventReader) -> queue.Queue[dict[str, Any]]:
    """The documents of a server-sent event stream, keepalives left out, as a queue."""
    documents: queue.Queue[dict[str, Any]] = queue.Queue()

    def forward() -> None:
        while True:
            event = reader.events.get()
            if "data" in event:
                documents.put(json.loads(event["data"]))

    threading.Thread(target=forward, daemon=True).start()
    return documents


def recorded(answer: httpx.Response) -> httpx.Response | None:
    return answer if answer.status_code == 201 else None


def checkout_state(document: dict[str, Any]) -> str | None:
    flag: dict[str, Any] = document.get("flags", {}).get("new-checkout", {})
    return flag.get("state")


@on_postgres
def test_with_the_database_cut_serve_keeps_serving_flags_refuses_pulls_with_503_and_recovers_by_itself(
        database_url: str, tmp_path: Path) -> None:
    admin = bearer(create_token(database_url, "ana", "admin"))
    # Never used before the cut, so the service must ask the database about it.
    puller = bearer(create_token(database_url, "paula", "puller"))
    with behind_a_proxy(database_url) as (proxy, through_proxy), \
            serving(through_proxy, tmp_path / "serve.log") as serve:
        http = serve.http
        assert http.post("/api/v1/flags", json=checkout(), headers=admin).status_code == 201
        document = http.get("/flagd/v1/flags.json")
        evaluated = http.post("/ofrep/v1/evaluate/flags/new-checkout", json=STAFF).json()
        assert (evaluated["value"], evaluated["variant"]) == (True, "on")
        reader = EventReader(serve.base_url)
        sync = SyncStream(serve.sync_port)
        try:
            streamed = sse_documents(reader)
            next_document_where(streamed, lambda doc: checkout_state(doc) == "ENABLED", "the flag on the SSE stream")
            next_document_where(sync.documents, lambda doc: checkout_state(doc) == "ENABLED", "the flag over gRPC")

            proxy.cut()
            not_ready = eventually(lambda: (answer := http.get("/readyz")).status_code == 503 and answer, 30,
                                   "/readyz to say not ready")
            reason = assert_problem(not_ready, 503)
            assert reason["title"] == "The database is unreachable" and "OperationalError" in reason["detail"]
            # Flags are served from the last good document, unchanged, by every protocol.
            again = http.get("/flagd/v1/flags.json")
            assert (again.status_code, again.text, again.headers["ETag"]) == (200, document.text,
                                                                              document.headers["ETag"])
            assert http.get("/flagd/v1/flags.json",
                            headers={"If-None-Match": document.headers["ETag"]}).status_code == 304
            assert http.post("/ofrep/v1/evaluate/flags/new-checkout", json=STAFF).json() == evaluated
            bulk = http.post("/ofrep/v1/evaluate/flags", json=STAFF)
            assert bulk.status_code == 200 and [flag["key"] for flag in bulk.json()["flags"]] == ["new-checkout"]
            # A pull cannot be recorded: 503, saying so and what happens meanwhile; a flag change neither.
            refused = assert_problem(http.post("/api/v1/andon/pull", json=PULL, headers=puller), 503)
            assert refused["type"].endswith("/database-unavailable"), refused
            assert "nothing was recorded" in refused["detail"] and "halts every rollout" in refused["detail"]
            assert_problem(http.get("/api/v1/andon"), 503)
            unchanged = assert_problem(http.post("/api/v1/flags/new-checkout/disable", headers=admin), 503)
            assert unchanged["type"].endswith("/database-unavailable"), unchanged
            streams = [line for line in http.get("/metrics").text.splitlines()
                       if line.startswith("ringmaster_flag_streams ")]
            assert streams == ["ringmaster_flag_streams 2.0"], "a flag stream closed with the database"

            proxy.restore()
            eventually(lambda: http.get("/readyz").status_code == 200, 30, "/readyz to say ready again")
            pulled = eventually(lambda: recorded(http.post("/api/v1/andon/pull", json=PULL, headers=puller)), 30,
                                "a pull to be recorded")
            assert http.get("/api/v1/andon").json()["active"][0]["id"] == pulled.json()["id"]
            eventually(lambda: http.post("/api/v1/flags/new-checkout/disable", headers=admin).status_code == 200, 30,
                       "a flag change to be accepted")
            # The streams opened before the outage carry the change made after it.
            next_document_where(streamed, lambda doc: checkout_state(doc) == "DISABLED", "the change on the SSE stream")
            next_document_where(sync.documents, lambda doc: checkout_state(doc) == "DISABLED", "the change over gRPC")
            assert http.get("/flagd/v1/flags.json").headers["ETag"] != document.headers["ETag"]
            assert http.post("/ofrep/v1/evaluate/flags/new-checkout", json=STAFF).json()["reason"] == "DISABLED"
        finally:
            reader.close()
            sync.close()


@on_postgres
def test_with_the_database_cut_a_pull_or_a_change_by_a_token_not_checked_yet_answers_503_not_500(
        database_url: str) -> None:
    puller = bearer(create_token(database_url, "paula", "puller"))
    admin = bearer(create_token(database_url, "ana", "admin"))
    with behind_a_proxy(database_url) as (proxy, through_proxy), \
            TestClient(create_app(ServiceSettings(database_url=through_proxy))) as api:
        proxy.cut()
        pull = assert_problem(api.post("/api/v1/andon/pull", json=PULL, headers=puller), 503)
        assert pull["type"].endswith("/database-unavailable")
        assert "nothing was recorded" in pull["detail"] and "halts every rollout" in pull["detail"]
        release = assert_problem(api.post("/api/v1/andon/release", json={"id": 1, "reason": "all clear"},
                                          headers=admin), 503)
        assert "nothing was recorded" in release["detail"]
        change = assert_problem(api.post("/api/v1/flags", json=checkout(), headers=admin), 503)
        assert change["type"].endswith("/database-unavailable") and "retry" in change["detail"].lower()
        proxy.restore()
        assert eventually(lambda: api.post("/api/v1/andon/pull", json=PULL, headers=puller).status_code == 201, 30,
                          "a pull once the database is back")


@on_postgres
def test_a_controller_that_loses_the_database_while_capacity_moves_halts_writes_nothing_and_goes_on(
        local_cluster: LocalCluster, namespace: str, database_url: str, tmp_path: Path) -> None:
    with behind_a_proxy(database_url) as (proxy, through_proxy), local_cluster.api_client() as api_client:
        install_crd(api_client)
        # Pods take 1.5 s to be ready, so the cut lands while the new side waits and the old is still up.
        client.AppsV1Api(api_client).create_namespaced_stateful_set(
            namespace, statefulset("web", 3, "registry.example.com/web:1.0.0", ready_delay="1500ms"))
        wait_ready(api_client, namespace, "web", 3)
        controller = ControllerProcess(local_cluster.kubeconfig, namespace, through_proxy, "cut", tmp_path)

        def status() -> dict[str, Any]:
            found: dict[str, Any] = get_rollout(api_client, namespace, "web").get("status") or {}
            return found

        try:
            with CapacitySampler(api_client, namespace) as sampler, StatefulSetWrites(api_client, namespace) as writes:
                client.CustomObjectsApi(api_client).create_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, rollout("web", "web", flag="web-v2"))
                new = wait_for("the new StatefulSet to be scaled up", lambda: (name := status().get("newStatefulSet"))
                               and sampler.samples and sampler.samples[-1].replicas.get(name, 0) > 0 and name, 90)
                proxy.cut()
                wait_for("Halted", lambda: status().get("phase") == "Halted", 30)
                halted_at = time.monotonic()
                halted = next(item for item in status()["conditions"] if item["type"] == "Halted")
                wait_for("3 s of a halted controller", lambda: time.monotonic() - halted_at > 3, 10)
                assert controller.alive(), controller.log()[-3000:]
                cut_until = time.monotonic()
                proxy.restore()
                done = wait_for("Succeeded", lambda: status().get("phase") == "Succeeded" and status(), 120)
            assert controller.terminate() == 0
        finally:
            if controller.alive():
                controller.kill()
    assert (halted["status"], halted["reason"]) == ("True", "AndonStateUnknown")
    assert "cannot be read" in halted["message"]
    assert len(writes.between(halted_at, cut_until)) == 1, "a StatefulSet was written while the cord was unreadable"
    assert [record["ring"] for record in done["history"]] == list(CANARY_RINGS)
    assert min(sampler.total_ready()) >= 3 and max(sampler.total_replicas()) <= 4
    assert sampler.max_replicas(new) <= 3
