"""API tokens for tests: every change to the service needs one, so tests that change things make one first."""

from __future__ import annotations

from cohorts.db import make_engine
from rollout.auth.tokens import Role, TokenStore

ADMIN_NAME = "ana@example.com"


def create_token(database_url: str, name: str = ADMIN_NAME, role: Role = "admin") -> str:
    """A new token in the database at `database_url` (migrated already); changes made with it are `name`'s."""
    engine = make_engine(database_url)
    try:
        return TokenStore(engine).create(name, role, "tests")[1]
    finally:
        engine.dispose()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def authorized(database_url: str, name: str = ADMIN_NAME, role: Role = "admin") -> dict[str, str]:
    """Headers carrying a new token: an admin named `name` unless a role is given."""
    return bearer(create_token(database_url, name, role))
