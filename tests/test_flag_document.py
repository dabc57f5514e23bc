"""All flags compile to one valid flagd document whose ring flags give each user their ring's variant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openfeature.contrib.tools.flagd.core import FlagdCore
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import Reason
from ringmaster_flagd import Evaluator

from cohorts.assign import CompiledCohortSet, assign, compile_cohort_set
from cohorts.cache import CompiledSetCache
from cohorts.flagd import ring_logic
from cohorts.spec import DEFAULT_RINGS, CohortSetSpec, default_cohort_set, parse_cohort_set
from cohorts.store import CohortStore
from rollout.flags.document import (
    EVERY_FLAG,
    RingEvaluator,
    Selector,
    compile_flags,
    flags_document,
    parse_selector,
    render,
    select_flags,
)
from rollout.flags.errors import InvalidSelector
from rollout.flags.spec import FlagSpec, RingSource, parse_flag
from rollout.flags.store import FlagStore, StoredFlag
from tests.shared_data import flagd_validator

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
EPOCH = 151
RINGS = {"default": list(DEFAULT_RINGS)}
DEFAULT_SET: CompiledCohortSet = compile_cohort_set(default_cohort_set(), version=1, compiled_at=NOW)
EVALUATORS = {RingSource("default"): RingEvaluator(DEFAULT_SET.rings, 1, EPOCH, ring_logic(DEFAULT_SET, EPOCH))}


def stored(document: dict[str, Any], version: int = 1) -> StoredFlag:
    return StoredFlag(document["key"], version, parse_flag(document, RINGS, {("default", 1): DEFAULT_RINGS}), NOW,
                      "ana", None)


def ring_flag(key: str = "new-checkout", **changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "key": key,
        "type": "boolean",
        "variants": {"on": True, "off": False},
        "defaultVariant": "off",
        "targeting": {"rings": {"cohortSet": "default", "variants": {"canary": "on", "early-adopter": "on"},
                                "otherwise": "off"}},
    }
    document.update(changes)
    return document


def evaluator_of(document: dict[str, Any]) -> FlagdCore:
    core = FlagdCore()
    core.set_flags(document)
    return core


def test_a_ring_mapped_flag_compiles_to_an_if_chain_over_the_sets_ring_evaluator() -> None:
    document = flags_document([stored(ring_flag(flagSet="web", metadata={"owner": "payments"}), version=4)],
                              EVALUATORS)
    assert document["flags"]["new-checkout"] == {
        "state": "ENABLED",
        "variants": {"on": True, "off": False},
        "defaultVariant": "off",
        "targeting": {"if": [{"in": [{"$ref": "ring-default"}, ["canary", "early-adopter"]]}, "on", "off"]},
        "metadata": {"owner": "payments", "flagVersion": 4, "flagSetId": "web", "cohortSet": "default",
                     "cohortSetVersion": 1, "rotationEpoch": EPOCH},
    }
    assert document["$evaluators"] == {"ring-default": ring_logic(DEFAULT_SET, EPOCH)}
    assert list(flagd_validator().iter_errors(document)) == []


def test_rings_are_grouped_by_variant_in_release_order() -> None:
    flag = ring_flag(type="string", variants={"new": "v2", "old": "v1", "beta": "v2-beta"}, defaultVariant="old",
                     targeting={"rings": {"cohortSet": "default", "variants": {
                         "stable": "new", "canary": "beta", "early-adopter": "new"}}})
    targeting = flags_document([stored(flag)], EVALUATORS)["flags"]["new-checkout"]["targeting"]
    reference = {"$ref": "ring-default"}
    assert targeting == {"if": [{"in": [reference, ["canary"]]}, "beta",
                                {"in": [reference, ["early-adopter", "stable"]]}, "new", None]}


def test_the_stock_evaluator_gives_every_user_the_variant_of_the_ring_assign_puts_them_in() -> None:
    mapping = {"canary": "on", "early-adopter": "on"}
    core = evaluator_of(flags_document([stored(ring_flag())], EVALUATORS))
    teams: list[dict[str, Any]] = [{"team": "staff"}, {"team": "sales"}, {}]
    for number in range(3000):
        attributes = teams[number % 3]
        ring = assign(DEFAULT_SET, {"targetingKey": f"user-{number}", **attributes}, EPOCH).ring
        result = core.resolve_boolean_value("new-checkout", False, EvaluationContext(f"user-{number}", attributes))
        assert (result.variant, result.reason) == (mapping.get(ring, "off"), Reason.TARGETING_MATCH)


def test_a_ring_without_a_mapping_gets_otherwise_or_else_the_default_variant() -> None:
    unmapped = ring_flag(targeting={"rings": {"cohortSet": "default", "variants": {"canary": "on"}}})
    nobody = ring_flag(key="nobody-yet", targeting={"rings": {"cohortSet": "default", "otherwise": "off"}})
    core = evaluator_of(flags_document([stored(unmapped), stored(nobody)], EVALUATORS))
    anonymous = EvaluationContext(None, {})
    assert core.resolve_boolean_value("new-checkout", True, anonymous).reason == Reason.DEFAULT
    staff = EvaluationContext("ana", {"team": "staff"})
    assert core.resolve_boolean_value("new-checkout", False, staff).variant == "on"
    result = core.resolve_boolean_value("nobody-yet", True, staff)
    assert (result.variant, result.reason) == ("off", Reason.TARGETING_MATCH)


def test_raw_targeting_is_served_as_written_with_the_evaluators_it_refers_to() -> None:
    logic = {"if": [{"==": [{"$ref": "ring-default"}, "canary"]}, "blue", "grey"]}
    flag = {"key": "color", "type": "string", "variants": {"blue": "#00f", "grey": "#888"}, "defaultVariant": "grey",
            "targeting": {"jsonLogic": logic}}
    static = {"key": "limit", "type": "integer", "variants": {"low": 10, "high": 100}, "defaultVariant": "low"}
    document = flags_document([stored(flag), stored(static)], EVALUATORS)
    assert document["flags"]["color"]["targeting"] == logic
    assert "targeting" not in document["flags"]["limit"]
    assert set(document["$evaluators"]) == {"ring-default"}
    core = evaluator_of(document)
    assert core.resolve_string_value("color", "", EvaluationContext("ana", {"team": "staff"})).value == "#00f"
    assert core.resolve_integer_value("limit", 0, EvaluationContext("ana")).reason == Reason.STATIC


def test_a_document_without_ring_flags_carries_no_evaluators() -> None:
    static = {"key": "limit", "type": "integer", "variants": {"low": 10}, "defaultVariant": "low"}
    document = flags_document([stored(static)], EVALUATORS)
    assert "$evaluators" not in document
    assert flags_document([], {}) == {"$schema": "https://flagd.dev/schema/v0/flags.json", "flags": {}}


def test_a_disabled_flag_is_served_disabled() -> None:
    core = evaluator_of(flags_document([stored(ring_flag(state="DISABLED"))], EVALUATORS))
    result = core.resolve_boolean_value("new-checkout", True, EvaluationContext("ana", {"team": "staff"}))
    assert (result.value, result.reason) == (True, Reason.DISABLED)


def web_and_mobile() -> dict[str, Any]:
    return flags_document([
        stored(ring_flag("web-checkout", flagSet="web")),
        stored({"key": "mobile-theme", "type": "string", "variants": {"dark": "dark"}, "defaultVariant": "dark",
                "flagSet": "mobile"}),
        stored({"key": "everywhere", "type": "boolean", "variants": {"on": True}, "defaultVariant": "on"}),
    ], EVALUATORS)


def test_a_flag_set_selector_serves_that_sets_flags_and_only_the_evaluators_they_use() -> None:
    document = web_and_mobile()
    mobile = select_flags(document, parse_selector("flagSetId=mobile"))
    assert (list(mobile["flags"]), mobile["metadata"]) == (["mobile-theme"], {"flagSetId": "mobile"})
    assert "$evaluators" not in mobile
    web = select_flags(document, parse_selector(" flagSetId = web "))
    assert list(web["flags"]) == ["web-checkout"] and set(web["$evaluators"]) == {"ring-default"}
    assert list(select_flags(document, parse_selector("flagSetId="))["flags"]) == ["everywhere"]
    assert select_flags(document, parse_selector(None)) == document
    assert list(flagd_validator().iter_errors(web)) == []


@pytest.mark.parametrize("text", ["source=flags.json", "web", "flagSet=web"])
def test_selectors_other_than_flag_sets_are_refused_with_the_syntax(text: str) -> None:
    with pytest.raises(InvalidSelector, match="use 'flagSetId=<flag set>'"):
        parse_selector(text)


def test_the_etag_is_a_hash_of_the_content_and_nothing_else() -> None:
    document = web_and_mobile()
    reordered = dict(reversed(list(document.items())))
    assert render(document) == render(reordered)
    assert "\n" not in render(document).text
    assert render(document).quoted_etag == f'"{render(document).etag}"'
    changed = flags_document([stored(ring_flag(state="DISABLED"))], EVALUATORS)
    assert render(changed).etag != render(flags_document([stored(ring_flag())], EVALUATORS)).etag


ring_names = st.sampled_from([*DEFAULT_RINGS, "retired"])
variant_names = st.sampled_from(["a", "b", "c"])


@settings(max_examples=200, deadline=None)
@given(mapping=st.dictionaries(ring_names, variant_names), otherwise=st.none() | variant_names,
       default=st.none() | variant_names, context=st.fixed_dictionaries(
           {"targetingKey": st.text(max_size=6)}, optional={"team": st.sampled_from(["staff", "ops"])}))
def test_generated_ring_mappings_are_valid_flagd_and_serve_the_mapped_variant(
    mapping: dict[str, str], otherwise: str | None, default: str | None, context: dict[str, Any]
) -> None:
    # A ring the set has dropped since ("retired") stays in the stored mapping and never matches.
    spec = FlagSpec.model_validate({
        "key": "f", "type": "string", "variants": {"a": "A", "b": "B", "c": "C"}, "defaultVariant": default,
        "targeting": {"rings": {"cohortSet": "default", "variants": mapping, "otherwise": otherwise}}})
    document = flags_document([StoredFlag("f", 1, spec, NOW, "ana", None)], EVALUATORS)
    assert list(flagd_validator().iter_errors(document)) == []
    ring = assign(DEFAULT_SET, context, EPOCH).ring
    expected = mapping.get(ring, otherwise) or default
    attributes = {name: value for name, value in context.items() if name != "targetingKey"}
    result = evaluator_of(document).resolve_string_value("f", "code", EvaluationContext(context["targetingKey"],
                                                                                        attributes))
    assert (result.variant, result.value) == (expected, {"a": "A", "b": "B", "c": "C"}.get(expected or "", "code"))


def test_compiling_from_the_stores_uses_each_sets_current_version_and_epoch(store: CohortStore) -> None:
    flags = FlagStore(store.engine, store)
    flags.create_flag(FlagSpec.model_validate(ring_flag()), "ana")
    store.set_opt("default", "olga", "in", "olga")
    document = compile_flags(flags, CompiledSetCache(store), NOW)
    metadata = document["flags"]["new-checkout"]["metadata"]
    assert (metadata["cohortSetVersion"], metadata["rotationEpoch"]) == (1, EPOCH)
    core = evaluator_of(document)
    assert core.resolve_boolean_value("new-checkout", False, EvaluationContext("olga")).variant == "on"
    assert list(flagd_validator().iter_errors(document)) == []


# Version 2 of the default set pins ana, whom version 1 puts in canary as staff, to laggard.
def with_ana_pinned_to_laggard() -> CohortSetSpec:
    return parse_cohort_set({**default_cohort_set().to_document(), "pins": {"laggard": ["ana"]}})


PINNED_V2_SET = compile_cohort_set(with_ana_pinned_to_laggard(), version=2, compiled_at=NOW)
STAFF = {"team": "staff"}


def pinned_flag(key: str, version: int | None, epoch: int | None, **changes: Any) -> dict[str, Any]:
    flag = ring_flag(key, **changes)
    flag["targeting"]["rings"].update(version=version, epoch=epoch)
    return flag


def variant_of(document: dict[str, Any], key: str, targeting_key: str, attributes: dict[str, Any]) -> str | None:
    """The variant flagd's FlagdCore serves, checked to be the one the Ringmaster provider serves too."""
    flagd = evaluator_of(document).resolve_boolean_value(key, False, EvaluationContext(targeting_key, attributes))
    ringmaster = Evaluator()
    ringmaster.set_document(document)
    assert ringmaster.resolve(key, "boolean", False, attributes, targeting_key).variant == flagd.variant
    return flagd.variant


def test_a_pinned_mapping_reads_the_ring_evaluator_of_its_own_version_and_epoch() -> None:
    evaluators = {
        RingSource("default"): RingEvaluator(PINNED_V2_SET.rings, 2, EPOCH + 1, ring_logic(PINNED_V2_SET, EPOCH + 1)),
        RingSource("default", 1, EPOCH): EVALUATORS[RingSource("default")],
    }
    document = flags_document([stored(ring_flag("current")), stored(pinned_flag("rollout", 1, EPOCH))], evaluators)
    rollout = document["flags"]["rollout"]
    assert rollout["targeting"] == {
        "if": [{"in": [{"$ref": "ring-default.v1.e151"}, ["canary", "early-adopter"]]}, "on", "off"]}
    assert (rollout["metadata"]["cohortSetVersion"], rollout["metadata"]["rotationEpoch"]) == (1, EPOCH)
    current = document["flags"]["current"]["metadata"]
    assert (current["cohortSetVersion"], current["rotationEpoch"]) == (2, EPOCH + 1)
    assert document["$evaluators"] == {"ring-default": ring_logic(PINNED_V2_SET, EPOCH + 1),
                                       "ring-default.v1.e151": ring_logic(DEFAULT_SET, EPOCH)}
    assert list(flagd_validator().iter_errors(document)) == []
    assert variant_of(document, "rollout", "ana", STAFF) == "on"
    assert variant_of(document, "current", "ana", STAFF) == "off"


def test_the_document_of_unpinned_flags_does_not_change_when_a_pinned_flag_joins_it() -> None:
    alone = flags_document([stored(ring_flag())], EVALUATORS)
    evaluators = {**EVALUATORS, RingSource("default", 1, EPOCH - 3): RingEvaluator(
        DEFAULT_SET.rings, 1, EPOCH - 3, ring_logic(DEFAULT_SET, EPOCH - 3))}
    together = flags_document([stored(ring_flag()), stored(pinned_flag("rollout", 1, EPOCH - 3))], evaluators)
    assert together["flags"]["new-checkout"] == alone["flags"]["new-checkout"]
    assert together["$evaluators"]["ring-default"] == alone["$evaluators"]["ring-default"]
    assert flags_document([stored(ring_flag())], evaluators) == alone


def test_a_flag_set_selector_serves_a_pinned_flag_with_only_its_pinned_evaluator() -> None:
    evaluators = {**EVALUATORS, RingSource("default", 1, EPOCH): EVALUATORS[RingSource("default")]}
    document = flags_document([stored(ring_flag(flagSet="web")),
                               stored(pinned_flag("rollout", 1, EPOCH, flagSet="rollouts"))], evaluators)
    selected = select_flags(document, parse_selector("flagSetId=rollouts"))
    assert set(selected["$evaluators"]) == {"ring-default.v1.e151"}
    assert list(flagd_validator().iter_errors(selected)) == []


def test_a_pinned_flag_keeps_serving_the_pinned_versions_rings_after_the_cohort_set_changes(
    store: CohortStore,
) -> None:
    flags = FlagStore(store.engine, store)
    flags.create_flag(FlagSpec.model_validate(ring_flag("current")), "ana")
    flags.create_flag(FlagSpec.model_validate(pinned_flag("rollout", 1, EPOCH)), "ana")
    store.update_set(with_ana_pinned_to_laggard(), "olga")
    document = compile_flags(flags, CompiledSetCache(store), NOW)
    assert variant_of(document, "rollout", "ana", STAFF) == "on"
    assert variant_of(document, "current", "ana", STAFF) == "off"
    assert document["flags"]["rollout"]["metadata"]["cohortSetVersion"] == 1
    assert document["flags"]["current"]["metadata"]["cohortSetVersion"] == 2
    assert list(flagd_validator().iter_errors(document)) == []


def test_a_pinned_epoch_keeps_the_rotating_canary_of_that_epoch(store: CohortStore) -> None:
    canary_only = {"rings": {"cohortSet": "default", "variants": {"canary": "on"}, "otherwise": "off"}}
    flags = FlagStore(store.engine, store)
    flags.create_flag(FlagSpec.model_validate(ring_flag("current", targeting=canary_only)), "ana")
    flags.create_flag(FlagSpec.model_validate(pinned_flag("rollout", None, EPOCH, targeting=canary_only)), "ana")
    cache = CompiledSetCache(store)
    users = [f"user-{number}" for number in range(400)]

    def canary(document: dict[str, Any], key: str) -> set[str]:
        core = evaluator_of(document)
        return {user for user in users if core.resolve_boolean_value(key, False, EvaluationContext(user)).value}

    now, weeks_later = compile_flags(flags, cache, NOW), compile_flags(flags, cache, NOW + timedelta(weeks=4))
    assert weeks_later["flags"]["rollout"]["metadata"]["rotationEpoch"] == EPOCH
    assert weeks_later["flags"]["current"]["metadata"]["rotationEpoch"] == EPOCH + 4
    assert "ring-default.v1.e151" in weeks_later["$evaluators"] and canary(now, "rollout")
    assert canary(weeks_later, "rollout") == canary(now, "rollout") == canary(now, "current")
    assert canary(weeks_later, "current") != canary(now, "current")


def test_every_flag_selector_is_the_default() -> None:
    assert parse_selector("") == EVERY_FLAG == Selector(None)
