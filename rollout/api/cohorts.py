"""HTTP routes for cohort sets: versions, opt-in/out, usage ingest, explain, estimate, flagd document."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from cohorts.assign import CompiledCohortSet, assign
from cohorts.cache import CompiledSetCache
from cohorts.db import MAX_INTEGER
from cohorts.estimate import ShareEstimate, estimate_shares
from cohorts.flagd import flagd_document
from cohorts.rotation import epoch_at
from cohorts.spec import CohortSetSpec
from cohorts.store import AuditRecord, CohortStore, StoredCohortSet
from cohorts.usage import UsageBatch
from rollout.api.auth import READ_PROBLEMS, WRITE_PROBLEMS, Admin, reader
from rollout.api.problems import ApiProblem, problems
from rollout.api.versions import expected_version, versioned_response

router = APIRouter(prefix="/api/v1", tags=["cohorts"])

TargetingKeyPath = Annotated[
    str, Path(alias="targetingKey", min_length=1, max_length=256, description="the user's targeting key")
]


class _View(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class CohortSetView(_View):
    name: str
    version: int
    created_at: datetime
    created_by: str
    comment: str | None
    spec: dict[str, Any]


class CohortSetList(_View):
    items: list[CohortSetView]


class OptChoice(_View):
    choice: Literal["in", "out"]


class OptList(_View):
    opted_in: list[str] = Field(alias="in")
    opted_out: list[str] = Field(alias="out")


class IngestResult(_View):
    stored: int


class Explanation(_View):
    ring: str
    reason: str
    kind: str
    rule: str | None
    cohort_set: str
    version: int
    epoch: int


class RingShare(_View):
    ring: str
    count: int
    share: float
    cumulative_share: float


class Estimate(_View):
    cohort_set: str
    version: int
    epoch: int
    source: Literal["usage", "keys", "configured"]
    population: int
    rings: list[RingShare]


class AuditView(_View):
    id: int
    at: datetime
    actor: str
    action: str
    subject: str
    before: Any
    after: Any


class AuditList(_View):
    items: list[AuditView]


def _store(request: Request) -> CohortStore:
    store: CohortStore = request.app.state.store
    return store


def _view(stored: StoredCohortSet) -> CohortSetView:
    return CohortSetView(
        name=stored.name, version=stored.version, created_at=stored.created_at,
        created_by=stored.created_by, comment=stored.comment, spec=stored.spec.to_document(),
    )


def _versioned(stored: StoredCohortSet, status_code: int = 200, location: str | None = None) -> JSONResponse:
    return versioned_response(_view(stored), stored.version, status_code, location)


NO_SET = problems(404, s404="no such cohort set, or no such version of it")


@router.get("/cohort-sets", response_model=CohortSetList, response_model_by_alias=True, responses=READ_PROBLEMS,
            dependencies=[Depends(reader)])
def list_cohort_sets(request: Request) -> CohortSetList:
    return CohortSetList(items=[_view(stored) for stored in _store(request).list_sets()])


@router.post("/cohort-sets", status_code=status.HTTP_201_CREATED, response_model=CohortSetView,
             responses={**WRITE_PROBLEMS, **problems(409, s409="a cohort set of that name exists")})
def create_cohort_set(
    request: Request,
    spec: CohortSetSpec,
    principal: Admin,
    comment: Annotated[str | None, Query(max_length=500)] = None,
) -> JSONResponse:
    stored = _store(request).create_set(spec, principal.name, comment)
    return _versioned(stored, 201, f"/api/v1/cohort-sets/{stored.name}")


@router.get("/cohort-sets/{name}", response_model=CohortSetView, responses={**READ_PROBLEMS, **NO_SET},
            dependencies=[Depends(reader)])
def get_cohort_set(request: Request, name: str, version: VersionQuery = None) -> JSONResponse:
    return _versioned(_store(request).get_set(name, version))


@router.put("/cohort-sets/{name}", response_model=CohortSetView,
            responses={**WRITE_PROBLEMS, **NO_SET, **problems(400, 412)})
def update_cohort_set(
    request: Request,
    name: str,
    spec: CohortSetSpec,
    principal: Admin,
    if_match: Annotated[str | None, Header(alias="If-Match")] = None,
    comment: Annotated[str | None, Query(max_length=500)] = None,
) -> JSONResponse:
    if spec.name != name:
        raise ApiProblem(
            422, "invalid-request", "The request is not valid",
            f"name: the body names {spec.name!r} but the URL names {name!r}; make them the same",
            [{"in": "body", "field": "name", "message": f"must be {name!r}, as in the URL"}],
        )
    stored = _store(request).update_set(spec, principal.name, comment, expected_version(if_match, "cohort set"))
    return _versioned(stored)


@router.get("/cohort-sets/{name}/versions", response_model=CohortSetList, responses={**READ_PROBLEMS, **NO_SET},
            dependencies=[Depends(reader)])
def list_versions(request: Request, name: str) -> CohortSetList:
    return CohortSetList(items=[_view(stored) for stored in _store(request).list_versions(name)])


@router.get("/cohort-sets/{name}/opt", response_model=OptList, response_model_by_alias=True,
            responses={**READ_PROBLEMS, **NO_SET}, dependencies=[Depends(reader)])
def list_opt_choices(request: Request, name: str) -> OptList:
    choices = _store(request).opt_choices(name)
    return OptList(
        opted_in=sorted(key for key, choice in choices.items() if choice == "in"),
        opted_out=sorted(key for key, choice in choices.items() if choice == "out"),
    )


@router.put("/cohort-sets/{name}/opt/{targetingKey}", response_model=OptChoice,
            responses={**WRITE_PROBLEMS, **NO_SET, **problems(409, s409="the cohort set has no ring for that choice")})
def set_opt_choice(
    request: Request, name: str, targeting_key: TargetingKeyPath, choice: OptChoice, principal: Admin
) -> OptChoice:
    _store(request).set_opt(name, targeting_key, choice.choice, principal.name)
    return choice


@router.delete("/cohort-sets/{name}/opt/{targetingKey}", status_code=204,
               responses={**WRITE_PROBLEMS, **problems(404, s404="no such cohort set, or the key made no choice")})
def clear_opt_choice(
    request: Request, name: str, targeting_key: TargetingKeyPath, principal: Admin
) -> Response:
    if not _store(request).clear_opt(name, targeting_key, principal.name):
        raise ApiProblem(404, "not-found", "No choice to clear",
                         f"{targeting_key!r} has not opted in or out of cohort set {name!r}")
    return Response(status_code=204)


@router.post("/usage", response_model=IngestResult, tags=["usage"], responses=WRITE_PROBLEMS)
def ingest_usage(
    request: Request,
    batch: Annotated[UsageBatch, Body(description="per-user aggregates; up to 10,000 rows, upserted")],
    principal: Admin,
) -> IngestResult:
    return IngestResult(stored=_store(request).ingest_usage(batch, principal.name))


def _compiled(request: Request, name: str, version: int | None) -> CompiledCohortSet:
    cache: CompiledSetCache = request.app.state.compiled_sets
    return cache.get(name, version)


def _epoch(compiled: CompiledCohortSet, epoch: int | None) -> int:
    if epoch is not None:
        return epoch
    rotation = compiled.split.rotation if compiled.split else None
    return epoch_at(rotation, datetime.now(UTC))


def _attributes(raw: str | None) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        attributes = json.loads(raw)
    except json.JSONDecodeError as error:
        attributes = error
    if not isinstance(attributes, dict):
        raise ApiProblem(
            422, "invalid-request", "The request is not valid",
            'attributes: expected a URL-encoded JSON object such as {"team": "staff"}',
            [{"in": "query", "field": "attributes", "message": "expected a JSON object"}],
        )
    return attributes


EpochQuery = Annotated[int | None, Query(ge=0, description="rotation epoch; defaults to the current one")]
VersionQuery = Annotated[int | None, Query(ge=1, le=MAX_INTEGER,
                                           description="cohort set version; defaults to the current one")]


@router.get("/cohort-sets/{name}/explain", response_model=Explanation, response_model_by_alias=True,
            responses={**READ_PROBLEMS, **NO_SET}, dependencies=[Depends(reader)])
def explain(
    request: Request,
    name: str,
    targeting_key: Annotated[str | None, Query(alias="targetingKey", max_length=256)] = None,
    attributes: Annotated[str | None, Query(description='URL-encoded JSON object, e.g. {"team":"staff"}')] = None,
    epoch: EpochQuery = None,
    version: VersionQuery = None,
) -> Explanation:
    context = _attributes(attributes)
    if targeting_key is not None:
        context["targetingKey"] = targeting_key
    compiled = _compiled(request, name, version)
    chosen_epoch = _epoch(compiled, epoch)
    assignment = assign(compiled, context, chosen_epoch)
    request.app.state.metrics.assignments.labels(cohort_set=name, ring=assignment.ring).inc()
    return Explanation(
        ring=assignment.ring, reason=assignment.reason, kind=assignment.kind, rule=assignment.rule,
        cohort_set=name, version=compiled.version, epoch=chosen_epoch,
    )


def _estimate_view(estimate: ShareEstimate) -> Estimate:
    return Estimate(
        cohort_set=estimate.cohort_set, version=estimate.version, epoch=estimate.epoch, source=estimate.source,
        population=estimate.population,
        rings=[RingShare(ring=share.ring, count=share.count, share=share.share,
                         cumulative_share=share.cumulative_share) for share in estimate.rings],
    )


@router.get("/cohort-sets/{name}/estimate", response_model=Estimate, response_model_by_alias=True,
            responses={**READ_PROBLEMS, **NO_SET}, dependencies=[Depends(reader)])
def estimate(
    request: Request,
    name: str,
    keys: Annotated[list[str] | None, Query(max_length=10_000, description="estimate over these keys instead")] = None,
    epoch: EpochQuery = None,
    version: VersionQuery = None,
) -> Estimate:
    """Each ring's share of the stored usage population, of the keys given, or else of the split."""
    compiled = _compiled(request, name, version)
    chosen_epoch = _epoch(compiled, epoch)
    if keys:
        contexts: Iterable[Mapping[str, Any]] = ({"targetingKey": key} for key in keys)
        return _estimate_view(estimate_shares(compiled, contexts, chosen_epoch, source="keys"))
    population = _store(request).usage_population()
    return _estimate_view(estimate_shares(compiled, population, chosen_epoch, source="usage"))


@router.get("/cohort-sets/{name}/flagd", responses={200: {"description": "a flagd flag-definition document"},
                                                     304: {"description": "unchanged since If-None-Match"},
                                                     **READ_PROBLEMS, **NO_SET},
            dependencies=[Depends(reader)])
def flagd(
    request: Request,
    name: str,
    epoch: EpochQuery = None,
    version: VersionQuery = None,
    if_none_match: Annotated[str | None, Header(alias="If-None-Match")] = None,
) -> Response:
    compiled = _compiled(request, name, version)
    document = flagd_document(compiled, _epoch(compiled, epoch))
    etag = '"' + hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:32] + '"'
    if if_none_match is not None and etag in [tag.strip() for tag in if_none_match.split(",")]:
        return Response(status_code=304, headers={"ETag": etag})
    return JSONResponse(document, headers={"ETag": etag, "Cache-Control": "no-cache"})


@router.get("/audit", response_model=AuditList, response_model_by_alias=True, tags=["audit"],
            responses=READ_PROBLEMS, dependencies=[Depends(reader)])
def audit_log(
    request: Request,
    subject: Annotated[str | None, Query(description="e.g. cohort-set/default or usage")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditList:
    records: list[AuditRecord] = _store(request).audit_log(subject, limit)
    return AuditList(items=[
        AuditView(id=record.id, at=record.at, actor=record.actor, action=record.action, subject=record.subject,
                  before=record.before, after=record.after)
        for record in records
    ])
