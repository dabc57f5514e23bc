"""Evaluator: loading documents, what a resolution says, and the flagd rules a caller relies on."""

from __future__ import annotations

import json
import re
import threading
from typing import Any

import pytest
from ringmaster_flagd import DocumentError, Evaluator, FlagType


def flag(variants: dict[str, Any], default: str | None = None, targeting: Any = None, **fields: Any) -> dict[str, Any]:
    definition: dict[str, Any] = {"state": "ENABLED", "variants": variants, "defaultVariant": default, **fields}
    if targeting is not None:
        definition["targeting"] = targeting
    return definition


BETA_RULE = {"if": [{"in": [{"var": "tier"}, ["beta"]]}, "on", "off"]}


def loaded(document: dict[str, Any], clock: float = 1_800_000_000.0) -> Evaluator:
    evaluator = Evaluator(clock=lambda: clock)
    evaluator.set_document(json.dumps(document))
    return evaluator


def test_a_static_flag_answers_its_default_variant_with_reason_static() -> None:
    evaluator = loaded({"flags": {"f": flag({"on": True, "off": False}, "on")}})
    resolution = evaluator.resolve("f", "boolean", False, {}, None)
    assert (resolution.value, resolution.variant, resolution.reason, resolution.error_code) == (
        True,
        "on",
        "STATIC",
        None,
    )


def test_targeting_picks_a_variant_by_context_and_falls_back_to_the_default_on_null() -> None:
    evaluator = loaded(
        {
            "flags": {
                "f": flag({"on": True, "off": False}, "off", {"if": [{"==": [{"var": "tier"}, "beta"]}, "on", None]})
            }
        }
    )
    beta = evaluator.resolve("f", "boolean", False, {"tier": "beta"}, "u1")
    other = evaluator.resolve("f", "boolean", True, {"tier": "free"}, "u1")
    assert (beta.value, beta.variant, beta.reason) == (True, "on", "TARGETING_MATCH")
    assert (other.value, other.variant, other.reason) == (False, "off", "DEFAULT")


def test_a_flag_without_default_variant_answers_the_callers_default() -> None:
    evaluator = loaded({"flags": {"f": flag({"on": True}, None)}})
    resolution = evaluator.resolve("f", "boolean", True, {}, None)
    assert (resolution.value, resolution.variant, resolution.reason) == (True, None, "DEFAULT")


def test_a_disabled_flag_answers_the_callers_default_with_reason_disabled() -> None:
    evaluator = loaded({"flags": {"f": {**flag({"on": True}, "on"), "state": "DISABLED"}}})
    resolution = evaluator.resolve("f", "boolean", False, {}, None)
    assert (resolution.value, resolution.variant, resolution.reason, resolution.error_code) == (
        False,
        None,
        "DISABLED",
        None,
    )


def test_errors_carry_the_callers_default_and_a_code() -> None:
    evaluator = loaded(
        {
            "flags": {
                "text": flag({"only": "x"}, "only"),
                "bad-rule": flag({"on": True}, "on", {"no-such-operator": [1]}),
                "stray": flag({"on": True}, "on", {"if": [True, "elsewhere", "on"]}),
                "broken": flag({"on": True}, "on", {"/": [1, 0]}),
            }
        }
    )
    cases: list[tuple[str, FlagType]] = [
        ("missing", "string"),
        ("text", "integer"),
        ("bad-rule", "boolean"),
        ("stray", "boolean"),
        ("broken", "boolean"),
    ]
    answers = {(key, flag_type): evaluator.resolve(key, flag_type, "fallback", {}, None) for key, flag_type in cases}
    assert {key: (answer.value, answer.reason, answer.error_code) for key, answer in answers.items()} == {
        ("missing", "string"): ("fallback", "ERROR", "FLAG_NOT_FOUND"),
        ("text", "integer"): ("fallback", "ERROR", "TYPE_MISMATCH"),
        ("bad-rule", "boolean"): ("fallback", "ERROR", "PARSE_ERROR"),
        ("stray", "boolean"): ("fallback", "ERROR", "GENERAL"),
        ("broken", "boolean"): ("fallback", "ERROR", "GENERAL"),
    }
    assert "no-such-operator" in (answers["bad-rule", "boolean"].error_message or "")


def test_without_a_flag_type_any_variant_is_returned_as_it_is() -> None:
    evaluator = loaded({"flags": {"f": flag({"n": 3, "o": {"a": 1}}, "n", {"if": [{"var": "object"}, "o", None]})}})
    assert evaluator.resolve("f", None, None, {}, None).value == 3
    assert evaluator.resolve("f", None, None, {"object": True}, None).value == {"a": 1}


def test_float_flags_answer_floats_even_for_integer_variants() -> None:
    evaluator = loaded({"flags": {"f": flag({"one": 1}, "one")}})
    value = evaluator.resolve("f", "float", 0.5, {}, None).value
    assert (value, type(value)) == (1.0, float)


def test_flag_metadata_is_merged_over_the_flag_set_metadata() -> None:
    evaluator = loaded(
        {
            "metadata": {"flagSetId": "shop", "owner": "platform"},
            "flags": {"f": flag({"on": True}, "on", metadata={"owner": "checkout", "ticket": 42})},
        }
    )
    assert dict(evaluator.resolve("f", "boolean", False, {}, None).flag_metadata) == {
        "flagSetId": "shop",
        "owner": "checkout",
        "ticket": 42,
    }


def test_flagd_context_holds_the_flag_key_and_the_clock_second() -> None:
    rule = {
        "if": [
            {"==": [{"var": "$flagd.flagKey"}, "launch"]},
            {"if": [{">=": [{"var": "$flagd.timestamp"}, 1_800_000_000]}, "live", "soon"]},
            "soon",
        ]
    }
    document = {"flags": {"launch": flag({"live": "live", "soon": "soon"}, "soon", rule)}}
    assert loaded(document, clock=1_800_000_000.9).resolve("launch", "string", "", {}, None).value == "live"
    assert loaded(document, clock=1_799_999_999.9).resolve("launch", "string", "", {}, None).value == "soon"


def test_the_context_cannot_override_targeting_key_or_flagd_properties() -> None:
    rule = {"cat": [{"var": "targetingKey"}, "|", {"var": "$flagd.flagKey"}]}
    evaluator = loaded({"flags": {"f": flag({"u1|f": "matched"}, None, rule)}})
    resolution = evaluator.resolve("f", "string", "", {"targetingKey": "spoof", "$flagd": {"flagKey": "spoof"}}, "u1")
    assert resolution.value == "matched"


def test_evaluators_are_substituted_wherever_referenced_and_a_missing_one_is_a_parse_error() -> None:
    evaluator = loaded(
        {
            "$evaluators": {"beta": {"in": [{"var": "tier"}, ["beta"]]}},
            "flags": {
                "uses": flag({"on": True, "off": False}, "off", {"if": [{"$ref": "beta"}, "on", "off"]}),
                "dangling": flag({"on": True, "off": False}, "off", {"if": [{"$ref": "gamma"}, "on", "off"]}),
            },
        }
    )
    assert evaluator.resolve("uses", "boolean", False, {"tier": "beta"}, None).value is True
    assert evaluator.resolve("dangling", "boolean", False, {}, None).error_code == "PARSE_ERROR"


def test_an_evaluator_may_use_evaluators_defined_after_it_as_flagd_substitutes_them_in_order() -> None:
    evaluator = loaded(
        {
            "$evaluators": {"outer": {"!": {"$ref": "inner"}}, "inner": {"==": [{"var": "tier"}, "free"]}},
            "flags": {"paid": flag({"on": True, "off": False}, "off", {"if": [{"$ref": "outer"}, "on", "off"]})},
        }
    )
    assert evaluator.resolve("paid", "boolean", False, {"tier": "gold"}, None).value is True
    assert evaluator.resolve("paid", "boolean", True, {"tier": "free"}, None).value is False


def test_fractional_shares_users_out_stickily_by_weight() -> None:
    rule = {"fractional": [{"cat": ["rings/", {"var": "targetingKey"}]}, ["canary", 10], ["stable", 90]]}
    evaluator = loaded({"flags": {"ring": flag({"canary": "canary", "stable": "stable"}, "stable", rule)}})
    rings = [evaluator.resolve("ring", "string", "", {}, f"user-{number}").value for number in range(2000)]
    assert 150 < rings.count("canary") < 250
    assert rings == [evaluator.resolve("ring", "string", "", {}, f"user-{number}").value for number in range(2000)]


def test_set_document_reports_the_flags_it_adds_removes_and_changes() -> None:
    evaluator = Evaluator()
    assert evaluator.set_document({"flags": {"kept": flag({"on": True}, "on"), "edited": flag({"a": 1}, "a")}}) == [
        "kept",
        "edited",
    ]
    changed = evaluator.set_document(
        {"flags": {"kept": flag({"on": True}, "on"), "edited": flag({"a": 2}, "a"), "added": flag({"on": True}, "on")}}
    )
    assert sorted(changed) == ["added", "edited"]
    assert evaluator.set_document({"flags": {"kept": flag({"on": True}, "on")}}) == ["edited", "added"]


def test_a_change_of_flag_set_metadata_changes_every_flag() -> None:
    evaluator = Evaluator()
    evaluator.set_document(
        {"metadata": {"version": "1"}, "flags": {"a": flag({"on": True}, "on"), "b": flag({"on": True}, "on")}}
    )
    assert evaluator.set_document(
        {"metadata": {"version": "2"}, "flags": {"a": flag({"on": True}, "on"), "b": flag({"on": True}, "on")}}
    ) == ["a", "b"]


def test_an_integer_and_a_boolean_variant_are_different_documents() -> None:
    evaluator = Evaluator()
    evaluator.set_document({"flags": {"f": flag({"v": 1}, "v")}})
    assert evaluator.set_document({"flags": {"f": flag({"v": True}, "v")}}) == ["f"]


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["flags"]', "a JSON object with a 'flags' object"),
        ('{"flags": []}', "'flags' must be an object"),
        ('{"flags": {"f": {"state": "ON", "variants": {"a": 1}}}}', "flags.f.state: 'ON' is not a state"),
        ('{"flags": {"f": {"state": "ENABLED", "variants": {}}}}', "flags.f.variants"),
        ('{"flags": {"f": {"state": "ENABLED", "variants": {"a": 1}, "owner": "x"}}}', "unknown field(s) 'owner'"),
        ('{"flags": {"f": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": 1}}}', "flags.f.defaultVariant"),
        ('{"flags": {"f": {"state": "ENABLED", "variants": {"a": 1}, "metadata": {"x": [1]}}}}', "flags.f.metadata.x"),
        ('{"metadata": null, "flags": {}}', "metadata must be an object"),
        ('{"$evaluators": [], "flags": {}}', "'$evaluators' must be an object"),
    ],
)
def test_a_bad_document_is_refused_with_what_is_wrong_and_the_previous_one_kept(document: str, message: str) -> None:
    evaluator = loaded({"flags": {"f": flag({"on": True}, "on")}})
    with pytest.raises(DocumentError, match=re.escape(message)):
        evaluator.set_document(document)
    assert evaluator.resolve("f", "boolean", False, {}, None).value is True


def test_a_resolution_during_reloads_never_mixes_two_documents() -> None:
    generations = [
        {"metadata": {"generation": number}, "flags": {"f": flag({"v": number}, "v", {"if": [True, "v"]})}}
        for number in range(2)
    ]
    evaluator = Evaluator()
    evaluator.set_document(generations[0])
    mixed: list[tuple[Any, Any]] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            resolution = evaluator.resolve("f", "integer", -1, {}, None)
            if resolution.value != resolution.flag_metadata["generation"]:
                mixed.append((resolution.value, resolution.flag_metadata["generation"]))

    reader = threading.Thread(target=read)
    reader.start()
    for round_number in range(300):
        evaluator.set_document(generations[round_number % 2])
    stop.set()
    reader.join()
    assert mixed == []
