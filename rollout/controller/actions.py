"""What `plan()` asks the shell to do: small immutable records, executed in order by `act.py`.

Every write names the resourceVersion it was planned against, so a write planned on a stale view,
or by a controller that is no longer the leader, fails instead of undoing someone else's work.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from rollout.gates.verdicts import Measurement


@dataclass(frozen=True)
class CreateStatefulSet:
    name: str
    manifest: Mapping[str, Any]


@dataclass(frozen=True)
class ScaleStatefulSet:
    name: str
    replicas: int
    resource_version: str


@dataclass(frozen=True)
class DeleteStatefulSet:
    name: str
    uid: str
    resource_version: str


@dataclass(frozen=True)
class SetFlagRings:
    """Turn the rollout's flag on for exactly `on_rings` (off for every other ring), pinned."""

    key: str
    cohort_set: str
    version: int
    epoch: int
    on_rings: tuple[str, ...]
    on_variant: str
    off_variant: str
    create: bool


@dataclass(frozen=True)
class RecordEvent:
    """A Kubernetes Event on the Rollout, and a row of its history in the database."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str
    revision: str | None = None
    ring: str | None = None
    sequence: int | None = None


@dataclass(frozen=True)
class ClearRequest:
    """Remove the handled `ringmaster.dev/request` annotation (if it still holds this value)."""

    value: str


@dataclass(frozen=True)
class RecordGateResult:
    """Keep a gate's measurement in the database (the status holds only the latest per gate)."""

    measurement: Measurement
    sequence: int
    revision: str


Action = (CreateStatefulSet | ScaleStatefulSet | DeleteStatefulSet | SetFlagRings | RecordEvent | ClearRequest
          | RecordGateResult)
