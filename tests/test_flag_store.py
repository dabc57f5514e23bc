"""The flag store on SQLite and PostgreSQL: versions, enable and disable, refusals that write nothing, audit."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from cohorts.spec import default_cohort_set
from cohorts.store import AuditRecord, CohortStore
from rollout.flags.errors import FlagExists, FlagNotFound, FlagVersionConflict, InvalidFlag
from rollout.flags.spec import FlagSpec
from rollout.flags.store import FlagStore

NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)


@pytest.fixture
def flags(store: CohortStore) -> Iterator[FlagStore]:
    yield FlagStore(store.engine, store, clock=lambda: NOW)


def checkout(**changes: Any) -> FlagSpec:
    document: dict[str, Any] = {
        "key": "new-checkout",
        "type": "boolean",
        "variants": {"on": True, "off": False},
        "defaultVariant": "off",
        "targeting": {"rings": {"cohortSet": "default", "variants": {"canary": "on"}, "otherwise": "off"}},
    }
    document.update(changes)
    return FlagSpec.model_validate(document)


def flag_records(store: CohortStore) -> list[AuditRecord]:
    return [record for record in store.audit_log() if record.subject.startswith("flag/")]


def test_a_new_flag_is_version_1_and_its_creation_is_audited(store: CohortStore, flags: FlagStore) -> None:
    stored = flags.create_flag(checkout(), "ana", "first cut")
    assert (stored.key, stored.version, stored.created_by, stored.comment) == ("new-checkout", 1, "ana", "first cut")
    assert flags.get_flag("new-checkout") == stored
    assert [flag.key for flag in flags.list_flags()] == ["new-checkout"]
    [created] = flag_records(store)
    assert (created.action, created.subject, created.actor, created.at) == ("flag.create", "flag/new-checkout",
                                                                            "ana", NOW)
    assert created.before is None and created.after == checkout().to_document()


def test_every_update_is_a_new_version_and_old_versions_stay_readable(flags: FlagStore) -> None:
    flags.create_flag(checkout(), "ana")
    promoted = checkout(targeting={"rings": {"cohortSet": "default", "otherwise": "off",
                                             "variants": {"canary": "on", "early-adopter": "on"}}})
    assert flags.update_flag(promoted, "ana", expected_version=1).version == 2
    assert flags.get_flag("new-checkout", version=1).spec == checkout()
    assert flags.get_flag("new-checkout").spec == promoted
    assert [stored.version for stored in flags.list_versions("new-checkout")] == [1, 2]


def test_an_update_from_a_stale_version_is_refused_and_changes_nothing(store: CohortStore, flags: FlagStore) -> None:
    flags.create_flag(checkout(), "ana")
    flags.update_flag(checkout(description="one"), "ana", expected_version=1)
    with pytest.raises(FlagVersionConflict, match="is at version 2, not 1"):
        flags.update_flag(checkout(description="two"), "bob", expected_version=1)
    assert flags.get_flag("new-checkout").spec.description == "one"
    assert [record.actor for record in flag_records(store)] == ["ana", "ana"]


def test_disabling_is_a_new_version_and_disabling_again_changes_nothing(store: CohortStore, flags: FlagStore) -> None:
    flags.create_flag(checkout(), "ana")
    disabled = flags.set_state("new-checkout", "DISABLED", "oncall", "incident 42")
    assert (disabled.version, disabled.spec.state, disabled.comment) == (2, "DISABLED", "incident 42")
    assert flags.set_state("new-checkout", "DISABLED", "oncall").version == 2
    enabled = flags.set_state("new-checkout", "ENABLED", "ana")
    assert (enabled.version, enabled.spec) == (3, checkout())
    assert [record.action for record in flag_records(store)] == ["flag.enable", "flag.disable", "flag.create"]
    assert flag_records(store)[1].before == checkout().to_document()


def test_a_flag_can_be_disabled_after_its_cohort_set_dropped_the_ring_it_maps(
    store: CohortStore, flags: FlagStore
) -> None:
    flags.create_flag(checkout(), "ana")
    renamed = default_cohort_set().model_copy(update={"rings": ["pilot", "early-adopter", "stable", "laggard"],
                                                     "rules": [], "split": None})
    store.update_set(renamed, "ana")
    with pytest.raises(InvalidFlag, match="'canary' is not a ring of cohort set 'default'"):
        flags.update_flag(checkout(description="again"), "ana")
    assert flags.set_state("new-checkout", "DISABLED", "oncall").spec.state == "DISABLED"


def test_an_invalid_flag_writes_nothing_and_audits_nothing(store: CohortStore, flags: FlagStore) -> None:
    marker = store.change_marker()
    with pytest.raises(InvalidFlag) as raised:
        flags.create_flag(checkout(variants={"on": "yes", "off": False},
                                   targeting={"rings": {"cohortSet": "mobile", "variants": {"canary": "on"}}}), "ana")
    assert {problem.field for problem in raised.value.problems} == {"variants.on", "targeting.rings.cohortSet"}
    assert flags.list_flags() == []
    assert store.change_marker() == marker


def test_keys_are_unique_and_unknown_keys_are_not_found(flags: FlagStore) -> None:
    flags.create_flag(checkout(), "ana")
    with pytest.raises(FlagExists):
        flags.create_flag(checkout(), "bob")
    with pytest.raises(FlagNotFound, match="flag 'nope' does not exist"):
        flags.get_flag("nope")
    with pytest.raises(FlagNotFound, match="version 9 of flag 'new-checkout'"):
        flags.get_flag("new-checkout", version=9)
    with pytest.raises(FlagNotFound):
        flags.update_flag(checkout(key="nope"), "ana")
    with pytest.raises(FlagNotFound):
        flags.set_state("nope", "DISABLED", "ana")
    with pytest.raises(FlagNotFound):
        flags.list_versions("nope")


def test_the_change_marker_moves_with_every_flag_change(store: CohortStore, flags: FlagStore) -> None:
    markers = [store.change_marker()]
    flags.create_flag(checkout(), "ana")
    markers.append(store.change_marker())
    flags.update_flag(checkout(description="v2"), "ana")
    markers.append(store.change_marker())
    flags.set_state("new-checkout", "DISABLED", "ana")
    markers.append(store.change_marker())
    assert markers == sorted(set(markers))


def test_flags_are_listed_by_key_at_their_current_version(flags: FlagStore) -> None:
    for key in ("zebra", "alpha", "mid"):
        flags.create_flag(checkout(key=key), "ana")
    flags.update_flag(checkout(key="mid", description="v2"), "ana")
    assert [(stored.key, stored.version) for stored in flags.list_flags()] == [("alpha", 1), ("mid", 2), ("zebra", 1)]
