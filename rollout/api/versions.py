"""Versioned resources over HTTP: the version as ETag, and If-Match naming the version a change is based on."""

from __future__ import annotations

import re

from fastapi.responses import JSONResponse
from pydantic import BaseModel

from rollout.api.problems import ApiProblem


def versioned_response(
    view: BaseModel, version: int, status_code: int = 200, location: str | None = None
) -> JSONResponse:
    headers = {"ETag": f'"{version}"'}
    if location:
        headers["Location"] = location
    return JSONResponse(view.model_dump(mode="json", by_alias=True), status_code=status_code, headers=headers)


def expected_version(if_match: str | None, resource: str) -> int | None:
    """The version an If-Match header names (`"3"` or `W/"3"`); None without one."""
    if if_match is None:
        return None
    text = if_match.strip().removeprefix("W/").strip('"')
    # ASCII digits only: str.isdigit() also takes '²', which int() refuses, and a version has at most 10 digits.
    if not re.fullmatch(r"[0-9]{1,10}", text):
        raise ApiProblem(
            400, "invalid-request", "The request is not valid",
            f"If-Match: {if_match!r} is not a {resource} version; send the ETag of a GET, e.g. '\"3\"'",
            [{"in": "header", "field": "If-Match", "message": "expected a version such as \"3\""}],
        )
    return int(text)
