"""API tokens and roles: who may call the API, and what each role may do.

A token is `rmt_` and 43 random URL-safe characters; only its SHA-256 is stored, so the database
never holds a token that works. Verifying looks the hash up: what is compared is a digest, so the
time a comparison takes tells nothing about a token. The roles are ranked: each may do all that the ones below it may.
Creating and revoking a token are written to the audit log with the rest of the changes.
"""

from __future__ import annotations

import builtins
import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, get_args

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError

from cohorts.db import read_session, transaction
from cohorts.tables import ACTOR_LENGTH, AuditRow
from rollout.auth.tables import ApiTokenRow

Role = Literal["viewer", "puller", "releaser", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)  # in rank order, lowest first
ROLE_DUTIES: dict[Role, str] = {
    "viewer": "read cohort sets, flags, rollouts, the audit log and the andon cord",
    "puller": "what a viewer may, and pull the andon cord",
    "releaser": "what a puller may, and release the andon cord",
    "admin": "everything: change cohort sets, opt choices, usage and flags, steer rollouts, pull and release",
}
TOKEN_PREFIX = "rmt_"
CACHE_SECONDS = 5.0  # how long a verified token is trusted without asking the database: revocation's delay
ANONYMOUS_NAME = "anonymous"


def allows(held: Role | None, needed: Role) -> bool:
    """Whether a principal holding `held` (None: no token) may do what needs `needed`."""
    return held is not None and ROLES.index(held) >= ROLES.index(needed)


@dataclass(frozen=True)
class Principal:
    """Who makes a request: a token's name and role, or ANONYMOUS (role None) on an open read."""

    name: str
    role: Role | None

    @property
    def anonymous(self) -> bool:
        return self.role is None


ANONYMOUS = Principal(ANONYMOUS_NAME, None)


@dataclass(frozen=True)
class TokenInfo:
    """A token as listed: everything but the token, which is never stored."""

    name: str
    role: Role
    created_at: datetime
    created_by: str
    revoked_at: datetime | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


class AuthError(Exception):
    """Base of every error the auth package raises; each message says what to do."""


class UnknownRole(AuthError):
    def __init__(self, role: str) -> None:
        super().__init__(f"{role!r} is not a role; use one of {', '.join(ROLES)}")


class InvalidTokenName(AuthError):
    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"token name {name!r} {why}; name the person or system that will use it, "
                         "e.g. ana or ci-deploy")


class TokenNameTaken(AuthError):
    def __init__(self, name: str) -> None:
        super().__init__(f"a token named {name!r} exists (names are never reused, even once revoked, so the audit "
                         "log names one holder); choose another name, e.g. with a date: "
                         f"{name}-{datetime.now(UTC):%Y%m%d}")


class TokenNotFound(AuthError):
    def __init__(self, name: str) -> None:
        super().__init__(f"there is no token named {name!r}; `ringmaster token list` shows them")


def check_role(role: str) -> Role:
    for known in ROLES:
        if role == known:
            return known
    raise UnknownRole(role)


def _check_name(name: str) -> str:
    if not name.strip():
        raise InvalidTokenName(name, "is empty")
    if name != name.strip() or any(not character.isprintable() for character in name):
        raise InvalidTokenName(name, "has leading or trailing spaces or unprintable characters")
    if len(name) > ACTOR_LENGTH:
        raise InvalidTokenName(name[:40] + "...", f"is longer than {ACTOR_LENGTH} characters")
    if name == ANONYMOUS_NAME:
        raise InvalidTokenName(name, "is what requests without a token are called")
    return name


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _info(row: ApiTokenRow) -> TokenInfo:
    return TokenInfo(row.name, check_role(row.role), row.created_at, row.created_by, row.revoked_at)


class TokenStore:
    """Tokens in the `api_tokens` table, with a small cache of verified ones (CACHE_SECONDS)."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 cache_seconds: float = CACHE_SECONDS) -> None:
        self.engine = engine
        self.clock = clock
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        # sha256 -> (principal, monotonic expiry). Only tokens that verified are kept, so the cache is
        # as large as the set of real tokens in use, whatever strangers send.
        self._verified: dict[str, tuple[Principal, float]] = {}

    def create(self, name: str, role: str, created_by: str) -> tuple[Principal, str]:
        """A new token for `name` with `role`; the token is returned this once and never stored."""
        principal = Principal(_check_name(name), check_role(role))
        if not created_by.strip() or len(created_by) > ACTOR_LENGTH:
            raise AuthError(f"who creates the token must be named in 1 to {ACTOR_LENGTH} characters")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = self.clock()
        try:
            with transaction(self.engine) as session:
                session.add(ApiTokenRow(name=name, role=role, token_sha256=token_sha256(token), created_at=now,
                                        created_by=created_by, revoked_at=None))
                session.flush()
                session.add(AuditRow.record(now, created_by, "token.create", f"token/{name}", None,
                                            {"name": name, "role": role}))
        except IntegrityError as error:
            raise TokenNameTaken(name) from error
        return principal, token

    def verify(self, token: str) -> Principal | None:
        """The token's principal; None for a token that is unknown or revoked."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        digest = token_sha256(token)
        with self._lock:
            cached = self._verified.get(digest)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        query = select(ApiTokenRow).where(ApiTokenRow.token_sha256 == digest, ApiTokenRow.revoked_at.is_(None))
        with read_session(self.engine) as session:
            row = session.scalars(query).first()
            principal = None if row is None else Principal(row.name, check_role(row.role))
        with self._lock:
            if principal is None:
                self._verified.pop(digest, None)
            else:
                self._verified[digest] = (principal, time.monotonic() + self.cache_seconds)
        return principal

    def list(self) -> builtins.list[TokenInfo]:
        """Every token ever made, revoked ones included, oldest first."""
        with read_session(self.engine) as session:
            return [_info(row) for row in session.scalars(select(ApiTokenRow).order_by(ApiTokenRow.id))]

    def revoke(self, name: str, revoked_by: str) -> TokenInfo:
        """Revoke the token `name`; it stops working at once here, within CACHE_SECONDS on other replicas.
        Revoking a revoked token changes nothing."""
        now = self.clock()
        with transaction(self.engine) as session:
            row = session.scalars(select(ApiTokenRow).where(ApiTokenRow.name == name).with_for_update()).first()
            if row is None:
                raise TokenNotFound(name)
            if row.revoked_at is None:
                row.revoked_at = now
                session.add(AuditRow.record(now, revoked_by, "token.revoke", f"token/{name}", {"role": row.role},
                                            {"role": row.role, "revokedAt": now.isoformat()}))
            info = _info(row)
            digest = row.token_sha256
        with self._lock:
            self._verified.pop(digest, None)
        return info
