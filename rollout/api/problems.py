"""Errors as RFC 9457 problem documents (`application/problem+json`) naming each field at fault."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from cohorts.errors import (
    CohortError,
    CohortSetExists,
    CohortSetNotFound,
    InvalidCohortSet,
    InvalidUsage,
    MaterializationLimitExceeded,
    OptNotOffered,
    VersionConflict,
)
from rollout.flags.errors import (
    FlagError,
    FlagExists,
    FlagNotFound,
    FlagVersionConflict,
    InvalidFlag,
    InvalidSelector,
)

PROBLEM_TYPES = "https://ringmaster.dev/problems/"
PROBLEM_JSON = "application/problem+json"


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


def field_path(location: Sequence[int | str]) -> str:
    """('body', 'rules', 0, 'when', 'AttributeCondition', 'value') -> 'rules[0].when.value'."""
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part[:1].isupper() or part.startswith("function-"):
            continue  # pydantic's name for a union member, not a field the user wrote
        else:
            path += f".{part}" if path else part
    return path


def _validation_errors(raw_errors: Sequence[Any]) -> list[dict[str, str]]:
    errors = []
    for error in raw_errors:
        location = list(error.get("loc", ()))
        where = str(location.pop(0)) if location and location[0] in ("body", "query", "path", "header") else "body"
        message = str(error.get("msg", "is invalid")).removeprefix("Value error, ")
        errors.append({"in": where, "field": field_path(location) or where, "message": message})
    return errors


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = _validation_errors(error.errors())
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
