"""A flag is checked field by field, and every problem names its field; raw targeting is checked like flagd's schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft7Validator
from pydantic import ValidationError
from referencing import Registry, Resource

from rollout.flags.errors import InvalidFlag
from rollout.flags.spec import FlagSpec, RingSource, parse_flag
from rollout.flags.targeting import targeting_problems
from tests.shared_data import shared_dir

RINGS = {"default": ["canary", "early-adopter", "stable", "laggard"], "web": ["insiders", "everyone"]}


def checkout(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "key": "new-checkout",
        "type": "boolean",
        "variants": {"on": True, "off": False},
        "defaultVariant": "off",
        "targeting": {"rings": {"cohortSet": "default", "variants": {"canary": "on", "early-adopter": "on"},
                                "otherwise": "off"}},
    }
    document.update(changes)
    return document


def problems_of(document: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(InvalidFlag) as raised:
        parse_flag(document, RINGS)
    return {problem.field: problem.message for problem in raised.value.problems}


def test_a_ring_mapped_flag_names_the_cohort_set_it_reads_and_round_trips() -> None:
    spec = parse_flag(checkout(flagSet="web", metadata={"team": "payments", "tier": 1, "beta": True}), RINGS)
    assert spec.cohort_sets() == {"default"}
    assert spec.state == "ENABLED"
    assert parse_flag(spec.to_document(), RINGS) == spec


@pytest.mark.parametrize(
    ("flag_type", "good", "bad", "fragment"),
    [
        ("boolean", True, "yes", "true or false"),
        ("string", "blue", 3, "a string"),
        ("integer", 3, 3.5, "a whole number"),
        ("integer", 3, True, "a whole number"),
        ("float", 0.5, "0.5", "a number"),
        ("object", {"color": "red"}, ["red"], "a JSON object"),
    ],
)
def test_every_variant_must_be_of_the_flags_type(flag_type: str, good: Any, bad: Any, fragment: str) -> None:
    document = {"key": "f", "type": flag_type, "variants": {"good": good, "bad": bad}}
    problems = problems_of(document)
    assert list(problems) == ["variants.bad"]
    assert f"the flag's type is {flag_type}" in problems["variants.bad"] and fragment in problems["variants.bad"]


def test_float_variants_written_as_whole_numbers_are_served_as_floats() -> None:
    spec = parse_flag({"key": "price", "type": "float", "variants": {"low": 1, "high": 2.5}}, RINGS)
    assert spec.variants == {"low": 1.0, "high": 2.5}
    assert json.dumps(spec.to_document()["variants"]) == '{"low": 1.0, "high": 2.5}'


def test_the_default_variant_is_a_variant_or_none() -> None:
    assert problems_of(checkout(defaultVariant="of")) == {
        "defaultVariant": "'of' is not one of the variants ['off', 'on']"
    }
    assert parse_flag(checkout(defaultVariant=None), RINGS).default_variant is None


def test_a_ring_mapping_names_existing_rings_and_variants() -> None:
    problems = problems_of(checkout(targeting={"rings": {
        "cohortSet": "default", "variants": {"canary": "on", "beta": "on", "stable": "onn"}, "otherwise": "offf"}}))
    assert set(problems) == {"targeting.rings.variants.beta", "targeting.rings.variants.stable",
                             "targeting.rings.otherwise"}
    assert "'beta' is not a ring of cohort set 'default'" in problems["targeting.rings.variants.beta"]


def test_a_ring_mapping_needs_an_existing_cohort_set() -> None:
    problems = problems_of(checkout(targeting={"rings": {"cohortSet": "mobile", "variants": {"canary": "on"}}}))
    assert problems == {"targeting.rings.cohortSet":
                        "cohort set 'mobile' does not exist; list them with `ringmaster cohort list`"}


def test_a_mapping_with_no_rings_yet_is_a_flag_nobody_gets() -> None:
    spec = parse_flag(checkout(targeting={"rings": {"cohortSet": "default", "otherwise": "off"}}), RINGS)
    assert spec.cohort_sets() == {"default"}


# Version 1 of `default` had a `beta` ring that the current version dropped.
VERSION_RINGS = {("default", 1): ["canary", "beta", "stable"], ("default", 2): RINGS["default"]}


def pinned(version: int | None, epoch: int | None, variants: dict[str, str] | None = None) -> dict[str, Any]:
    return checkout(targeting={"rings": {"cohortSet": "default", "version": version, "epoch": epoch,
                                         "variants": variants or {"canary": "on"}, "otherwise": "off"}})


def test_a_pinned_mapping_reads_its_version_and_epoch_and_round_trips() -> None:
    spec = parse_flag(pinned(1, 12), RINGS, VERSION_RINGS)
    assert (spec.cohort_sets(), spec.ring_sources()) == ({"default"}, {RingSource("default", 1, 12)})
    assert spec.to_document()["targeting"]["rings"] == {
        "cohortSet": "default", "version": 1, "epoch": 12, "variants": {"canary": "on"}, "otherwise": "off"}
    assert parse_flag(spec.to_document(), RINGS, VERSION_RINGS) == spec
    assert parse_flag(pinned(None, 12), RINGS).ring_sources() == {RingSource("default", None, 12)}


def test_an_unpinned_mapping_is_stored_as_before_without_version_or_epoch() -> None:
    spec = parse_flag(checkout(), RINGS)
    assert spec.ring_sources() == {RingSource("default")} and not RingSource("default").pinned
    assert spec.to_document()["targeting"] == checkout()["targeting"]


def test_a_pinned_version_must_exist() -> None:
    with pytest.raises(InvalidFlag) as raised:
        parse_flag(pinned(7, 12), RINGS, VERSION_RINGS)
    assert {problem.field: problem.message for problem in raised.value.problems} == {
        "targeting.rings.version": "cohort set 'default' has no version 7; list its versions with "
                                   "GET /api/v1/cohort-sets/default/versions, or leave version out for the current one"}
    assert list(problems_of(pinned(1, None))) == ["targeting.rings.version"]  # no versions known: none exists


def test_a_pinned_mapping_names_rings_of_the_pinned_version() -> None:
    assert parse_flag(pinned(1, None, {"beta": "on"}), RINGS, VERSION_RINGS).cohort_sets() == {"default"}
    with pytest.raises(InvalidFlag) as raised:
        parse_flag(pinned(1, None, {"early-adopter": "on"}), RINGS, VERSION_RINGS)
    assert [problem.field for problem in raised.value.problems] == ["targeting.rings.variants.early-adopter"]
    assert raised.value.problems[0].message == ("'early-adopter' is not a ring of version 1 of cohort set 'default', "
                                                "whose rings are ['canary', 'beta', 'stable']")


def test_metadata_keys_ringmaster_fills_in_are_reserved() -> None:
    problems = problems_of(checkout(metadata={"flagSetId": "web", "flagVersion": 3, "owner": "ana"}))
    assert set(problems) == {"metadata.flagSetId", "metadata.flagVersion"}
    assert "set flagSet instead" in problems["metadata.flagSetId"]


def test_metadata_values_are_strings_numbers_or_booleans_as_in_flagd() -> None:
    problems = problems_of(checkout(metadata={"owners": ["ana"], "ticket": None, "tier": 1, "beta": True}))
    assert problems == {
        "metadata.owners": "flagd metadata is a string, number or boolean, not ['ana']",
        "metadata.ticket": "flagd metadata is a string, number or boolean, not None",
    }


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"key": "has space"}, "key"),
        ({"type": "list"}, "type"),
        ({"variants": {}}, "variants"),
        ({"state": "OFF"}, "state"),
        ({"flagSet": "a,b"}, "flagSet"),
        ({"targeting": {"rules": []}}, "targeting"),
        ({"targeting": {"jsonLogic": [1]}}, "targeting.jsonLogic"),
        ({"targeting": {"rings": {"variants": {"canary": "on"}}}}, "targeting.rings.cohortSet"),
        ({"targeting": {"rings": {"cohortSet": "default", "version": 0}}}, "targeting.rings.version"),
        ({"targeting": {"rings": {"cohortSet": "default", "epoch": -1}}}, "targeting.rings.epoch"),
        ({"targeting": {"rings": {"cohortSet": "default", "version": "latest"}}}, "targeting.rings.version"),
    ],
)
def test_malformed_fields_are_refused_with_their_path(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        FlagSpec.model_validate(checkout(**changes))
    locations = [".".join(str(part) for part in error["loc"] if not str(part)[:1].isupper())
                 for error in raised.value.errors()]
    assert field in locations, locations


def test_raw_targeting_may_read_a_ring_through_its_evaluator() -> None:
    logic = {"if": [{"in": [{"$ref": "ring-web"}, ["insiders"]]}, "on", "off"]}
    spec = parse_flag(checkout(targeting={"jsonLogic": logic}), RINGS)
    assert spec.cohort_sets() == {"web"}
    problems = problems_of(checkout(targeting={"jsonLogic": {"if": [{"in": [{"$ref": "ring-mobile"}, ["x"]]}, "on"]}}))
    assert "'ring-mobile' is not an evaluator Ringmaster provides" in problems["targeting.jsonLogic.$ref"]


@pytest.mark.parametrize(
    ("logic", "field", "fragment"),
    [
        ({"if": [{"equals": [{"var": "tier"}, "beta"]}, "on", "off"]}, "targeting.jsonLogic.if[0].equals",
         "not a flagd operator"),
        ({"==": [{"var": "tier"}]}, "targeting.jsonLogic.==", "a list of 2 operands, found 1"),
        ({"if": [{"var": "$flagd.region"}, "on", "off"]}, "targeting.jsonLogic.if[0].var", "not a flagd property"),
        ({"if": [{"sem_ver": [{"var": "v"}, "~>", "2.0.0"]}, "on", "off"]}, "targeting.jsonLogic.if[0].sem_ver[1]",
         "not a sem_ver range"),
        ({"if": [{"sem_ver": [{"var": "v"}, ">=", "2.0"]}, "on", "off"]}, "targeting.jsonLogic.if[0].sem_ver[2]",
         "full version"),
        ({"fractional": [["on", 50], ["off", 49.5]]}, "targeting.jsonLogic.fractional[1][1]", "whole number"),
        ({"fractional": ["email", ["on", 50], ["off", 50]]}, "targeting.jsonLogic.fractional[0]",
         "the bucketing rule comes first"),
        ({"if": [{"starts_with": [{"var": "email"}, 3]}, "on", "off"]},
         "targeting.jsonLogic.if[0].starts_with[1]", "a string or a rule"),
        ({"if": [{"in": ["a", [{"oops": 1}]]}, "on", "off"]}, "targeting.jsonLogic.if[0].in[1][0].oops",
         "not a flagd operator"),
        ({"var": "tier", "if": []}, "targeting.jsonLogic", "exactly one operator"),
        ({"if": [{"==": [{"var": "tier"}, "beta"]}, "onn", "off"]}, "targeting.jsonLogic.if[1]",
         "not one of the variants"),
        ({"fractional": [["on", 50], [{"if": [True, "maybe"]}, 50]]},
         "targeting.jsonLogic.fractional[1][0].if[1]", "not one of the variants"),
        ({"if": [True, 3]}, "targeting.jsonLogic.if[1]", "selects no variant"),
    ],
)
def test_raw_targeting_mistakes_are_named_by_their_path(logic: dict[str, Any], field: str, fragment: str) -> None:
    problems = problems_of(checkout(targeting={"jsonLogic": logic}))
    assert field in problems, problems
    assert fragment in problems[field]


def test_empty_raw_targeting_means_none() -> None:
    assert parse_flag(checkout(targeting={"jsonLogic": {}}), RINGS).cohort_sets() == set()


def targeting_schema() -> Draft7Validator:
    document: dict[str, Any] = json.loads((shared_dir() / "flagd-schema" / "targeting.json").read_text())
    registry: Registry[Any] = Registry().with_resources([(document["$id"], Resource.from_contents(document))])
    return Draft7Validator(document, registry=registry)


def schema_examples(kind: str) -> list[Path]:
    return sorted((shared_dir() / "flagd-schema" / "test" / "targeting" / kind).glob("*.json"))


@pytest.mark.parametrize("example", schema_examples("positive"), ids=lambda path: path.name)
def test_what_flagds_schema_tests_accept_is_accepted(example: Path) -> None:
    assert targeting_problems(json.loads(example.read_text()), "targeting") == []


@pytest.mark.parametrize("example", schema_examples("negative"), ids=lambda path: path.name)
def test_what_flagds_schema_tests_refuse_is_refused(example: Path) -> None:
    assert targeting_problems(json.loads(example.read_text()), "targeting") != []


primitives = st.one_of(st.none(), st.booleans(), st.integers(-5, 100), st.sampled_from([1.5, -0.5]),
                       st.sampled_from(["on", "off", "2.0.0", "$flagd.flagKey", "email", ""]))


def _operation(operators: list[str], operands: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(lambda operator, arguments: {operator: arguments}, st.sampled_from(operators), operands)


def _rules(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Rules close to flagd's grammar, each with a chance of the wrong shape, so both verdicts occur."""
    names = st.sampled_from(["email", "", "$flagd.flagKey", "$flagd.timestamp", "$flagd.region"])
    weights = st.integers(-1, 50) | st.sampled_from([1.5, True]) | children
    entries = st.one_of(st.tuples(children).map(list), st.tuples(children, weights).map(list), children)
    versions = st.sampled_from(["2.0.0", "1.2.3-beta.1", "2.0", "v1.0.0"]) | st.just({"var": "appVersion"})
    return st.one_of(
        _operation(["==", "===", "!=", "in", ">", "%", "map", "all"], st.lists(children, min_size=1, max_size=3)),
        _operation(["if", "and", "or", "cat", "+", "merge", "*"], st.lists(children, min_size=1, max_size=4)),
        _operation(["<", "<=", "substr", "reduce"], st.lists(children, min_size=2, max_size=4)),
        _operation(["!", "!!", "if", "unknown"], children),
        _operation(["var"], names | st.lists(primitives, min_size=1, max_size=2) | children),
        _operation(["missing", "missing_some"], st.lists(names, max_size=2) | st.tuples(st.integers(0, 2),
                                                                                        st.lists(names)).map(list)),
        _operation(["starts_with", "ends_with"], st.lists(children | names, min_size=1, max_size=3)),
        st.builds(lambda left, operator, right: {"sem_ver": [left, operator, right]},
                  versions, st.sampled_from(["=", ">=", "~", "^", "~>"]), versions),
        st.builds(lambda first, rest: {"fractional": [first, *rest] if first is not None else rest},
                  st.none() | children, st.lists(entries, min_size=1, max_size=3)),
        st.sampled_from([{"$ref": "ring-default"}, {"$ref": ""}]),
        st.lists(children, max_size=3),
        st.dictionaries(st.sampled_from(["if", "var"]), children, min_size=2, max_size=2),
    )


rules = st.recursive(primitives, _rules, max_leaves=10).filter(lambda rule: isinstance(rule, dict))


@settings(max_examples=3000, deadline=None)
@given(logic=rules)
def test_what_ringmaster_accepts_flagds_schema_accepts_too(logic: dict[str, Any]) -> None:
    if not targeting_problems(logic, "targeting"):
        assert list(SCHEMA.iter_errors(logic)) == [], logic


SCHEMA = targeting_schema()
