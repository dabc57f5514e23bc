"""Who may call which route: FastAPI dependencies that turn a bearer token into a Principal.

`require(role)` guards a route that changes something: 401 without a valid token, 403 when the
token's role is below `role`. `reader` guards the reads under /api/v1: open (ANONYMOUS) unless
RINGMASTER_READS_REQUIRE_TOKEN is set, when it is `require("viewer")`. A token sent to an open read
is still checked, so a bad one is never silently ignored. The routes for apps and scrapers (flagd,
OFREP, health, metrics, the OpenAPI document) take neither and stay open.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from rollout.api.problems import ApiProblem, problem, problems
from rollout.auth.tokens import ANONYMOUS, ROLES, Principal, Role, TokenStore, allows
from rollout.settings import ServiceSettings

__all__ = ["ANONYMOUS", "READ_PROBLEMS", "WRITE_PROBLEMS", "Admin", "Principal", "Puller", "Reader", "Releaser", "Role",
           "Unauthenticated", "Viewer", "install_auth_handlers", "reader", "require"]

REALM = 'Bearer realm="ringmaster"'
bearer = HTTPBearer(
    scheme_name="bearer", bearerFormat="rmt_...", auto_error=False,
    description="An API token from `ringmaster token create --name NAME --role ROLE`, sent as "
                "`Authorization: Bearer <token>`.",
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]

# What the guards answer, for the routes' OpenAPI `responses`: a read refuses only a bad (or, when reads are
# closed, a missing) token; every role may read, so a read is never 403.
READ_PROBLEMS = problems(401, s401="a token was sent that is unknown, revoked or not `Bearer <token>`, or reads "
                                   "need a token (RINGMASTER_READS_REQUIRE_TOKEN) and none was sent")
WRITE_PROBLEMS = problems(401, 403)


class Unauthenticated(ApiProblem):
    """401: no usable token. Answered with `WWW-Authenticate`, as RFC 9110 asks of a 401."""

    def __init__(self, detail: str, challenge: str) -> None:
        self.challenge = challenge
        super().__init__(401, "unauthenticated", "A valid API token is needed", detail)


def install_auth_handlers(app: FastAPI) -> None:
    @app.exception_handler(Unauthenticated)
    async def unauthenticated(request: Request, error: Unauthenticated) -> JSONResponse:
        response = problem(error.status, error.kind, error.title, error.detail)
        response.headers["WWW-Authenticate"] = error.challenge
        return response


def _at_least(role: Role) -> str:
    return f"the {role} role" if role == ROLES[-1] else f"the {role} role or above"


def _how_to_get_one(role: Role) -> str:
    return (f"an admin creates one with `ringmaster token create --name NAME --role {role}`; send it as "
            "`Authorization: Bearer <token>` (the CLI: `ringmaster --token` or RINGMASTER_TOKEN)")


def _authenticate(request: Request, credentials: HTTPAuthorizationCredentials | None, needed: Role) -> Principal:
    route = f"{request.method} {request.url.path}"
    if credentials is None:
        if "Authorization" in request.headers:
            raise Unauthenticated(f"{route}: the Authorization header must be `Bearer <token>`",
                                  f'{REALM}, error="invalid_request"')
        raise Unauthenticated(f"{route} needs an API token with {_at_least(needed)}; "
                              + _how_to_get_one(needed), REALM)
    tokens: TokenStore = request.app.state.tokens
    principal = tokens.verify(credentials.credentials)
    if principal is None:
        raise Unauthenticated(f"{route}: the API token is unknown or revoked; " + _how_to_get_one(needed),
                              f'{REALM}, error="invalid_token"')
    return principal


def require(role: Role) -> Callable[[Request, HTTPAuthorizationCredentials | None], Principal]:
    """A dependency answering the Principal of a token whose role is `role` or above."""

    def authorized(request: Request, credentials: Credentials) -> Principal:
        principal = _authenticate(request, credentials, role)
        if not allows(principal.role, role):
            raise ApiProblem(
                403, "forbidden", "The token's role is not enough",
                f"{request.method} {request.url.path} needs {_at_least(role)}; token {principal.name!r} "
                f"has the {principal.role} role. Ask for a token with the {role} role: " + _how_to_get_one(role),
            )
        return principal

    return authorized


_viewer = require("viewer")


def reader(request: Request, credentials: Credentials) -> Principal:
    """Open reads (ANONYMOUS without a token), unless the service requires a viewer token for them."""
    settings: ServiceSettings = request.app.state.settings
    if credentials is None and "Authorization" not in request.headers and not settings.reads_require_token:
        return ANONYMOUS
    return _viewer(request, credentials)


Reader = Annotated[Principal, Depends(reader)]
Viewer = Annotated[Principal, Depends(_viewer)]
Puller = Annotated[Principal, Depends(require("puller"))]
Releaser = Annotated[Principal, Depends(require("releaser"))]
Admin = Annotated[Principal, Depends(require("admin"))]
