"""Stock OpenFeature providers against a running `serve` (uvicorn and gRPC on real ports), on SQLite and PostgreSQL.

The flagd provider in in-process mode follows the sync gRPC service, the OFREP provider asks the
OFREP routes; the SSE stream and flags.json are read over real HTTP, the way flagd's HTTP sync and
the Ringmaster provider read them.
"""

from __future__ import annotations

import json
import queue
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from openfeature import api as openfeature
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import EventDetails, ProviderEvent
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason
from openfeature.schemas.protobuf.flagd.sync.v1 import sync_pb2, sync_pb2_grpc

import rollout.api.flagd
from cohorts.assign import assign
from cohorts.cache import CompiledSetCache
from cohorts.rotation import epoch_at
from cohorts.store import CohortStore
from rollout.api.app import create_app
from rollout.settings import ServiceSettings
from tests.auth_helpers import authorized
from tests.test_cli import free_port

CHANGE_DEADLINE_S = 1.0
STAFF = EvaluationContext("ana", {"team": "staff"})


@dataclass
class Served:
    """A running `serve`: its HTTP base URL, its sync port and an HTTP client of it."""

    base_url: str
    sync_port: int
    http: httpx.Client
    app: FastAPI

    def create(self, flag: dict[str, Any]) -> None:
        response = self.http.post("/api/v1/flags", json=flag)
        assert response.status_code == 201, response.text


@dataclass
class Replica:
    server: uvicorn.Server
    thread: threading.Thread
    served: Served


def start_replica(database_url: str) -> Replica:
    app = create_app(ServiceSettings(database_url=database_url, sync_port=0))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    base_url = f"http://127.0.0.1:{port}"
    # Changing flags needs an admin token; the providers and EventReader here read without one, as apps do.
    http = httpx.Client(base_url=base_url, timeout=10, headers=authorized(database_url, f"replica-{port}"))
    served = Served(base_url, app.state.sync_port, http, app)
    return Replica(server, thread, served)


def stop_replica(replica: Replica) -> None:
    replica.served.http.close()
    replica.server.should_exit = True
    replica.thread.join(15)
    assert not replica.thread.is_alive(), "serve did not stop"


@pytest.fixture
def served(database_url: str) -> Iterator[Served]:
    replica = start_replica(database_url)
    try:
        yield replica.served
    finally:
        stop_replica(replica)


def checkout(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "key": "new-checkout",
        "type": "boolean",
        "variants": {"on": True, "off": False},
        "defaultVariant": "off",
        "targeting": {"rings": {"cohortSet": "default", "variants": {"canary": "on", "early-adopter": "on"},
                                "otherwise": "off"}},
        "flagSet": "web",
    }
    document.update(changes)
    return document


def typed_flags() -> list[dict[str, Any]]:
    return [
        {"key": "theme", "type": "string", "variants": {"dark": "dark", "light": "light"}, "defaultVariant": "light",
         "targeting": {"jsonLogic": {"if": [{"in": [{"$ref": "ring-default"}, ["canary"]]}, "dark", "light"]}},
         "flagSet": "mobile"},
        {"key": "page-size", "type": "integer", "variants": {"small": 10, "large": 50}, "defaultVariant": "small"},
        {"key": "discount", "type": "float", "variants": {"none": 0, "some": 0.15}, "defaultVariant": "some"},
        {"key": "limits", "type": "object", "variants": {"basic": {"requests": 100}}, "defaultVariant": "basic"},
    ]


@pytest.fixture
def domain() -> Iterator[str]:
    """An OpenFeature domain of this test's own; every provider is shut down afterwards."""
    yield f"test-{secrets.token_hex(4)}"
    openfeature.shutdown()


def in_process_provider(served: Served, **options: Any) -> FlagdProvider:
    return FlagdProvider(resolver_type=ResolverType.IN_PROCESS, host="127.0.0.1", port=served.sync_port,
                         deadline_ms=5000, **options)


def ring_of(served: Served, targeting_key: str) -> str:
    store: CohortStore = served.app.state.store
    compiled = CompiledSetCache(store).get("default")
    epoch = epoch_at(compiled.split.rotation if compiled.split else None, datetime.now(UTC))
    return assign(compiled, {"targetingKey": targeting_key}, epoch).ring


def test_the_stock_flagd_provider_in_process_mode_evaluates_ring_flags(served: Served, domain: str) -> None:
    served.create(checkout())
    for flag in typed_flags():
        served.create(flag)
    openfeature.set_provider_and_wait(in_process_provider(served), domain)
    client = openfeature.get_client(domain)

    staff = client.get_boolean_details("new-checkout", False, STAFF)
    assert (staff.value, staff.variant, staff.reason) == (True, "on", Reason.TARGETING_MATCH)
    assert staff.flag_metadata["flagSetId"] == "web" and staff.flag_metadata["cohortSet"] == "default"
    for number in range(50):
        key = f"user-{number}"
        expected = ring_of(served, key) in ("canary", "early-adopter")
        assert client.get_boolean_value("new-checkout", not expected, EvaluationContext(key)) is expected
    assert client.get_string_value("theme", "", STAFF) == "dark"
    assert client.get_integer_value("page-size", 0) == 10
    assert client.get_float_value("discount", 0.0) == 0.15
    assert client.get_object_value("limits", {}) == {"requests": 100}
    missing = client.get_boolean_details("no-such-flag", False, STAFF)
    assert missing.error_code == ErrorCode.FLAG_NOT_FOUND


def test_a_flag_change_reaches_the_stock_in_process_provider_within_a_second(served: Served, domain: str) -> None:
    served.create(checkout())
    openfeature.set_provider_and_wait(in_process_provider(served), domain)
    client = openfeature.get_client(domain)
    changes: queue.Queue[tuple[float, list[str]]] = queue.Queue()

    def on_change(details: EventDetails) -> None:
        changes.put((time.monotonic(), list(details.flags_changed or [])))

    client.add_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, on_change)
    started = time.monotonic()
    assert served.http.post("/api/v1/flags/new-checkout/disable").status_code == 200
    arrived, flags_changed = changes.get(timeout=5)
    while arrived < started:  # the provider's own event for the first document, if it came late
        arrived, flags_changed = changes.get(timeout=5)
    assert arrived - started < CHANGE_DEADLINE_S, f"the change took {arrived - started:.3f} s"
    assert flags_changed == ["new-checkout"]
    disabled = client.get_boolean_details("new-checkout", False, STAFF)
    assert (disabled.value, disabled.reason) == (False, Reason.DISABLED)


def test_a_provider_with_a_selector_sees_only_its_flag_set(served: Served, domain: str) -> None:
    served.create(checkout())
    served.create(typed_flags()[0])
    openfeature.set_provider_and_wait(in_process_provider(served, selector="flagSetId=mobile"), domain)
    client = openfeature.get_client(domain)
    assert client.get_string_value("theme", "", STAFF) == "dark"
    assert client.get_boolean_details("new-checkout", False, STAFF).error_code == ErrorCode.FLAG_NOT_FOUND


def sync_stub(served: Served) -> tuple[grpc.Channel, sync_pb2_grpc.FlagSyncServiceStub]:
    channel = grpc.insecure_channel(f"127.0.0.1:{served.sync_port}")
    return channel, sync_pb2_grpc.FlagSyncServiceStub(channel)


def test_sync_flags_sends_the_document_at_connect_and_only_changes_within_the_selected_set(served: Served) -> None:
    served.create(checkout())
    served.create(typed_flags()[0])
    channel, stub = sync_stub(served)
    with channel:
        stream = stub.SyncFlags(sync_pb2.SyncFlagsRequest(), metadata=(("flagd-selector", "flagSetId=mobile"),))
        first = json.loads(next(stream).flag_configuration)
        assert list(first["flags"]) == ["theme"] and set(first["$evaluators"]) == {"ring-default"}
        served.http.post("/api/v1/flags/new-checkout/disable")  # another flag set: nothing to send
        served.http.post("/api/v1/flags/theme/disable")
        second = json.loads(next(stream).flag_configuration)
        assert second["flags"]["theme"]["state"] == "DISABLED"
        stream.cancel()


def test_fetch_all_flags_answers_the_document_and_a_bad_selector_is_an_invalid_argument(served: Served) -> None:
    served.create(checkout())
    channel, stub = sync_stub(served)
    with channel:
        fetched = stub.FetchAllFlags(sync_pb2.FetchAllFlagsRequest(selector="flagSetId=web"))
        assert list(json.loads(fetched.flag_configuration)["flags"]) == ["new-checkout"]
        assert served.http.get("/flagd/v1/flags.json").text == stub.FetchAllFlags(
            sync_pb2.FetchAllFlagsRequest()).flag_configuration
        assert dict(stub.GetMetadata(sync_pb2.GetMetadataRequest()).metadata) == {}
        with pytest.raises(grpc.RpcError) as raised:
            next(stub.SyncFlags(sync_pb2.SyncFlagsRequest(selector="source=flags.json")))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "flagSetId=<flag set>" in (raised.value.details() or "")


class EventReader:
    """Server-sent events off a live stream, read on a thread so a test can wait with a deadline."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None) -> None:
        self.events: queue.Queue[dict[str, str]] = queue.Queue()
        self._client = httpx.Client(base_url=base_url, timeout=httpx.Timeout(10, read=60))
        self._response = self._client.send(self._client.build_request("GET", "/flagd/v1/stream", headers=headers),
                                           stream=True)
        self.headers = self._response.headers
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        fields: dict[str, str] = {}
        try:
            for line in self._response.iter_lines():
                if line == "":
                    self.events.put(fields)
                    fields = {}
                elif line.startswith(":"):
                    fields["comment"] = line[1:].strip()
                else:
                    name, _, value = line.partition(": ")
                    fields[name] = value
        except httpx.HTTPError:
            return  # the test closed the stream

    def next(self, timeout_s: float = 5.0) -> dict[str, str]:
        return self.events.get(timeout=timeout_s)

    def close(self) -> None:
        self._response.close()
        self._client.close()


def test_the_sse_stream_sends_the_document_then_each_change_with_its_etag(served: Served) -> None:
    served.create(checkout())
    reader = EventReader(served.base_url)
    try:
        assert reader.headers["content-type"].startswith("text/event-stream")
        first = reader.next()
        current = served.http.get("/flagd/v1/flags.json")
        assert (first["event"], first["id"], first["data"]) == ("configuration", current.headers["ETag"],
                                                                current.text)
        started = time.monotonic()
        served.http.post("/api/v1/flags/new-checkout/disable")
        second = reader.next()
        assert time.monotonic() - started < CHANGE_DEADLINE_S
        assert json.loads(second["data"])["flags"]["new-checkout"]["state"] == "DISABLED"
        assert second["id"] == served.http.get("/flagd/v1/flags.json").headers["ETag"] != first["id"]
    finally:
        reader.close()


def test_a_quiet_sse_stream_sends_keepalive_comments(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rollout.api.flagd, "KEEPALIVE_S", 0.2)
    reader = EventReader(served.base_url, headers={"Flagd-Selector": "flagSetId=web"})
    try:
        assert json.loads(reader.next()["data"])["flags"] == {}
        assert reader.next(timeout_s=2) == {"comment": "keepalive"}
    finally:
        reader.close()


def test_flags_json_answers_304_to_a_poller_holding_the_current_etag(served: Served) -> None:
    served.create(checkout())
    first = served.http.get("/flagd/v1/flags.json")
    assert served.http.get("/flagd/v1/flags.json", headers={"If-None-Match": first.headers["ETag"]}).status_code == 304
    served.http.post("/api/v1/flags/new-checkout/disable")
    assert served.http.get("/flagd/v1/flags.json", headers={"If-None-Match": first.headers["ETag"]}).status_code == 200


def test_the_stock_ofrep_provider_evaluates_every_type_with_reasons_and_errors(served: Served, domain: str) -> None:
    served.create(checkout())
    for flag in typed_flags():
        served.create(flag)
    openfeature.set_provider_and_wait(OFREPProvider(base_url=served.base_url), domain)
    client = openfeature.get_client(domain)
    staff = client.get_boolean_details("new-checkout", False, STAFF)
    assert (staff.value, staff.variant, staff.reason) == (True, "on", Reason.TARGETING_MATCH)
    assert staff.flag_metadata["flagSetId"] == "web"
    assert client.get_string_value("theme", "", STAFF) == "dark"
    bob = EvaluationContext("bob")
    assert client.get_integer_details("page-size", 0, bob).reason == Reason.STATIC
    assert client.get_integer_value("page-size", 0, bob) == 10
    assert client.get_float_value("discount", 0.0, bob) == 0.15
    assert client.get_object_value("limits", {}, bob) == {"requests": 100}
    missing = client.get_boolean_details("no-such-flag", True, STAFF)
    assert (missing.value, missing.error_code) == (True, ErrorCode.FLAG_NOT_FOUND)
    anonymous = client.get_boolean_details("new-checkout", True, EvaluationContext(None, {"team": "staff"}))
    assert (anonymous.value, anonymous.error_code) == (True, ErrorCode.TARGETING_KEY_MISSING)


def test_a_change_through_one_replica_reaches_a_stream_on_another_within_a_second(database_url: str) -> None:
    first, second = start_replica(database_url), start_replica(database_url)
    reader = EventReader(second.served.base_url)
    try:
        assert json.loads(reader.next()["data"])["flags"] == {}
        started = time.monotonic()
        first.served.create(checkout())
        arrived = json.loads(reader.next()["data"])
        assert time.monotonic() - started < CHANGE_DEADLINE_S
        assert list(arrived["flags"]) == ["new-checkout"]
    finally:
        reader.close()
        stop_replica(first)
        stop_replica(second)
