"""How large a request body may be: RINGMASTER_MAX_BODY_BYTES, and RINGMASTER_MAX_USAGE_BODY_BYTES for the
usage upload, whose batches of up to 10,000 rows are the API's largest.

A body announced larger by its Content-Length is refused with 413 before the route runs. A body without
one (chunked) is counted as it streams in, by Starlette's RequestBodyLimitMiddleware, and refused once
it passes the limit: no more than the limit is ever held. Both answers are problem documents naming
the limit and the setting that raises it.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.body_limit import RequestBodyLimitMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from rollout.api.problems import problem
from rollout.settings import ServiceSettings

USAGE_PATH = "/api/v1/usage"
CONTENT_TOO_LARGE = 413


@dataclass(frozen=True)
class BodyLimit:
    max_bytes: int
    setting: str  # the environment variable that sets it


@dataclass(frozen=True)
class BodyLimits:
    default: BodyLimit
    by_path: dict[str, BodyLimit]

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> BodyLimits:
        return cls(BodyLimit(settings.max_body_bytes, "RINGMASTER_MAX_BODY_BYTES"),
                   {USAGE_PATH: BodyLimit(settings.max_usage_body_bytes, "RINGMASTER_MAX_USAGE_BODY_BYTES")})

    def for_path(self, path: str) -> BodyLimit:
        return self.by_path.get(path, self.default)


def too_large(method: str, path: str, limit: BodyLimit) -> JSONResponse:
    hint = " (or send fewer rows a request)" if path == USAGE_PATH else ""
    return problem(CONTENT_TOO_LARGE, "content-too-large", "The request body is too large",
                   f"{method} {path}: the body is larger than {limit.max_bytes:,} bytes, the limit {limit.setting} "
                   f"sets; send a smaller body{hint}, or raise {limit.setting}")


def _declared_length(scope: Scope) -> int | None:
    raw = Headers(scope=scope).get("content-length")
    return int(raw) if raw is not None and raw.isdigit() else None


class RequestBodyLimits:
    """ASGI middleware: the limit for the request's path, checked on Content-Length first, then as it streams."""

    def __init__(self, app: ASGIApp, limits: BodyLimits) -> None:
        self.app = app
        self.limits = limits
        self.counted = {limit: RequestBodyLimitMiddleware(app, limit.max_bytes)
                        for limit in (limits.default, *limits.by_path.values())}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.for_path(scope["path"])
        declared = _declared_length(scope)
        if declared is not None and declared > limit.max_bytes:
            await too_large(scope["method"], scope["path"], limit)(scope, receive, send)
            return
        await self.counted[limit](scope, receive, send)


def install_body_limits(app: FastAPI, limits: BodyLimits) -> None:
    app.add_middleware(RequestBodyLimits, limits=limits)

    # A streamed body that passes its limit is refused where the route reads it: Starlette raises a 413
    # HTTPException there, answered here as a problem document.
    @app.exception_handler(CONTENT_TOO_LARGE)
    async def content_too_large(request: Request, error: HTTPException) -> JSONResponse:
        return too_large(request.method, request.url.path, limits.for_path(request.url.path))
