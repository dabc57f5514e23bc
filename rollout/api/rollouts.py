"""HTTP routes for Rollouts: list and read them, show their gates, and steer them (promote, pause, resume,
abort, retry).

The routes read and patch Rollout objects on the Kubernetes API server; they never talk to the
controller. An action is a merge patch, `spec.paused` or the `ringmaster.dev/request` annotation,
that the controller acts on at its next reconcile, exactly as `kubectl patch` or `kubectl annotate`
would. An action that cannot apply to the rollout's current status is refused with 409, by the rules
the controller applies to requests (`handle_request` in rollout/controller/plan.py); for a request
that races a change of status, the controller stays the judge.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import urllib3
from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParameter
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from sqlalchemy.exc import SQLAlchemyError

from cohorts.errors import CohortError
from cohorts.store import CohortStore
from rollout.api.auth import READ_PROBLEMS, WRITE_PROBLEMS, Admin, reader
from rollout.api.problems import ApiProblem, problems
from rollout.controller.history import GateResultEntry, GateResults, HistoryEntry, RolloutHistory
from rollout.controller.observed import REQUEST_ANNOTATION
from rollout.controller.spec import GROUP, KIND, PLURAL, VERSION
from rollout.controller.status import GateStatus, Phase, RolloutStatus, Track, parse_status
from rollout.kube import NOT_CONFIGURED, load_api_client

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1", tags=["rollouts"])

Action = Literal["promote", "pause", "resume", "abort", "retry"]
COMPONENT = "ringmaster-api"
REQUEST_TIMEOUT_S = 10.0
NOT_CONFIGURED_TITLE = "Kubernetes is not configured"

# Kubernetes' names: a namespace is a DNS label, a Rollout's name a DNS subdomain. Anything else names no
# Rollout, and sent on to the API server it would be refused there (a 502 here), not found.
NAMESPACE_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
OBJECT_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
NamespaceQuery = Annotated[str | None, Query(max_length=63, pattern=NAMESPACE_PATTERN,
                                             description="only this namespace; default every one")]
NamespacePath = Annotated[str, PathParameter(max_length=63, pattern=NAMESPACE_PATTERN,
                                             description="the Rollout's namespace")]
NamePath = Annotated[str, PathParameter(max_length=253, pattern=OBJECT_NAME_PATTERN, description="the Rollout's name")]
MeasurementLimitQuery = Annotated[int, Query(ge=1, le=5000, description="the latest this many measurements")]
KUBERNETES_PROBLEMS = problems(
    502, 503, s502="the Kubernetes API server refused the request (e.g. Ringmaster lacks RBAC)",
    s503="no Kubernetes configured (kubernetes-not-configured), the API server unreachable (kubernetes-unreachable) "
         "or without the Rollout CRD (crd-not-installed)")
NO_ROLLOUT = problems(404, s404="no such Rollout")


class Kubernetes:
    """The API server the rollout routes use. Its client is built on first use rather than at start-up,
    so `ringmaster serve` runs without Kubernetes, and finds a local control plane started later."""

    def __init__(self, kubeconfig: Path | None) -> None:
        self.kubeconfig = kubeconfig
        self._lock = threading.Lock()
        self._api_client: client.ApiClient | None = None

    def api_client(self) -> client.ApiClient:
        with self._lock:
            if self._api_client is None:
                try:
                    self._api_client = load_api_client(self.kubeconfig)
                except (config.ConfigException, OSError) as error:
                    raise ApiProblem(503, "kubernetes-not-configured", NOT_CONFIGURED_TITLE,
                                     f"kubeconfig {self.kubeconfig} cannot be used ({error}); fix it, or point "
                                     "RINGMASTER_KUBECONFIG at another and restart `ringmaster serve`") from error
            if self._api_client is None:
                raise ApiProblem(503, "kubernetes-not-configured", NOT_CONFIGURED_TITLE,
                                 f"the rollout routes need a Kubernetes API server: {NOT_CONFIGURED} "
                                 "(`ringmaster serve` reads the variables when it starts)")
            return self._api_client

    def close(self) -> None:
        with self._lock:
            if self._api_client is not None:
                self._api_client.close()
                self._api_client = None


class _View(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class RolloutSummary(_View):
    namespace: str
    name: str
    phase: Phase | None = Field(description="None until the controller has recorded a status")
    track: Track | None
    current_ring: str | None
    rings: list[str] = Field(description="the rollout's rings in order: spec.rings, else every ring of its cohort "
                                         "set (the version it pinned)")
    step: str | None = Field(description="status.step: what the rollout is doing, e.g. Baking or AwaitingEvidence")
    revision: str | None
    old_ready: int
    new_ready: int
    target_replicas: int | None = Field(description="status.pin.targetReplicas, once the rollout has started")
    promoted_rings: list[str]
    paused: bool = Field(description="spec.paused")
    paused_reason: str | None = Field(description="why the failure policy paused the rollout")
    message: str
    creation_timestamp: datetime
    age_seconds: int


class TransitionView(_View):
    """One transition in the database's lasting history (Kubernetes Events expire after an hour)."""

    at: datetime
    rollout_uid: str
    sequence: int
    reason: str
    type: str
    revision: str | None
    ring: str | None
    message: str


class RolloutDetail(RolloutSummary):
    uid: str
    generation: int
    pending_request: str | None = Field(description="a ringmaster.dev/request the controller has not handled yet")
    spec: dict[str, Any]
    status: dict[str, Any] = Field(description="as the controller recorded it: conditions, history, pin, bakeUntil")
    history: list[TransitionView]


class MeasurementView(_View):
    """One measurement of one gate in the database's lasting record, kept after the Rollout is gone."""

    at: datetime = Field(description="the evaluation time the queries were sent with")
    rollout_uid: str
    revision: str
    ring: str
    gate: str
    kind: str
    sequence: int = Field(description="the gate's measurement number in this ring of this revision")
    verdict: str = Field(description="Passed, Failed, Inconclusive, NoData, TooFewSamples or Error")
    values: dict[str, float] = Field(description="the named numbers the verdict rests on")
    threshold: str = Field(description="what the gate required")
    message: str
    queries: list[str] = Field(description="the queries as sent")


class RolloutGates(_View):
    namespace: str
    name: str
    phase: Phase | None = Field(description="None until the controller has recorded a status")
    current_ring: str | None
    gates: list[GateStatus] = Field(description="status.gates: where each gate of the ring being baked stands")
    history: list[MeasurementView] = Field(description="the latest measurements of every gate, oldest first")


class RolloutList(_View):
    items: list[RolloutSummary]


class ActionBody(_View):
    reason: str | None = Field(default=None, max_length=500, description="why; kept in an Event on the Rollout")


class ActionAccepted(RolloutSummary):
    action: Action
    request: str | None = Field(description="the ringmaster.dev/request value set; None for pause")


def refusal(action: Action, spec_paused: bool, status: RolloutStatus, key: str) -> str | None:
    """Why `action` cannot apply to a rollout in `status`, and what to do instead; None when it can."""
    track, phase = status.track, status.phase
    if action == "pause":
        return None
    if action == "promote":
        if track == "Progressing" and (status.bake_until is not None or status.bake_remaining_seconds is not None):
            return None
        if track == "Progressing":
            return (f"{key} has no ring baking: ring {status.current_ring} is still moving capacity "
                    f"({status.message}); promote once its bake has started (status.bakeUntil)")
        return f"{key} is {phase}: promote skips the rest of a ring's bake, and only a Progressing rollout bakes"
    if action == "abort":
        if track in ("Pending", "Progressing") and status.revision is not None:
            return None
        return {
            "Succeeded": f"{key} has Succeeded: nothing is in progress to abort; to go back, set spec.image (or "
                         "spec.template) to the previous version, which rolls it out as a new revision",
            "RolledBack": f"{key} is already RolledBack: the old version serves everyone; `retry` starts again",
            "RollingBack": f"{key} is already rolling back ({status.rollback_reason})",
            "Failed": f"{key} is Failed: it is already rolling back and the old version is not ready yet; "
                      "`retry` restarts its readyTimeout",
        }.get(track, f"{key} has not started a revision yet, so there is nothing to roll back; pause it to keep "
                     "it from starting")
    if action == "retry":
        if track in ("RolledBack", "Failed") or (track == "Progressing" and status.paused_reason is not None):
            return None
        hint = "; it is paused by spec.paused: use `resume`" if spec_paused else ""
        return (f"{key} is {phase}: retry restarts a RolledBack or Failed rollout, or one its failure policy "
                f"paused{hint}")
    if spec_paused or status.paused_reason is not None:
        return None
    if phase == "Halted":
        return f"{key} is not paused but halted by the andon cord; it moves again when the cord is released"
    return f"{key} is not paused: spec.paused is false and its failure policy has not paused it"


def rollout_patch(action: Action, request_value: str | None) -> dict[str, Any]:
    """The merge patch that makes `action`: spec.paused, the request annotation, or (resume) both."""
    patch: dict[str, Any] = {}
    if action in ("pause", "resume"):
        patch["spec"] = {"paused": action == "pause"}
    if request_value is not None:
        patch["metadata"] = {"annotations": {REQUEST_ANNOTATION: request_value}}
    return patch


def _timestamp(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


class CohortRings:
    """The rings of cohort sets, each read once per request: a Rollout that lists no rings goes through every
    ring of its cohort set."""

    def __init__(self, store: CohortStore) -> None:
        self._store = store
        self._rings: dict[tuple[str, int | None], list[str]] = {}

    def __call__(self, name: str, version: int | None) -> list[str]:
        if (name, version) not in self._rings:
            try:
                self._rings[name, version] = list(self._store.get_set(name, version).spec.rings)
            except (CohortError, SQLAlchemyError):
                self._rings[name, version] = []  # shown, not acted on: a set that cannot be read shows no rings
        return self._rings[name, version]


def _ring_names(spec: Mapping[str, Any], status: RolloutStatus, cohort_rings: CohortRings | None) -> list[str]:
    listed = [str(ring["name"]) for ring in spec.get("rings") or [] if isinstance(ring, dict) and ring.get("name")]
    if listed or cohort_rings is None:
        return listed
    if status.pin is not None:
        return cohort_rings(status.pin.cohort_set, status.pin.version)
    return cohort_rings(str(spec.get("cohortSet") or "default"), None)


def _summary_fields(obj: Mapping[str, Any], now: datetime, cohort_rings: CohortRings | None = None) -> dict[str, Any]:
    metadata = obj.get("metadata") or {}
    raw_status = obj.get("status") or {}
    status = parse_status(raw_status)
    created = _timestamp(metadata.get("creationTimestamp") or now)
    return {
        "namespace": metadata.get("namespace", ""),
        "name": metadata.get("name", ""),
        "phase": status.phase if raw_status else None,
        "track": status.track if raw_status else None,
        "current_ring": status.current_ring,
        "rings": _ring_names(obj.get("spec") or {}, status, cohort_rings),
        "step": status.step,
        "revision": status.revision,
        "old_ready": status.old_ready,
        "new_ready": status.new_ready,
        "target_replicas": status.pin.target_replicas if status.pin else None,
        "promoted_rings": status.promoted_rings,
        "paused": (obj.get("spec") or {}).get("paused") is True,
        "paused_reason": status.paused_reason,
        "message": status.message,
        "creation_timestamp": created,
        "age_seconds": max(0, int((now - created).total_seconds())),
    }


def _transition(entry: HistoryEntry) -> TransitionView:
    return TransitionView(at=entry.at, rollout_uid=entry.rollout_uid, sequence=entry.sequence, reason=entry.reason,
                          type=entry.type, revision=entry.revision, ring=entry.ring, message=entry.message)


def _measurement(entry: GateResultEntry) -> MeasurementView:
    return MeasurementView(at=entry.at, rollout_uid=entry.rollout_uid, revision=entry.revision, ring=entry.ring,
                           gate=entry.gate, kind=entry.kind, sequence=entry.sequence, verdict=entry.verdict,
                           values=entry.values, threshold=entry.threshold, message=entry.message,
                           queries=entry.queries)


def _api_client(request: Request) -> client.ApiClient:
    kubernetes: Kubernetes = request.app.state.kubernetes
    return kubernetes.api_client()


@contextmanager
def _answering(api_client: client.ApiClient, key: str | None = None) -> Iterator[None]:
    """Kubernetes' errors as problems: unreachable 503, no CRD 503, no such Rollout (`key`) 404, else 502."""
    host = api_client.configuration.host
    try:
        yield
    except ApiException as error:
        if error.status == 0:
            raise _unreachable(host, error.reason) from error
        try:
            answer = json.loads(error.body or "{}")
        except json.JSONDecodeError:
            answer = {}
        said = answer.get("message") or error.reason
        if error.status == 404 and key is not None and (answer.get("details") or {}).get("name"):
            raise ApiProblem(404, "not-found", "No such Rollout",
                             f"there is no Rollout {key}; `ringmaster rollout list` shows the rollouts") from error
        if error.status == 404:
            raise ApiProblem(503, "crd-not-installed", "The Rollout CRD is not installed",
                             f"the Kubernetes API server at {host} serves no {PLURAL}.{GROUP}/{VERSION} ({said}); "
                             "install it with `kubectl apply -f deploy/crd/rollouts.yaml`, or run "
                             "`ringmaster controller`, which installs it") from error
        raise ApiProblem(502, "kubernetes-error", "Kubernetes refused the request",
                         f"the Kubernetes API server at {host} answered {error.status} {error.reason}: {said}; "
                         "Ringmaster needs get, list and patch on rollouts.ringmaster.dev and create on "
                         "events") from error
    except (urllib3.exceptions.HTTPError, OSError) as error:
        raise _unreachable(host, getattr(error, "reason", None) or error) from error


def _unreachable(host: str, cause: object) -> ApiProblem:
    return ApiProblem(503, "kubernetes-unreachable", "Kubernetes is unreachable",
                      f"cannot reach the Kubernetes API server at {host} ({cause}); check that it is running "
                      "and that the kubeconfig `ringmaster serve` uses points at it")


def rollout_objects(request: Request, namespace: str | None = None) -> list[dict[str, Any]]:
    """Every Rollout object (of one namespace) as the API server holds it, sorted by namespace and name;
    ApiProblem when Kubernetes is not configured, unreachable or without the CRD."""
    api_client = _api_client(request)
    rollouts = client.CustomObjectsApi(api_client)
    with _answering(api_client):
        if namespace:
            listed = rollouts.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                            _request_timeout=REQUEST_TIMEOUT_S)
        else:
            listed = rollouts.list_cluster_custom_object(GROUP, VERSION, PLURAL, _request_timeout=REQUEST_TIMEOUT_S)
    items: list[dict[str, Any]] = listed.get("items", [])
    return sorted(items, key=lambda obj: ((obj.get("metadata") or {}).get("namespace", ""),
                                          (obj.get("metadata") or {}).get("name", "")))


def summary(obj: Mapping[str, Any], now: datetime, cohort_rings: CohortRings | None = None) -> RolloutSummary:
    return RolloutSummary(**_summary_fields(obj, now, cohort_rings))


def _read(api_client: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    with _answering(api_client, f"{namespace}/{name}"):
        found: dict[str, Any] = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, _request_timeout=REQUEST_TIMEOUT_S)
    return found


def _record_event(api_client: client.ApiClient, rollout: Mapping[str, Any], action: Action, actor: str,
                  reason: str | None) -> None:
    metadata = rollout["metadata"]
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    message = f"{action} requested by {actor}" + (f": {reason}" if reason else "")
    event = {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": f"{metadata['name']}.{secrets.token_hex(8)}", "namespace": metadata["namespace"]},
        "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": metadata["name"],
                           "namespace": metadata["namespace"], "uid": metadata.get("uid", "")},
        "reason": f"{action.capitalize()}Requested", "message": message, "type": "Normal",
        "source": {"component": COMPONENT}, "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    }
    try:
        client.CoreV1Api(api_client).create_namespaced_event(metadata["namespace"], event,
                                                             _request_timeout=REQUEST_TIMEOUT_S)
    except (ApiException, urllib3.exceptions.HTTPError, OSError) as error:
        # The action is made; the Event only tells who asked and why.
        log.warning("%s/%s: event %s not recorded: %s", metadata["namespace"], metadata["name"], message, error)


@router.get("/rollouts", response_model=RolloutList, responses={**READ_PROBLEMS, **KUBERNETES_PROBLEMS},
            dependencies=[Depends(reader)])
def list_rollouts(request: Request, namespace: NamespaceQuery = None) -> RolloutList:
    """Every Rollout (of one namespace), with its phase, ring and ready replicas."""
    now = datetime.now(UTC)
    cohort_rings = CohortRings(request.app.state.store)
    return RolloutList(items=[summary(obj, now, cohort_rings) for obj in rollout_objects(request, namespace)])


@router.get("/rollouts/{namespace}/{name}", response_model=RolloutDetail,
            responses={**READ_PROBLEMS, **NO_ROLLOUT, **KUBERNETES_PROBLEMS}, dependencies=[Depends(reader)])
def get_rollout(request: Request, namespace: NamespacePath, name: NamePath) -> RolloutDetail:
    """One Rollout: the summary, its spec and status, and its transitions kept in the database."""
    found = _read(_api_client(request), namespace, name)
    metadata = found.get("metadata") or {}
    history = RolloutHistory(request.app.state.engine).entries(namespace, name)
    return RolloutDetail(
        **_summary_fields(found, datetime.now(UTC), CohortRings(request.app.state.store)), uid=metadata.get("uid", ""),
        generation=int(metadata.get("generation", 0)),
        pending_request=(metadata.get("annotations") or {}).get(REQUEST_ANNOTATION),
        spec=found.get("spec") or {}, status=found.get("status") or {},
        history=[_transition(entry) for entry in history],
    )


@router.get("/rollouts/{namespace}/{name}/gates", response_model=RolloutGates,
            responses={**READ_PROBLEMS, **NO_ROLLOUT, **KUBERNETES_PROBLEMS}, dependencies=[Depends(reader)])
def get_rollout_gates(request: Request, namespace: NamespacePath, name: NamePath,
                      limit: MeasurementLimitQuery = 500) -> RolloutGates:
    """A Rollout's gates: where each gate of the ring being baked stands, and their measurements kept in the
    database."""
    found = _read(_api_client(request), namespace, name)
    raw_status = found.get("status") or {}
    status = parse_status(raw_status)
    measurements = GateResults(request.app.state.engine).entries(namespace, name, limit)
    return RolloutGates(namespace=namespace, name=name, phase=status.phase if raw_status else None,
                        current_ring=status.current_ring, gates=status.gates,
                        history=[_measurement(entry) for entry in measurements])


@router.post("/rollouts/{namespace}/{name}/{action}", status_code=202, response_model=ActionAccepted,
             responses={**WRITE_PROBLEMS, **NO_ROLLOUT, **KUBERNETES_PROBLEMS,
                        **problems(409, s409="the action cannot apply to the rollout's current status")})
def act_on_rollout(request: Request, namespace: NamespacePath, name: NamePath, action: Action, principal: Admin,
                   body: ActionBody | None = None) -> ActionAccepted:
    """Pause (spec.paused: true), resume (spec.paused: false and a `resume` request), or request a promote,
    abort or retry (the ringmaster.dev/request annotation); the controller acts on it at its next reconcile."""
    api_client = _api_client(request)
    key = f"{namespace}/{name}"
    current = _read(api_client, namespace, name)
    spec_paused = (current.get("spec") or {}).get("paused") is True
    why_not = refusal(action, spec_paused, parse_status(current.get("status")), key)
    if why_not is not None:
        raise ApiProblem(409, "action-not-applicable", f"The rollout cannot {action} now", why_not)
    request_value = None if action == "pause" else f"{action}:{secrets.token_hex(4)}"
    with _answering(api_client, key):
        patched: dict[str, Any] = client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, rollout_patch(action, request_value),
            _request_timeout=REQUEST_TIMEOUT_S)
    _record_event(api_client, patched, action, principal.name, body.reason if body else None)
    return ActionAccepted(**_summary_fields(patched, datetime.now(UTC)), action=action, request=request_value)
