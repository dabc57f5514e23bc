"""All flags, and the cohort evaluators they use, as one flagd flag-definition document.

A ring-mapped flag compiles to an `if` chain over its cohort set's ring evaluator,
`{"if": [{"in": [{"$ref": "ring-default"}, ["canary", "early-adopter"]]}, "on", "off"]}`, with
`$evaluators["ring-default"]` the ring logic `cohorts.flagd.ring_logic` writes for the set's
current version and rotation epoch. A mapping that pins a version or epoch reads an evaluator of
its own, `ring-default.v3.e12`, the set's ring logic at that version and epoch (a cohort set's
name has no dot, so it names no set's current evaluator). Raw JsonLogic targeting is served as
written. The document is valid against flagd's flags.json schema and is a function of what
evaluates and nothing else, so its content hash is its ETag and equal hashes mean equal behaviour.

`flags_document` and `select_flags` are pure; `compile_flags` reads the stores (through the
compiled-set cache) and calls them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cohorts.cache import CompiledSetCache
from cohorts.flagd import FLAGD_SCHEMA_URL, ring_flag_key, ring_logic
from cohorts.matchers import JsonLogic
from cohorts.rotation import epoch_at
from rollout.flags.errors import InvalidSelector
from rollout.flags.spec import JsonLogicTargeting, RingSource, RingTargeting, RingVariants
from rollout.flags.store import FlagStore, StoredFlag
from rollout.flags.targeting import references

ETAG_HEX_DIGITS = 32


@dataclass(frozen=True)
class RingEvaluator:
    """A cohort set's ring logic at one version and rotation epoch, with what a flag's metadata reports of it."""

    rings: tuple[str, ...]
    version: int
    epoch: int
    logic: JsonLogic


@dataclass(frozen=True)
class Rendering:
    """A document as served: one line of canonical JSON, and the ETag that is its content hash."""

    text: str
    etag: str

    @property
    def quoted_etag(self) -> str:
        return f'"{self.etag}"'


@dataclass(frozen=True)
class Selector:
    """flagd's `flagSetId=<id>` selector; `flag_set_id` None selects every flag, "" the flags in no set."""

    flag_set_id: str | None = None


EVERY_FLAG = Selector()


def evaluator_name(source: RingSource, evaluator: RingEvaluator) -> str:
    """`ring-<set>` for a set's current ring logic, `ring-<set>.v<version>.e<epoch>` for a pinned one."""
    name = ring_flag_key(source.cohort_set)
    return f"{name}.v{evaluator.version}.e{evaluator.epoch}" if source.pinned else name


def ring_targeting(mapping: RingVariants, evaluator: str, rings: Sequence[str]) -> JsonLogic:
    """The `if` chain over the named ring evaluator that gives each ring its variant, rings in release order.

    Rings the cohort set (at the version evaluated) does not have are left out: they would never match.
    """
    rings_by_variant: dict[str, list[str]] = {}
    for ring in rings:
        if ring in mapping.variants:
            rings_by_variant.setdefault(mapping.variants[ring], []).append(ring)
    reference = {"$ref": evaluator}
    branches: list[Any] = []
    for variant, variant_rings in rings_by_variant.items():
        branches += [{"in": [reference, variant_rings]}, variant]
    # A null result serves the defaultVariant, which is what an absent `otherwise` means.
    return {"if": [*branches, mapping.otherwise]}


def flag_definition(stored: StoredFlag, evaluators: Mapping[RingSource, RingEvaluator]) -> dict[str, Any]:
    """One flag as flagd defines it: state, variants, defaultVariant, targeting, metadata."""
    spec = stored.spec
    metadata: dict[str, Any] = {**spec.metadata, "flagVersion": stored.version}
    if spec.flag_set is not None:
        metadata["flagSetId"] = spec.flag_set
    definition: dict[str, Any] = {
        "state": spec.state,
        "variants": dict(spec.variants),
        "defaultVariant": spec.default_variant,
    }
    if isinstance(spec.targeting, RingTargeting):
        mapping = spec.targeting.rings
        evaluator = evaluators[mapping.source]
        definition["targeting"] = ring_targeting(mapping, evaluator_name(mapping.source, evaluator), evaluator.rings)
        metadata.update(cohortSet=mapping.cohort_set, cohortSetVersion=evaluator.version,
                        rotationEpoch=evaluator.epoch)
    elif isinstance(spec.targeting, JsonLogicTargeting) and spec.targeting.json_logic:
        definition["targeting"] = spec.targeting.json_logic
    definition["metadata"] = metadata
    return definition


def flags_document(flags: Sequence[StoredFlag], evaluators: Mapping[RingSource, RingEvaluator]) -> dict[str, Any]:
    """Every flag in one flagd document, with each ring evaluator a flag uses.

    `evaluators` must hold the source of every ring mapping (`RingVariants.source`):
    `RingSource("default")` is the set's current ring logic, `RingSource("default", 3, 12)` a pinned one.
    """
    definitions = {stored.key: flag_definition(stored, evaluators) for stored in sorted(flags, key=lambda f: f.key)}
    document: dict[str, Any] = {"$schema": FLAGD_SCHEMA_URL, "flags": definitions}
    # Only evaluators some targeting refers to: a set's pins and opt-ins are no one else's business.
    used = set().union(*(references(definition.get("targeting")) for definition in definitions.values()))
    shared = {evaluator_name(source, evaluator): evaluator.logic for source, evaluator in evaluators.items()}
    if used:
        document["$evaluators"] = {name: shared[name] for name in sorted(used) if name in shared}
    return document


def parse_selector(text: str | None) -> Selector:
    """flagd's selector syntax: empty for every flag, `flagSetId=<id>`, or `flagSetId=` for flags in no set."""
    if text is None or not text.strip():
        return EVERY_FLAG
    name, equals, value = text.strip().partition("=")
    if not equals or name.strip() != "flagSetId":
        raise InvalidSelector(text)
    return Selector(value.strip())


def select_flags(document: Mapping[str, Any], selector: Selector) -> dict[str, Any]:
    """The document with only the flags of the selected flag set, and the evaluators those use.

    As flagd does, the selected flag set's id is reflected in the document's metadata.
    """
    if selector.flag_set_id is None:
        return dict(document)
    flags = {
        key: definition
        for key, definition in document["flags"].items()
        if definition.get("metadata", {}).get("flagSetId", "") == selector.flag_set_id
    }
    selected: dict[str, Any] = {"$schema": document.get("$schema", FLAGD_SCHEMA_URL), "flags": flags}
    used = set().union(*(references(definition.get("targeting")) for definition in flags.values()))
    evaluators = {name: logic for name, logic in document.get("$evaluators", {}).items() if name in used}
    if evaluators:
        selected["$evaluators"] = evaluators
    if selector.flag_set_id:
        selected["metadata"] = {"flagSetId": selector.flag_set_id}
    return selected


def render(document: Mapping[str, Any]) -> Rendering:
    """Canonical JSON (sorted keys, no spaces, one line) and its SHA-256 prefix as the ETag."""
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return Rendering(text, hashlib.sha256(text.encode()).hexdigest()[:ETAG_HEX_DIGITS])


def compile_flags(flag_store: FlagStore, compiled_sets: CompiledSetCache, now: datetime) -> dict[str, Any]:
    """The document for the flags stored now, each ring evaluator at its pinned or else current version and epoch."""
    flags = flag_store.list_flags()
    evaluators: dict[RingSource, RingEvaluator] = {}
    for source in set().union(*(stored.spec.ring_sources() for stored in flags)):
        compiled = compiled_sets.get(source.cohort_set, source.version)
        epoch = source.epoch
        if epoch is None:
            epoch = epoch_at(compiled.split.rotation if compiled.split else None, now)
        evaluators[source] = RingEvaluator(compiled.rings, compiled.version, epoch, ring_logic(compiled, epoch))
    return flags_document(flags, evaluators)
