"""What the controller sees of the world, as plain immutable data: the input of `plan()`.

The shell builds these views from the informers' caches and the database; `plan()` reads nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cohorts.errors import SpecProblem
from rollout.controller.gating import ResolvedGate
from rollout.controller.status import RolloutStatus, parse_status

REVISION_LABEL = "ringmaster.dev/revision"
ROLLOUT_LABEL = "ringmaster.dev/rollout"
REQUEST_ANNOTATION = "ringmaster.dev/request"


@dataclass(frozen=True)
class StatefulSetView:
    name: str
    uid: str
    resource_version: str
    generation: int
    observed_generation: int
    replicas: int
    status_replicas: int
    ready_replicas: int
    current_revision: str | None
    update_revision: str | None
    owner_uids: frozenset[str]
    selector: Mapping[str, str]
    template: Mapping[str, Any]
    raw_spec: Mapping[str, Any]
    deleting: bool = False

    @property
    def settled(self) -> bool:
        """The StatefulSet controller has acted on the latest spec and every replica asked for is ready."""
        return (
            not self.deleting
            and self.observed_generation >= self.generation
            and self.status_replicas == self.replicas
            and self.ready_replicas == self.replicas
            and (self.current_revision is None or self.current_revision == self.update_revision)
        )

    def image_of(self, container: str | None) -> str | None:
        containers = self.template.get("spec", {}).get("containers", [])
        for candidate in containers:
            if container is None or candidate.get("name") == container:
                image = candidate.get("image")
                return image if isinstance(image, str) else None
        return None

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> StatefulSetView:
        metadata = obj.get("metadata", {})
        spec = obj.get("spec", {})
        status = obj.get("status") or {}
        return cls(
            name=metadata["name"],
            uid=metadata.get("uid", ""),
            resource_version=metadata.get("resourceVersion", ""),
            generation=int(metadata.get("generation", 0)),
            observed_generation=int(status.get("observedGeneration", 0)),
            replicas=int(spec.get("replicas", 1)),
            status_replicas=int(status.get("replicas", 0)),
            ready_replicas=int(status.get("readyReplicas", 0)),
            current_revision=status.get("currentRevision"),
            update_revision=status.get("updateRevision"),
            owner_uids=frozenset(ref.get("uid", "") for ref in metadata.get("ownerReferences") or []),
            selector=dict(spec.get("selector", {}).get("matchLabels") or {}),
            template=spec.get("template", {}),
            raw_spec=spec,
            deleting=metadata.get("deletionTimestamp") is not None,
        )


@dataclass(frozen=True)
class RolloutView:
    namespace: str
    name: str
    uid: str
    generation: int
    resource_version: str
    spec: Any
    status: RolloutStatus
    request: str | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> RolloutView:
        metadata = obj.get("metadata", {})
        return cls(
            namespace=metadata.get("namespace", ""),
            name=metadata["name"],
            uid=metadata.get("uid", ""),
            generation=int(metadata.get("generation", 0)),
            resource_version=metadata.get("resourceVersion", ""),
            spec=obj.get("spec"),
            status=parse_status(obj.get("status")),
            request=(metadata.get("annotations") or {}).get(REQUEST_ANNOTATION),
        )


@dataclass(frozen=True)
class CohortShares:
    """A cohort set as a new rollout would pin it: version, epoch and each ring's cumulative share."""

    version: int
    epoch: int
    source: str
    cumulative_shares: Mapping[str, float]


@dataclass(frozen=True)
class CohortView:
    """The cohort set a rollout names: its rings, and (when a rollout is about to start) its shares."""

    name: str
    rings: tuple[str, ...]
    shares: CohortShares | None = None


@dataclass(frozen=True)
class FlagView:
    """The rollout's flag as stored: its variants, and what its ring mapping turns on, pinned to what."""

    key: str
    variants: frozenset[str]
    cohort_set: str | None
    ring_variants: Mapping[str, str]
    otherwise: str | None
    version: int | None
    epoch: int | None

    def turns_on(self, on_rings: Sequence[str], on_variant: str, off_variant: str) -> bool:
        """Whether the flag gives `on_variant` to exactly `on_rings` and `off_variant` to every other ring."""
        return dict(self.ring_variants) == dict.fromkeys(on_rings, on_variant) and self.otherwise == off_variant


@dataclass(frozen=True)
class AndonView:
    """Whether the andon cord is pulled over this rollout, and why; `cause` is the Halted condition's
    reason: AndonPulled, or AndonStateUnknown when the cord cannot be read and counts as pulled."""

    pulled: bool = False
    reason: str = ""
    cause: str = "AndonPulled"


@dataclass(frozen=True)
class Observed:
    statefulsets: Mapping[str, StatefulSetView] = field(default_factory=dict)
    cohorts: CohortView | None = None
    cohort_error: str | None = None
    flag: FlagView | None = None
    flag_error: str | None = None
    gates: Mapping[str, tuple[ResolvedGate, ...]] = field(default_factory=dict)  # by ring
    gate_problems: tuple[SpecProblem, ...] = ()
