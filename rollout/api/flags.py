"""HTTP routes for flags: list, create, read (any version), update with If-Match, enable and disable.

Thin, like the cohort routes: validate, call the store, shape JSON. After every change the replica's
publisher refreshes at once, so the flagd document, the streams and OFREP serve the change before
the response returns; other replicas see it within one poll.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from rollout.api.auth import READ_PROBLEMS, WRITE_PROBLEMS, Admin, reader
from rollout.api.cohorts import VersionQuery
from rollout.api.problems import ApiProblem, problems
from rollout.api.versions import expected_version, versioned_response
from rollout.flags.publisher import FlagPublisher
from rollout.flags.spec import FlagSpec, FlagState
from rollout.flags.store import FlagStore, StoredFlag

router = APIRouter(prefix="/api/v1", tags=["flags"])

IfMatchHeader = Annotated[str | None, Header(alias="If-Match", description='the version read, e.g. "3"')]
CommentQuery = Annotated[str | None, Query(max_length=500, description="why, kept with the version")]


class _View(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class FlagView(_View):
    key: str
    version: int
    created_at: datetime
    created_by: str
    comment: str | None
    spec: dict[str, Any]


class FlagList(_View):
    items: list[FlagView]


def _store(request: Request) -> FlagStore:
    store: FlagStore = request.app.state.flags
    return store


def _republish(request: Request) -> None:
    publisher: FlagPublisher = request.app.state.publisher
    publisher.refresh()


def _view(stored: StoredFlag) -> FlagView:
    return FlagView(key=stored.key, version=stored.version, created_at=stored.created_at,
                    created_by=stored.created_by, comment=stored.comment, spec=stored.spec.to_document())


def _versioned(stored: StoredFlag, status_code: int = 200, location: str | None = None) -> JSONResponse:
    return versioned_response(_view(stored), stored.version, status_code, location)


NO_FLAG = problems(404, s404="no such flag, or no such version of it")
CHANGE_PROBLEMS = {**WRITE_PROBLEMS, **NO_FLAG, **problems(400, 412)}


@router.get("/flags", response_model=FlagList, response_model_by_alias=True, responses=READ_PROBLEMS,
            dependencies=[Depends(reader)])
def list_flags(request: Request) -> FlagList:
    return FlagList(items=[_view(stored) for stored in _store(request).list_flags()])


@router.post("/flags", status_code=status.HTTP_201_CREATED, response_model=FlagView,
             responses={**WRITE_PROBLEMS, **problems(409, s409="a flag with that key exists")})
def create_flag(request: Request, spec: FlagSpec, principal: Admin, comment: CommentQuery = None) -> JSONResponse:
    stored = _store(request).create_flag(spec, principal.name, comment)
    _republish(request)
    return _versioned(stored, 201, f"/api/v1/flags/{stored.key}")


@router.get("/flags/{key}", response_model=FlagView, responses={**READ_PROBLEMS, **NO_FLAG},
            dependencies=[Depends(reader)])
def get_flag(request: Request, key: str, version: VersionQuery = None) -> JSONResponse:
    return _versioned(_store(request).get_flag(key, version))


@router.put("/flags/{key}", response_model=FlagView, responses=CHANGE_PROBLEMS)
def update_flag(request: Request, key: str, spec: FlagSpec, principal: Admin, if_match: IfMatchHeader = None,
                comment: CommentQuery = None) -> JSONResponse:
    if spec.key != key:
        raise ApiProblem(
            422, "invalid-request", "The request is not valid",
            f"key: the body names {spec.key!r} but the URL names {key!r}; make them the same",
            [{"in": "body", "field": "key", "message": f"must be {key!r}, as in the URL"}],
        )
    stored = _store(request).update_flag(spec, principal.name, comment, expected_version(if_match, "flag"))
    _republish(request)
    return _versioned(stored)


@router.get("/flags/{key}/versions", response_model=FlagList, responses={**READ_PROBLEMS, **NO_FLAG},
            dependencies=[Depends(reader)])
def list_versions(request: Request, key: str) -> FlagList:
    return FlagList(items=[_view(stored) for stored in _store(request).list_versions(key)])


def _set_state(request: Request, key: str, state: FlagState, actor: str, if_match: str | None,
               comment: str | None) -> JSONResponse:
    stored = _store(request).set_state(key, state, actor, comment, expected_version(if_match, "flag"))
    _republish(request)
    return _versioned(stored)


@router.post("/flags/{key}/enable", response_model=FlagView, responses=CHANGE_PROBLEMS)
def enable_flag(request: Request, key: str, principal: Admin, if_match: IfMatchHeader = None,
                comment: CommentQuery = None) -> JSONResponse:
    """Serve the flag's variants again; a new version unless it is enabled already."""
    return _set_state(request, key, "ENABLED", principal.name, if_match, comment)


@router.post("/flags/{key}/disable", response_model=FlagView, responses=CHANGE_PROBLEMS)
def disable_flag(request: Request, key: str, principal: Admin, if_match: IfMatchHeader = None,
                 comment: CommentQuery = None) -> JSONResponse:
    """Turn the flag off: every evaluator answers DISABLED and apps use their code default."""
    return _set_state(request, key, "DISABLED", principal.name, if_match, comment)
