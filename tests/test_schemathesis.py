"""Schemathesis against /openapi.json: every operation of `ringmaster serve`, sent generated requests (valid and
invalid) over real HTTP with an admin token, on SQLite. No answer is a server error, and each is a status, a
content type and a body the document declares (schemathesis' not_a_server_error, status_code_conformance,
content_type_conformance and response_schema_conformance).

Two services: one with no Kubernetes, whose rollout routes must answer the documented 503
(`kubernetes-not-configured`); and one on the local control plane, whose rollout routes read and patch real
Rollouts. Examples are bounded and derandomized, so a run is reproducible and takes about a minute.

Every failure these tests found was a bug in the service; the regression test of each is beside its fix.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kubernetes import client
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.schemas import APIOperation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cohorts.db import upgrade
from rollout.api.app import create_app
from rollout.controller.crd import install_crd
from rollout.controller.spec import GROUP, PLURAL, VERSION
from rollout.localcluster.cluster import LocalCluster
from rollout.settings import ServiceSettings
from tests.auth_helpers import bearer, create_token
from tests.controller_harness import rollout
from tests.test_cli import REPOSITORY, RINGMASTER, free_port, wait_until_serving
from tests.test_cli_output import baking_early_adopter

Operation = APIOperation[Any, Any, Any, Any]
GeneratedCase = Case[Operation]
EXAMPLES_PER_MODE = 12
ROLLOUT_EXAMPLES_PER_MODE = 20
FLAG_KEY = "new-checkout"
CONFORMANCE = [status_code_conformance, content_type_conformance, response_schema_conformance]
# What the generated requests may change or point at, beside the random values schemathesis makes.
SERVICE_ENVIRONMENT = {
    # Slack configured, so /slack/events checks signatures (nothing generated is signed, so nothing reaches Slack).
    "RINGMASTER_SLACK_SIGNING_SECRET": "signing-secret-of-the-schemathesis-run",
    "RINGMASTER_SLACK_BOT_TOKEN": "xoxb-never-used",
    "RINGMASTER_SLACK_API_URL": "http://127.0.0.1:9/api/",
}
# Which environment variables would make `serve` find a Kubernetes other than the one a test means.
KUBERNETES_VARIABLES = ("KUBECONFIG", "RINGMASTER_KUBECONFIG", "KUBERNETES_SERVICE_HOST", "RINGMASTER_DATABASE_URL")

# The document as `ringmaster serve` serves it; building the app touches no database.
SCHEMA = schemathesis.openapi.from_dict(
    create_app(ServiceSettings(database_url="sqlite://")).openapi(),
    # The flag stream sends the document at once, then only a keepalive every 15 s: its first event is the answer.
    config=schemathesis.Config.from_dict({"max-stream-events": 1, "request-timeout": 20}))
OPERATIONS: list[Operation] = [result.ok() for result in SCHEMA.get_all_operations()]  # type: ignore[union-attr]
ROLLOUT_OPERATIONS = [operation for operation in OPERATIONS if operation.path.startswith("/api/v1/rollouts")]
UNCONSTRAINED = ({"type": "string"}, {"anyOf": [{"type": "string"}, {"type": "null"}]})


def can_be_invalid(operation: Operation) -> bool:
    """Whether a request to `operation` can be invalid: a body, or a parameter some value of which is refused."""
    definition = operation.definition.raw
    return "requestBody" in definition or any(
        {key: value for key, value in parameter.get("schema", {}).items() if key not in ("title", "description")}
        not in UNCONSTRAINED for parameter in definition.get("parameters", []))


CASES = [(operation, mode) for operation in OPERATIONS for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
         if mode is GenerationMode.POSITIVE or can_be_invalid(operation)]


@dataclass(frozen=True)
class Service:
    """A running `ringmaster serve`: its address and an admin's headers."""

    url: str
    headers: dict[str, str]


@contextmanager
def serving(data_dir: Path, **environment: str) -> Iterator[Service]:
    """`ringmaster serve` as its own process on a fresh SQLite database in `data_dir`."""
    database_url = f"sqlite:///{data_dir / 'ringmaster.db'}"
    upgrade(database_url)
    headers = bearer(create_token(database_url))
    port = free_port()
    inherited = {name: value for name, value in os.environ.items() if name not in KUBERNETES_VARIABLES}
    # The data folder is the test's own, so no local control plane is found there unless a test names one.
    variables = {**inherited, **SERVICE_ENVIRONMENT, "RINGMASTER_DATA_DIR": str(data_dir), **environment}
    log_path = data_dir / "serve.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([*RINGMASTER, "serve", "--port", str(port), "--sync-port", "0"], env=variables,
                                   stdout=log, stderr=subprocess.STDOUT, cwd=REPOSITORY)
        try:
            wait_until_serving(process, port, log_path)
            service = Service(f"http://127.0.0.1:{port}", headers)
            created = httpx.post(f"{service.url}/api/v1/flags", headers=headers, json={
                "key": FLAG_KEY, "type": "boolean", "variants": {"on": True, "off": False}, "defaultVariant": "off",
                "targeting": {"rings": {"cohortSet": "default", "variants": {"canary": "on"}, "otherwise": "off"}}})
            assert created.status_code == 201, created.text
            yield service
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def path_names(operation: Operation) -> list[str]:
    return re.findall(r"{(\w+)}", operation.path)


def requests_for(operation: Operation, mode: GenerationMode,
                 known: Mapping[str, str]) -> st.SearchStrategy[GeneratedCase]:
    """Generated requests, half of them at path parameters that name something that exists."""
    generated = operation.as_strategy(generation_mode=mode)
    fixed = {name: known[name] for name in path_names(operation) if name in known}
    if not fixed:
        return generated
    return st.one_of(generated, operation.as_strategy(generation_mode=mode, path_parameters=fixed))


def fuzz(operation: Operation, mode: GenerationMode, service: Service, known: Mapping[str, str],
         examples: int, *, kubernetes: bool) -> Counter[int]:
    """Send `examples` generated requests; each answer must pass the checks (a 503 saying Kubernetes is not
    configured is the documented answer of the rollout routes when it is not). The statuses answered."""
    statuses: Counter[int] = Counter()

    @given(case=requests_for(operation, mode, known))
    @settings(max_examples=examples, derandomize=True, database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate, Phase.shrink],
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
    def answers_as_documented(case: GeneratedCase) -> None:
        response = case.call(base_url=service.url, headers=service.headers)
        statuses[response.status_code] += 1
        if not kubernetes and operation in ROLLOUT_OPERATIONS and response.status_code == 503:
            assert response.json()["type"] == "https://ringmaster.dev/problems/kubernetes-not-configured"
            case.validate_response(response, checks=CONFORMANCE, headers=service.headers)
        else:
            case.validate_response(response, checks=[not_a_server_error, *CONFORMANCE], headers=service.headers)

    answers_as_documented()
    return statuses


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """`ringmaster serve` without Kubernetes (and Slack configured), with the flag FLAG_KEY."""
    with serving(tmp_path_factory.mktemp("schemathesis")) as running:
        yield running


@pytest.mark.parametrize(("operation", "mode"), CASES, ids=[f"{operation.label} {mode}" for operation, mode in CASES])
def test_every_operation_answers_as_documented_and_never_with_a_server_error(
        operation: Operation, mode: GenerationMode, service: Service) -> None:
    known = {"name": "default", "key": FLAG_KEY, "targetingKey": "ana"}
    fuzz(operation, mode, service, known, EXAMPLES_PER_MODE, kubernetes=False)


@dataclass(frozen=True)
class Cluster:
    service: Service
    namespace: str


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, local_cluster: LocalCluster) -> Iterator[Cluster]:
    """`ringmaster serve` on the local control plane, and a namespace with a Rollout baking its second ring and
    one the controller has not seen yet."""
    namespace = f"t-{secrets.token_hex(4)}"
    with local_cluster.api_client() as kube:
        install_crd(kube)
        core = client.CoreV1Api(kube)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
            name=namespace, labels={"ringmaster.dev/test": "true"})))
        rollouts = client.CustomObjectsApi(kube)
        created = rollouts.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                           rollout("web", "web", flag="web-v2"))
        rollouts.replace_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, "web", {**created, "status": baking_early_adopter().to_wire()})
        rollouts.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                 rollout("api", "api", flag="api-v2"))
        try:
            with serving(tmp_path_factory.mktemp("schemathesis-kube"),
                         RINGMASTER_KUBECONFIG=str(local_cluster.kubeconfig)) as running:
                yield Cluster(running, namespace)
        finally:
            core.delete_namespace(namespace)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
@pytest.mark.parametrize("operation", ROLLOUT_OPERATIONS, ids=lambda operation: operation.label)
def test_rollout_routes_on_a_real_control_plane_answer_as_documented(
        operation: Operation, mode: GenerationMode, cluster: Cluster) -> None:
    known = {"namespace": cluster.namespace, "name": "web"}
    statuses = fuzz(operation, mode, cluster.service, known, ROLLOUT_EXAMPLES_PER_MODE, kubernetes=True)
    if mode is GenerationMode.POSITIVE:  # the Rollouts were read (or acted on) for real, not only missed
        assert any(200 <= status < 300 for status in statuses), statuses


# What these runs found, each pinned on its own against the app in-process


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    database_url = f"sqlite:///{tmp_path / 'ringmaster.db'}"
    upgrade(database_url)
    with TestClient(create_app(ServiceSettings(database_url=database_url)),
                    headers=bearer(create_token(database_url))) as client:
        yield client


BEYOND_ANY_ROW = [2**31, 2**63, 10**30]


@pytest.mark.parametrize("number", BEYOND_ANY_ROW)
@pytest.mark.parametrize(("method", "path", "body", "field"), [
    ("GET", "/api/v1/cohort-sets/default?version={n}", None, "version"),
    ("GET", "/api/v1/cohort-sets/default/flagd?version={n}", None, "version"),
    ("GET", "/api/v1/cohort-sets/default/estimate?version={n}", None, "version"),
    ("GET", "/api/v1/cohort-sets/default/explain?targetingKey=ana&version={n}", None, "version"),
    ("GET", "/api/v1/flags/new-checkout?version={n}", None, "version"),
    ("POST", "/api/v1/andon/release", {"id": "{n}", "reason": "checkout is fine again"}, "id"),
    ("POST", "/api/v1/flags", {"key": "pinned", "type": "boolean", "variants": {"on": True, "off": False},
                               "targeting": {"rings": {"cohortSet": "default", "version": "{n}"}}},
     "targeting.rings.version"),
])
def test_a_version_or_id_past_what_the_database_holds_is_refused_naming_it(
        api: TestClient, method: str, path: str, body: dict[str, Any] | None, field: str, number: int) -> None:
    """It was a 500: SQLite cannot bind an integer past 64 bits (PostgreSQL's Integer columns stop at 31)."""
    content = None if body is None else json.dumps(body).replace('"{n}"', str(number))

    response = api.request(method, path.replace("{n}", str(number)), content=content,
                           headers={"Content-Type": "application/json"})

    assert response.status_code == 422 and response.headers["content-type"] == "application/problem+json"
    assert field in [error["field"] for error in response.json()["errors"]], response.json()


@pytest.mark.parametrize("if_match", ['"²"'.encode("latin-1"), ('"' + "1" * 5000 + '"').encode()])
def test_an_if_match_that_is_not_a_version_in_ascii_digits_is_a_400_naming_the_header(
        api: TestClient, if_match: bytes) -> None:
    """It was a 500: str.isdigit() takes '²', which int() refuses, and int() refuses 5,000 digits."""
    created = api.post("/api/v1/flags", json={"key": "banner", "type": "boolean", "variants": {"on": True}})
    assert created.status_code == 201

    response = api.post("/api/v1/flags/banner/disable", headers={"If-Match": if_match})

    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "If-Match"
    assert api.get("/api/v1/flags/banner").json()["version"] == 1


def test_the_document_declares_every_error_as_a_problem_and_fastapis_own_422_nowhere() -> None:
    document = create_app(ServiceSettings(database_url="sqlite://")).openapi()

    assert "HTTPValidationError" not in json.dumps(document)
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status[0] in "45" and not path.startswith("/ofrep/"):
                    assert list(response["content"]) == ["application/problem+json"], (method, path, status)
            if operation.get("security"):
                assert {"401", "429"} <= set(operation["responses"]), (method, path)
            if method in ("post", "put", "patch", "delete") and path.startswith("/api/v1/"):
                assert "403" in operation["responses"], (method, path)


@pytest.mark.parametrize(("method", "path", "field"), [
    ("GET", "/api/v1/rollouts/shop/web%25x", "name"),
    ("GET", "/api/v1/rollouts/shop/web%25x/gates", "name"),
    ("POST", "/api/v1/rollouts/shop/-web/pause", "name"),
    ("GET", "/api/v1/rollouts/sh%25op/web", "namespace"),
    ("GET", "/api/v1/rollouts/%C3%A9t%C3%A9/web", "namespace"),
    ("GET", "/api/v1/rollouts?namespace=Shop", "namespace"),
])
def test_a_rollout_path_that_names_no_kubernetes_object_is_refused_naming_it(
        api: TestClient, method: str, path: str, field: str) -> None:
    """It was a 502: the API server refuses a name with '%' (400), which the route passed on as its own error;
    and '..' reached a 404 without a name, which the route took for a missing CRD (503)."""
    response = api.request(method, path)

    assert response.status_code == 422 and response.json()["errors"][0]["field"] == field, response.json()
