"""HTTP routes of the andon cord: pull it, release a pull, see what is pulled and what happened.

A pull needs a token with the puller role (or higher), a release the releaser role; the reason is
required. The controller sees a pull within its poll (0.25 s) and halts every rollout in scope; the
routes only write the record (rollout/andon/store.py) and tell the announcer (Slack, if configured).
With the database down a pull cannot be recorded: 503, and the controller, which cannot read the
cord either, halts everything by itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from sqlalchemy.exc import SQLAlchemyError

from cohorts.db import MAX_INTEGER
from rollout.andon.announce import Announcer
from rollout.andon.scope import MAX_REASON, MIN_REASON, Scope
from rollout.andon.store import AlreadyReleased, AndonEvent, AndonStore, Pull, PullNotFound, SamePerson, Via
from rollout.api.auth import READ_PROBLEMS, WRITE_PROBLEMS, Credentials, Principal, Reader, Role, require
from rollout.api.problems import ApiProblem, problems

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1/andon", tags=["andon"])
# Which client made a change, for the record only (like the CLI's User-Agent): the dashboard's script sets it.
VIA_HEADER = "Ringmaster-Via"


class _View(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class PullBody(_View):
    reason: str = Field(min_length=MIN_REASON, max_length=MAX_REASON, description="why the line stops")
    scope: Scope = Field(default_factory=Scope, description="{} for every rollout, {namespace} or {namespace, rollout}")


class ReleaseBody(_View):
    id: int = Field(ge=1, le=MAX_INTEGER, description="the pull to release")
    reason: str = Field(min_length=MIN_REASON, max_length=MAX_REASON, description="why the line may go on")


class ReleaseView(_View):
    id: int
    at: datetime
    reason: str
    actor: str
    via: str


class PullView(_View):
    id: int
    at: datetime
    scope: Scope
    reason: str
    actor: str
    via: str
    active: bool
    release: ReleaseView | None = None


class CordView(_View):
    pulled: bool = Field(description="whether any pull is active")
    active: list[PullView]


class EventView(_View):
    id: int
    at: datetime
    kind: Literal["pull", "release"]
    pull_id: int
    scope: Scope
    reason: str
    actor: str
    via: str


class HistoryView(_View):
    items: list[EventView]


NO_DATABASE = problems(503, s503="the database does not answer; nothing was recorded")


def pull_view(pull: Pull) -> PullView:
    release = pull.release
    return PullView(id=pull.id, at=pull.at, scope=pull.scope, reason=pull.reason, actor=pull.actor, via=pull.via,
                    active=pull.active, release=None if release is None else ReleaseView(
                        id=release.id, at=release.at, reason=release.reason, actor=release.actor, via=release.via))


def event_view(event: AndonEvent) -> EventView:
    return EventView(id=event.id, at=event.at, kind=event.kind, pull_id=event.pull_id, scope=event.scope,
                     reason=event.reason, actor=event.actor, via=event.via)


def _store(request: Request) -> AndonStore:
    store: AndonStore = request.app.state.andon_store
    return store


def _announcer(request: Request) -> Announcer:
    announcer: Announcer = request.app.state.andon_announcer
    return announcer


def _via(request: Request) -> Via:
    if request.headers.get(VIA_HEADER) == "dashboard":
        return "dashboard"
    return "cli" if request.headers.get("user-agent", "").startswith("ringmaster-cli") else "api"


def active_pulls(request: Request) -> list[Pull]:
    """The pulls not released yet, oldest first; 503 when the database does not answer."""
    try:
        return _store(request).active()
    except SQLAlchemyError as error:
        raise _unavailable(error) from error


def recorded_events(request: Request, limit: int) -> list[AndonEvent]:
    """The latest `limit` pulls and releases, newest first; 503 when the database does not answer."""
    try:
        return _store(request).history(limit)
    except SQLAlchemyError as error:
        raise _unavailable(error) from error


def _unavailable(error: SQLAlchemyError) -> ApiProblem:
    log.error("andon: the database cannot be reached: %s", error)
    return ApiProblem(503, "database-unavailable", "The database cannot be reached",
                      "the cord's record is in the database, which does not answer; nothing was recorded. The "
                      "controller halts every rollout by itself while it cannot read the cord; retry when the "
                      "database is back")


def _guard(role: Role) -> Callable[[Request, HTTPAuthorizationCredentials | None], Principal]:
    """`require(role)`, except that a token that cannot be checked for want of the database is answered like a pull
    that cannot be recorded: whoever pulls learns that the controller halts everything by itself meanwhile."""
    authorized = require(role)

    def guarded(request: Request, credentials: Credentials) -> Principal:
        try:
            return authorized(request, credentials)
        except SQLAlchemyError as error:
            raise _unavailable(error) from error

    return guarded


CordPuller = Annotated[Principal, Depends(_guard("puller"))]
CordReleaser = Annotated[Principal, Depends(_guard("releaser"))]


@router.post("/pull", status_code=201, response_model=PullView, response_model_by_alias=True,
             summary="Pull the andon cord: halt every rollout in scope", responses={**WRITE_PROBLEMS, **NO_DATABASE})
def pull(request: Request, body: PullBody, principal: CordPuller) -> PullView:
    try:
        pulled = _store(request).pull(body.scope, body.reason, principal.name, _via(request))
    except SQLAlchemyError as error:
        raise _unavailable(error) from error
    _announcer(request).pulled(pulled)
    log.warning("andon: pull %d by %s over %s: %s", pulled.id, principal.name, pulled.scope, pulled.reason)
    return pull_view(pulled)


@router.post("/release", response_model=PullView, response_model_by_alias=True,
             summary="Release a pull: the rollouts it halted go on where they stopped",
             responses={**WRITE_PROBLEMS, **NO_DATABASE, **problems(
                 403, 404, 409, s404="no such pull", s409="the pull is already released",
                 s403="the token's role is below releaser, or (RINGMASTER_ANDON_RELEASE_BY_OTHER) it made the pull")})
def release(request: Request, body: ReleaseBody, principal: CordReleaser) -> PullView:
    by_other: bool = request.app.state.settings.andon_release_by_other
    try:
        released = _store(request).release(body.id, body.reason, principal.name, _via(request),
                                            release_by_other=by_other)
    except PullNotFound as error:
        raise ApiProblem(404, "pull-not-found", "No such pull", str(error)) from error
    except AlreadyReleased as error:
        raise ApiProblem(409, "already-released", "The pull is already released", str(error)) from error
    except SamePerson as error:
        raise ApiProblem(403, "release-by-other", "Someone else must release this pull", str(error)) from error
    except SQLAlchemyError as error:
        raise _unavailable(error) from error
    _announcer(request).released(released)
    log.warning("andon: pull %d released by %s: %s", released.id, principal.name, body.reason)
    return pull_view(released)


@router.get("", response_model=CordView, response_model_by_alias=True, summary="The active pulls",
            responses={**READ_PROBLEMS, **NO_DATABASE})
def cord(request: Request, _: Reader) -> CordView:
    active = active_pulls(request)
    return CordView(pulled=bool(active), active=[pull_view(item) for item in active])


@router.get("/history", response_model=HistoryView, response_model_by_alias=True,
            summary="Every pull and release, newest first (the record is append-only)",
            responses={**READ_PROBLEMS, **NO_DATABASE})
def history(request: Request, _: Reader,
            limit: Annotated[int, Query(ge=1, le=5000)] = 200) -> HistoryView:
    return HistoryView(items=[event_view(event) for event in recorded_events(request, limit)])
