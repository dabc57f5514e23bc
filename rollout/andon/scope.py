"""What a pull of the andon cord stops: every rollout, one namespace's, or one rollout (pure)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from cohorts.spec import NAME_PATTERN

ScopeKind = Literal["global", "namespace", "rollout"]
MIN_REASON, MAX_REASON = 3, 500


class Scope(BaseModel):
    """`{}` or `{"kind": "global"}`: every rollout; `{"namespace": "shop"}`: that namespace's;
    `{"namespace": "shop", "rollout": "web"}`: that one rollout."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, alias_generator=to_camel)

    kind: ScopeKind = "global"
    namespace: str | None = Field(default=None, pattern=NAME_PATTERN)
    rollout: str | None = Field(default=None, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")

    @model_validator(mode="before")
    @classmethod
    def _infer_kind(cls, raw: object) -> object:
        if isinstance(raw, dict) and "kind" not in raw:
            kind = "rollout" if raw.get("rollout") else "namespace" if raw.get("namespace") else "global"
            return {**raw, "kind": kind}
        return raw

    @model_validator(mode="after")
    def _complete(self) -> Scope:
        if self.kind == "global" and (self.namespace or self.rollout):
            raise ValueError("a global pull names no namespace or rollout; leave them out, or say kind namespace "
                             "or rollout")
        if self.kind == "namespace" and (not self.namespace or self.rollout):
            raise ValueError("a namespace pull names the namespace and no rollout")
        if self.kind == "rollout" and not (self.namespace and self.rollout):
            raise ValueError("a rollout pull names the namespace and the rollout, e.g. "
                             '{"namespace": "shop", "rollout": "web"}')
        return self

    def covers(self, namespace: str, name: str) -> bool:
        if self.kind == "global":
            return True
        if self.kind == "namespace":
            return namespace == self.namespace
        return (namespace, name) == (self.namespace, self.rollout)

    def __str__(self) -> str:
        if self.kind == "global":
            return "every rollout"
        if self.kind == "namespace":
            return f"namespace {self.namespace}"
        return f"rollout {self.namespace}/{self.rollout}"


def check_reason(reason: str) -> str:
    """The reason as stored: trimmed, 3 to 500 characters; ValueError saying what is wrong."""
    trimmed = reason.strip()
    if not MIN_REASON <= len(trimmed) <= MAX_REASON:
        raise ValueError(f"reason must be {MIN_REASON} to {MAX_REASON} characters (it has {len(trimmed)}); say "
                         "why, e.g. 'checkout errors up in eu-west'")
    return trimmed
