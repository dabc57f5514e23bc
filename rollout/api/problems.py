"""Errors as RFC 9457 problem documents (`application/problem+json`) naming each field at fault."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from cohorts.errors import (
    UNKNOWN,
    CohortError,
    CohortSetExists,
    CohortSetNotFound,
    InvalidCohortSet,
    InvalidUsage,
    MaterializationLimitExceeded,
    OptNotOffered,
    VersionConflict,
    field_path,
)
from rollout.flags.errors import (
    FlagError,
    FlagExists,
    FlagNotFound,
    FlagVersionConflict,
    InvalidFlag,
    InvalidSelector,
)

log = logging.getLogger(__name__)
PROBLEM_TYPES = "https://ringmaster.dev/problems/"
PROBLEM_JSON = "application/problem+json"
COMPONENTS = "#/components/schemas/"

# What each status means on every route that answers it; a route may say more in its own `problems(...)`.
PROBLEM_STATUSES: dict[int, str] = {
    400: "a malformed header (If-Match that is not a version, a Flagd-Selector other than flagSetId=...)",
    401: "no API token, an Authorization header that is not `Bearer <token>`, or a token unknown or revoked",
    403: "the token's role is below the one the route needs",
    404: "no such resource",
    409: "the change conflicts with what is stored",
    412: "If-Match names a version that is no longer current",
    413: "the body is larger than RINGMASTER_MAX_BODY_BYTES (RINGMASTER_MAX_USAGE_BODY_BYTES for usage) allows",
    422: "the body, a path or a query parameter is invalid; `errors` names each field",
    429: "too many failed authentications from this address lately; Retry-After says when to try again",
    502: "the Kubernetes API server refused the request",
    503: "a service the route needs is not there",
}


class FieldProblem(BaseModel):
    """One field at fault: where it was sent, its path (e.g. `rules[0].ring`) and what is wrong with it."""

    model_config = ConfigDict(populate_by_name=True)

    in_: str = Field(alias="in", description="body, query, path or header")
    field: str = Field(description="the field's path, e.g. rules[0].ring or targeting.rings.variants.beta")
    message: str


class Problem(BaseModel):
    """An RFC 9457 problem document (`application/problem+json`): every error outside the OFREP routes."""

    type: str = Field(description="https://ringmaster.dev/problems/<kind>")
    title: str
    status: int
    detail: str
    errors: list[FieldProblem] = Field(default_factory=list, description="each field at fault, when fields are")


def problems(*statuses: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` declaring that a route answers `statuses` with problem documents.

    `descriptions` say what a status means on this route (`s404="no such flag"`), else PROBLEM_STATUSES does.
    """
    return {status: {"description": descriptions.get(f"s{status}", PROBLEM_STATUSES[status]),
                     "content": {PROBLEM_JSON: {"schema": {"$ref": COMPONENTS + "Problem"}}}}
            for status in statuses}


BODY_PROBLEMS = problems(400, 413, s400="the body cannot be parsed (e.g. JSON nested too deep)")
CREDENTIAL_PROBLEMS = problems(429)


def _problem_schemas() -> dict[str, Any]:
    schema = Problem.model_json_schema(ref_template=COMPONENTS + "{model}", by_alias=True)
    return {**schema.pop("$defs", {}), "Problem": schema}


def install_problem_schema(app: FastAPI) -> None:
    """Make /openapi.json say what the handlers below do: Problem among the schemas, and FastAPI's own 422
    (a `{"detail": [...]}` document that this service never sends) replaced by the problem document."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(_problem_schemas())
            default_422 = {"application/json": {"schema": {"$ref": COMPONENTS + "HTTPValidationError"}}}
            for operation in (op for path in document.get("paths", {}).values() for op in path.values()):
                responses = operation.get("responses", {})
                if responses.get("422", {}).get("content") == default_422:
                    responses["422"] = problems(422)[422]
                # What the middleware answers before a route runs: a body too large or unreadable, and a client
                # that presented credentials too often in vain.
                answered_first = {**(BODY_PROBLEMS if "requestBody" in operation else {}),
                                  **(CREDENTIAL_PROBLEMS if operation.get("security") else {})}
                for status, response in answered_first.items():
                    responses.setdefault(str(status), response)
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]


class ApiProblem(Exception):
    """An error the API layer itself raises (bad query parameter, mismatched name, ...)."""

    def __init__(self, status: int, kind: str, title: str, detail: str, errors: Sequence[dict[str, str]] = ()) -> None:
        self.status = status
        self.kind = kind
        self.title = title
        self.detail = detail
        self.errors = list(errors)
        super().__init__(detail)


def problem(status: int, kind: str, title: str, detail: str, errors: Sequence[dict[str, str]] = ()) -> JSONResponse:
    body: dict[str, Any] = {"type": PROBLEM_TYPES + kind, "title": title, "status": status, "detail": detail}
    if errors:
        body["errors"] = list(errors)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)


def _validation_errors(raw_errors: Sequence[Any], body: Any = UNKNOWN) -> list[dict[str, str]]:
    errors = []
    for error in raw_errors:
        location = list(error.get("loc", ()))
        where = str(location.pop(0)) if location and location[0] in ("body", "query", "path", "header") else "body"
        message = str(error.get("msg", "is invalid")).removeprefix("Value error, ")
        field = field_path(location, body if where == "body" else UNKNOWN, missing=error.get("type") == "missing")
        errors.append({"in": where, "field": field or where, "message": message})
    return errors


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = _validation_errors(error.errors(), error.body)
        first = errors[0] if errors else {"field": "request", "message": "is invalid"}
        return problem(
            422, "invalid-request", "The request is not valid",
            f"{first['field']}: {first['message']}" + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""),
            errors,
        )

    @app.exception_handler(ValidationError)
    async def invalid_value(request: Request, error: ValidationError) -> JSONResponse:
        # Raised past the request schema, e.g. by the store validating a targeting key from the URL.
        errors = _validation_errors(error.errors())
        detail = "; ".join(f"{item['field']}: {item['message']}" for item in errors)
        return problem(422, "invalid-request", "The request is not valid", detail, errors)

    @app.exception_handler(ApiProblem)
    async def api_problem(request: Request, error: ApiProblem) -> JSONResponse:
        return problem(error.status, error.kind, error.title, error.detail, error.errors)

    @app.exception_handler(CohortError)
    async def cohort_error(request: Request, error: CohortError) -> JSONResponse:
        if isinstance(error, InvalidCohortSet | InvalidUsage):
            errors = [{"in": "body", "field": item.field, "message": item.message} for item in error.problems]
            kind = "invalid-cohort-set" if isinstance(error, InvalidCohortSet) else "invalid-usage"
            return problem(422, kind, "The request is not valid", str(error), errors)
        if isinstance(error, CohortSetNotFound):
            return problem(404, "not-found", "No such cohort set", str(error))
        if isinstance(error, OptNotOffered):
            return problem(409, "opt-not-offered", "This cohort set does not take that choice", str(error))
        if isinstance(error, CohortSetExists):
            return problem(409, "already-exists", "The cohort set already exists", str(error))
        if isinstance(error, VersionConflict):
            return problem(412, "version-conflict", "The cohort set changed since you read it", str(error))
        if isinstance(error, MaterializationLimitExceeded):
            return problem(422, "materialization-limit", "Too many targeting keys to compile", str(error))
        return problem(400, "cohort-error", "The request cannot be carried out", str(error))

    @app.exception_handler(FlagError)
    async def flag_error(request: Request, error: FlagError) -> JSONResponse:
        if isinstance(error, InvalidFlag):
            errors = [{"in": "body", "field": item.field, "message": item.message} for item in error.problems]
            return problem(422, "invalid-flag", "The request is not valid", str(error), errors)
        if isinstance(error, FlagNotFound):
            return problem(404, "not-found", "No such flag", str(error))
        if isinstance(error, FlagExists):
            return problem(409, "already-exists", "The flag already exists", str(error))
        if isinstance(error, FlagVersionConflict):
            return problem(412, "version-conflict", "The flag changed since you read it", str(error))
        if isinstance(error, InvalidSelector):
            errors = [{"in": "header", "field": "Flagd-Selector", "message": str(error)}]
            return problem(400, "invalid-request", "The request is not valid", str(error), errors)
        return problem(400, "flag-error", "The request cannot be carried out", str(error))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not-found", 405: "method-not-allowed"}.get(error.status_code, "http-error")
        detail = f"{request.method} {request.url.path}: {error.detail}"
        return problem(error.status_code, kind, str(error.detail), detail)

    # The database is down or out of reach (a token to check, a store to read or write): the route cannot answer
    # now, and will once it is back, while flags go on being served from memory. Other database errors are bugs.
    async def database_unavailable(request: Request, error: Exception) -> JSONResponse:
        reason = str(getattr(error, "orig", None) or error).splitlines()[0][:200]
        log.error("%s %s: the database cannot be reached: %s", request.method, request.url.path, reason)
        return problem(503, "database-unavailable", "The database cannot be reached",
                       f"{request.method} {request.url.path} needs the database, which does not answer ({reason}); "
                       "nothing was changed. Retry when it is back: /readyz answers 200 then")

    app.add_exception_handler(OperationalError, database_unavailable)
    app.add_exception_handler(InterfaceError, database_unavailable)
