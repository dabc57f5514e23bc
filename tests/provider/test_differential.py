"""For generated flag documents and contexts, `Evaluator` answers exactly what flagd's FlagdCore answers.

Hypothesis builds documents with variants of every type, default variants named, missing, null or
wrong, disabled flags, `$evaluators` with `$ref`s (to existing and missing evaluators), and
targeting drawn from the whole operator set flagd evaluates: comparisons, logic, arithmetic,
strings, arrays, the iterating operations, `var` with defaults and paths, nested `fractional`
(explicit and shorthand, fixed and computed weights), `sem_ver`, `starts_with`/`ends_with`,
unknown operators, and a few rules that are not JsonLogic at all. Contexts hold every JSON type
(and datetimes, which OpenFeature allows). Each flag of each document is evaluated as every type
(and untyped, as OFREP asks) for several contexts; value, variant, reason and error code must
match, and flag metadata too when the evaluation succeeds. FlagdCore raises its errors, so a
raised OpenFeature error counts as its error code, any other exception as GENERAL.

Both see the same second for `$flagd.timestamp`: the evaluator through its clock, FlagdCore through
a patched `time`. Evaluator rules use ASCII text without quotes or backslashes, because FlagdCore
pastes evaluators in with `re.sub`, which reads backslashes in the rule's JSON as escapes
(a FlagdCore defect, not flagd behaviour).
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openfeature.contrib.tools.flagd.core import FlagdCore
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import OpenFeatureError
from ringmaster_flagd import DocumentError, Evaluator

# The module, not the function the package re-exports under the same name.
flagd_targeting = importlib.import_module("openfeature.contrib.tools.flagd.core.targeting.targeting")
FROZEN_TIME = 1_790_000_000.75
FLAG_TYPES: list[str | None] = ["boolean", "string", "integer", "float", "object", None]
DEFAULTS: dict[str | None, list[Any]] = {
    "boolean": [False, True],
    "string": ["default", ""],
    "integer": [7, 0],
    "float": [0.5, 3],
    "object": [{"default": True}, []],
    None: [None, "default"],
}
VARIANT_NAMES = ["on", "off", "true", "false", "a", "b", "1", "2.5", "1.0", "null", "None", ""]
ATTRIBUTES = ["tier", "email", "version", "n", "user", "list", "flag"]
PATHS = [
    *ATTRIBUTES,
    "user.name",
    "user.age",
    "list.0",
    "list.1",
    "list.length",
    "email.length",
    "n.0",
    "$flagd.flagKey",
    "$flagd.timestamp",
    "$flagd",
    "targetingKey",
    "",
    "missing",
    "accumulator",
    "current",
]
VERSIONS = ["1.0.0", "2.0.0", "v1.2", "1", "1.2.3-alpha", "1.0.0+build", "2.0.0.0", "not-a-version", "V3.1.4"]
SEMVER_OPERATORS: list[Any] = ["=", "!=", "<", "<=", ">", ">=", "^", "~", "===", 1]
OPERATORS = [
    "==", "!=", "===", "!==", "<", "<=", ">", ">=", "!", "!!", "and", "or", "if", "?:", "+", "-", "*", "/", "%",
    "min", "max", "cat", "substr", "in", "merge", "missing", "missing_some", "var", "map", "filter", "reduce",
    "all", "some", "none", "fractional", "sem_ver", "starts_with", "ends_with", "log", "unknown", "var.x", "if.x",
]  # fmt: skip
EVALUATOR_NAMES = ["segment", "beta_users", "ring"]

ascii_text = st.text(st.characters(min_codepoint=32, max_codepoint=126, exclude_characters='"\\'), max_size=6)
any_text = st.text(max_size=6)


def texts(text: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(["", "beta", "gold", "1", "2.5", "1.2.3", "v2.0.0", "true", "abc", "x@example.com"]), text
    )


def scalars(text: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-3, 3),
        st.integers(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([0.0, -0.0, 1.0, 2.5, 1e20]),
        texts(text),
        st.sampled_from(VARIANT_NAMES),
    )


def var_nodes(text: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    path = st.sampled_from(PATHS)
    return st.one_of(
        st.builds(lambda key: {"var": key}, path),
        st.builds(lambda key: {"var": [key]}, path),
        st.builds(lambda key, default: {"var": [key, default]}, path, scalars(text)),
        st.builds(lambda key: {"var": key}, st.integers(-1, 3)),
        st.builds(lambda key, default: {"var": [key, default, "surplus"]}, path, scalars(text)),
        st.just({"var": []}),
    )


def rules(text: st.SearchStrategy[str], with_refs: bool) -> st.SearchStrategy[Any]:
    leaves = st.one_of(scalars(text), var_nodes(text), st.sampled_from(VARIANT_NAMES))
    if with_refs:
        leaves = st.one_of(
            leaves, st.builds(lambda name: {"$ref": name}, st.sampled_from([*EVALUATOR_NAMES, "nowhere"]))
        )

    def operations(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        entry_variant = st.one_of(st.sampled_from(VARIANT_NAMES), st.booleans(), children)
        entry = st.one_of(
            st.tuples(entry_variant, st.integers(-5, 60)).map(list),
            st.tuples(entry_variant).map(list),
            st.tuples(entry_variant, children).map(list),
            st.tuples(entry_variant, st.sampled_from([1.5, "3", True, None])).map(list),
            st.lists(st.sampled_from(VARIANT_NAMES), max_size=3),
        )
        entries = st.lists(entry, max_size=4)
        return st.one_of(
            st.builds(lambda op, args: {op: args}, st.sampled_from(OPERATORS), st.lists(children, max_size=4)),
            st.builds(lambda op, arg: {op: arg}, st.sampled_from(OPERATORS), children),
            st.builds(
                lambda needle, haystack: {"in": [needle, haystack]}, children, st.lists(scalars(text), max_size=4)
            ),
            st.builds(lambda bucket, rest: {"fractional": [bucket, *rest]}, children, entries),
            st.builds(lambda rest: {"fractional": rest}, entries),
            st.builds(
                lambda version, op, target: {"sem_ver": [version, op, target]},
                st.one_of(children, st.sampled_from(VERSIONS)),
                st.sampled_from(SEMVER_OPERATORS),
                st.one_of(st.sampled_from(VERSIONS), children),
            ),
            st.builds(
                lambda op, args: {op: args},
                st.sampled_from(["starts_with", "ends_with"]),
                st.lists(st.one_of(children, texts(text)), max_size=3),
            ),
            st.builds(
                lambda op, items, step: {op: [items, step]},
                st.sampled_from(["map", "filter", "all", "some", "none"]),
                st.one_of(children, st.just({"var": "list"})),
                children,
            ),
            st.builds(
                lambda items, step, initial: {"reduce": [items, step, initial]},
                st.one_of(children, st.just({"var": "list"})),
                st.one_of(children, st.just({"+": [{"var": "current"}, {"var": "accumulator"}]})),
                scalars(text),
            ),
            st.builds(lambda branches: {"if": branches}, st.lists(children, min_size=1, max_size=5)),
        )

    return st.recursive(leaves, operations, max_leaves=10)


def variant_sets() -> st.SearchStrategy[dict[str, Any]]:
    names = st.sampled_from(VARIANT_NAMES)
    json_values = st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), texts(any_text)),
        lambda children: st.one_of(
            st.lists(children, max_size=2), st.dictionaries(texts(any_text), children, max_size=2)
        ),
        max_leaves=4,
    )
    of_type = st.sampled_from(
        [
            st.booleans(),
            texts(any_text),
            st.integers(-3, 3) | st.integers(),
            st.floats(allow_nan=False) | st.integers(),
            json_values,
        ]
    )
    return of_type.flatmap(lambda values: st.dictionaries(names, values, min_size=1, max_size=4))


FLAG_RULES = rules(any_text, with_refs=True)
EVALUATOR_RULES = rules(ascii_text, with_refs=True)
VARIANT_SETS = variant_sets()
METADATA = st.dictionaries(
    st.sampled_from(["flagSetId", "version", "owner", "weight", "beta"]),
    st.one_of(st.booleans(), st.integers(), st.floats(allow_nan=False), ascii_text),
    max_size=3,
)


CONDITIONS = st.one_of(
    FLAG_RULES,
    st.builds(lambda haystack: {"in": [{"var": "tier"}, haystack]}, st.lists(texts(any_text), max_size=3)),
    st.builds(lambda prefix: {"starts_with": [{"var": "email"}, prefix]}, texts(any_text)),
    st.builds(
        lambda op, target: {"sem_ver": [{"var": "version"}, op, target]},
        st.sampled_from(SEMVER_OPERATORS),
        st.sampled_from(VERSIONS),
    ),
    st.builds(
        lambda op, bound: {op: [{"var": "n"}, bound]}, st.sampled_from(["==", "<", ">=", "!=="]), scalars(any_text)
    ),
)
BUCKETING_VALUES = st.one_of(
    FLAG_RULES,
    st.just({"var": "targetingKey"}),
    st.just({"cat": [{"var": "$flagd.flagKey"}, {"var": "email"}]}),
    st.just({"var": "user"}),
)


@st.composite
def targeting_for(draw: st.DrawFn, variant_names: list[str]) -> Any:
    """Targeting that names this flag's variants often enough to reach TARGETING_MATCH, and other things."""
    name = st.one_of(st.sampled_from(variant_names), st.sampled_from(VARIANT_NAMES))
    kind = draw(st.sampled_from(["absent", "empty", "not-logic", "any", "if", "if", "fractional", "shorthand"]))
    if kind == "absent":
        return "absent"
    if kind == "empty":
        return draw(st.sampled_from([{}, None, []]))
    if kind == "not-logic":
        return draw(st.sampled_from(["not logic", [1], 5]))
    if kind == "any":
        return draw(st.one_of(FLAG_RULES, FLAG_RULES.map(lambda rule: {"if": [rule]})))
    entries = draw(st.lists(st.tuples(name, st.integers(-1, 50)).map(list), min_size=1, max_size=4))
    if kind == "fractional":
        return {"fractional": [draw(BUCKETING_VALUES), *entries]}
    if kind == "shorthand":
        return {"fractional": entries}
    branches: list[Any] = []
    for _ in range(draw(st.integers(1, 3))):
        branches += [draw(CONDITIONS), draw(name)]
    if draw(st.booleans()):
        branches.append(draw(st.one_of(name, st.none(), FLAG_RULES)))
    return {"if": branches}


@st.composite
def flags(draw: st.DrawFn) -> dict[str, Any]:
    variants = draw(VARIANT_SETS)
    flag: dict[str, Any] = {"state": draw(st.sampled_from(["ENABLED"] * 7 + ["DISABLED"])), "variants": variants}
    default = draw(
        st.one_of(st.sampled_from(sorted(variants)), st.sampled_from([None, "", "missing", True, False, "absent"]))
    )
    if default != "absent":
        flag["defaultVariant"] = default
    targeting = draw(targeting_for(sorted(variants)))
    if targeting != "absent":
        flag["targeting"] = targeting
    if draw(st.booleans()):
        flag["metadata"] = draw(st.one_of(st.none(), METADATA))
    return flag


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    document: dict[str, Any] = {
        "flags": draw(
            st.dictionaries(st.sampled_from(["alpha", "beta", "gamma", "delta"]), flags(), min_size=1, max_size=3)
        )
    }
    if draw(st.booleans()):
        document["$evaluators"] = draw(st.dictionaries(st.sampled_from(EVALUATOR_NAMES), EVALUATOR_RULES, max_size=3))
    if draw(st.booleans()):
        document["metadata"] = draw(METADATA)
    return document


def context_values() -> st.SearchStrategy[Any]:
    return st.recursive(
        st.one_of(
            scalars(any_text),
            st.datetimes(timezones=st.just(UTC)),
            st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1)),
            st.sampled_from(VERSIONS),
        ),
        lambda children: st.one_of(
            st.lists(children, max_size=3),
            st.dictionaries(st.sampled_from(["name", "age", "0", "x"]), children, max_size=3),
        ),
        max_leaves=5,
    )


CONTEXTS = st.tuples(
    st.one_of(st.none(), texts(any_text)),
    st.dictionaries(st.sampled_from([*ATTRIBUTES, "targetingKey", "$flagd"]), context_values(), max_size=5),
)


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def flagd_core_answer(
    core: FlagdCore, key: str, flag_type: str | None, default: Any, context: EvaluationContext
) -> tuple[Any, ...]:
    try:
        if flag_type is None:
            details = core._resolve(key, default, context, None)
        else:
            details = getattr(core, f"resolve_{flag_type}_value")(key, default, context)
    except OpenFeatureError as error:
        return canonical(default), None, "ERROR", str(error.error_code)
    except Exception:
        return canonical(default), None, "ERROR", "GENERAL"
    return canonical(details.value), details.variant, str(details.reason), None, dict(details.flag_metadata)


def evaluator_answer(
    evaluator: Evaluator, key: str, flag_type: Any, default: Any, context: EvaluationContext
) -> tuple[Any, ...]:
    resolution = evaluator.resolve(key, flag_type, default, context.attributes, context.targeting_key)
    answer = (canonical(resolution.value), resolution.variant, resolution.reason, resolution.error_code)
    return answer if resolution.error_code else (*answer, dict(resolution.flag_metadata))


@pytest.fixture(autouse=True)
def flagd_core_at_frozen_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(flagd_targeting, "time", SimpleNamespace(time=lambda: FROZEN_TIME))
    # FlagdCore logs every operator error; thousands of documents make that noise only.
    logging.getLogger("openfeature.contrib").disabled = True
    yield
    logging.getLogger("openfeature.contrib").disabled = False


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    document=documents(),
    evaluation_contexts=st.lists(CONTEXTS, min_size=1, max_size=4),
    default_choice=st.integers(0, 1),
)
def test_every_evaluation_matches_flagd_core(
    document: dict[str, Any], evaluation_contexts: list[tuple[str | None, dict[str, Any]]], default_choice: int
) -> None:
    text = json.dumps(document)
    core, evaluator = FlagdCore(), Evaluator(clock=lambda: FROZEN_TIME)
    core.set_flags(text)
    evaluator.set_document(text)
    assert evaluator_answer(evaluator, "not-a-flag", "string", "x", EvaluationContext()) == flagd_core_answer(
        core, "not-a-flag", "string", "x", EvaluationContext()
    )
    for targeting_key, attributes in evaluation_contexts:
        context = EvaluationContext(targeting_key, attributes)
        for key in document["flags"]:
            for flag_type in FLAG_TYPES:
                default = DEFAULTS[flag_type][default_choice]
                expected = flagd_core_answer(core, key, flag_type, default, context)
                assert evaluator_answer(evaluator, key, flag_type, default, context) == expected, (key, flag_type)


BROKEN_FLAGS = st.one_of(
    st.builds(lambda state: {"state": state, "variants": {"on": True}}, st.sampled_from(["enabled", "ON", None, 1])),
    st.just({"state": "ENABLED", "variants": {}}),
    st.just({"state": "ENABLED", "variants": ["on"]}),
    st.just({"state": "ENABLED"}),
    st.just({"state": "ENABLED", "variants": {"on": True}, "owner": "team-a"}),
    st.just({"state": "ENABLED", "variants": {"on": True}, "metadata": {"owner": None}}),
    st.just({"state": "ENABLED", "variants": {"on": True}, "defaultVariant": 5}),
    st.just("ENABLED"),
)


@settings(max_examples=300, deadline=None)
@given(document=documents(), broken=BROKEN_FLAGS, where=st.sampled_from(["flag", "flags", "metadata", "text"]))
def test_documents_flagd_core_refuses_are_refused_and_the_previous_one_kept(
    document: dict[str, Any], broken: Any, where: str
) -> None:
    evaluator = Evaluator(clock=lambda: FROZEN_TIME)
    evaluator.set_document(json.dumps(document))
    if where == "flag":
        bad = {**document, "flags": {**document["flags"], "broken": broken}}
    elif where == "flags":
        bad = {**document, "flags": [broken]}
    elif where == "metadata":
        bad = {**document, "metadata": {"flagSetId": ["not", "a", "scalar"]}}
    else:
        bad = None
    bad_text = "{not json" if bad is None else json.dumps(bad)
    with pytest.raises(Exception):  # noqa: B017 (FlagdCore raises ParseError, TypeError or JSONDecodeError)
        FlagdCore().set_flags(bad_text)
    with pytest.raises(DocumentError):
        evaluator.set_document(bad_text)
    assert evaluator.flag_keys == list(document["flags"])
