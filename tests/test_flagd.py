"""The compiled flagd document is valid flagd, and the stock evaluator puts every user where `assign` does."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openfeature.contrib.tools.flagd.core import FlagdCore
from openfeature.evaluation_context import EvaluationContext

from cohorts.assign import CompiledCohortSet, UsageQuery, assign, compile_cohort_set
from cohorts.flagd import flagd_document, ring_flag_key
from cohorts.spec import CohortSetSpec, default_cohort_set, parse_cohort_set
from tests.shared_data import flagd_validator

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)

EVERY_OPERATOR: dict[str, Any] = {
    "name": "every-op",
    "rings": ["canary", "early-adopter", "stable", "laggard"],
    "defaultRing": "stable",
    "pins": {"canary": ["pin-c1", "pin-c2"], "laggard": ["pin-l1"]},
    "optInRing": "early-adopter",
    "optOutRing": "laggard",
    "rules": [
        {"name": "staff", "ring": "canary", "when": {"attribute": "team", "op": "equals", "value": "staff"}},
        {"name": "tier-one", "ring": "canary", "when": {"attribute": "tier", "op": "equals", "value": 1}},
        {
            "name": "beta-regions",
            "ring": "early-adopter",
            "when": {
                "all": [
                    {"attribute": "location", "op": "in", "value": ["eu-west", "eu-north", 7, True]},
                    {"attribute": "env", "op": "not_equals", "value": "prod"},
                ]
            },
        },
        {
            "name": "old-clients",
            "ring": "laggard",
            "when": {
                "any": [
                    {"attribute": "app.version", "op": "sem_ver", "value": "<2.0.0"},
                    {"attribute": "app.version", "op": "sem_ver", "value": "~2.1"},
                    {"attribute": "app.version", "op": "sem_ver", "value": "^5"},
                ]
            },
        },
        {"name": "heavy", "ring": "early-adopter", "when": {"attribute": "seats", "op": "gte", "value": 50}},
        {"name": "tiny", "ring": "laggard", "when": {"attribute": "seats", "op": "lt", "value": 2.5}},
        {"name": "mid", "ring": "stable", "when": {"attribute": "score", "op": "gt", "value": 10}},
        {"name": "low", "ring": "stable", "when": {"attribute": "score", "op": "lte", "value": -10}},
        {
            "name": "internal-mail",
            "ring": "canary",
            "when": {
                "all": [
                    {"attribute": "email", "op": "ends_with", "value": "@example.com"},
                    {"not": {"attribute": "email", "op": "starts_with", "value": "bot"}},
                ]
            },
        },
        {
            "name": "not-enterprise",
            "ring": "early-adopter",
            "when": {"attribute": "plan", "op": "not_in", "value": ["enterprise", "gov"]},
        },
        {
            "name": "power-users",
            "ring": "early-adopter",
            "when": {
                "all": [
                    {"metric": "active_days_30d", "op": "gte", "value": 20},
                    {"seenWithin": "7d"},
                ]
            },
        },
    ],
    "split": {
        "shares": {"canary": 5, "early-adopter": 15, "stable": 70, "laggard": 10},
        "rotation": {"period": "7d", "rings": ["canary"]},
    },
}

STRINGS = ["staff", "eu-west", "eu-north", "prod", "dev", "enterprise", "gov", "free", "", "7", "50", "2.4",
           "-11", "1e3", " 12 ", "inf", "1.9.9", "v2.1.7", "2.1", "2.0.0-beta", "5", "V5.3.1", "not-a-version",
           "bot@example.com", "ann@example.com", "ann@example.org", "1", "true"]
NUMBERS: list[int | float] = [0, 1, 1.0, 2, 2.5, 7, 10, 10.5, 49.9, 50, 51, -10, -10.5, 5, 2.1, 1.5, 2e9]
SCALAR_POOL: list[str | int | float] = [*STRINGS, *NUMBERS]


def random_value(chooser: random.Random) -> Any:
    kind = chooser.random()
    if kind < 0.45:
        return chooser.choice(STRINGS)
    if kind < 0.75:
        return chooser.choice(NUMBERS)
    if kind < 0.85:
        return chooser.choice([True, False])
    if kind < 0.92:
        return [chooser.choice(SCALAR_POOL)][: chooser.randint(0, 1)]
    return {"version": chooser.choice(STRINGS)}


def random_context(chooser: random.Random, keys: list[str]) -> dict[str, Any]:
    context: dict[str, Any] = {}
    if chooser.random() < 0.95:
        context["targetingKey"] = chooser.choice(keys) if chooser.random() < 0.3 else f"user-{chooser.randrange(10**6)}"
    for attribute in ("team", "tier", "location", "env", "seats", "score", "email", "plan"):
        if chooser.random() < 0.35:
            context[attribute] = random_value(chooser)
    if chooser.random() < 0.35:
        nested = chooser.random() < 0.8
        context["app"] = {"version": chooser.choice(SCALAR_POOL)} if nested else random_value(chooser)
    return context


def flagd_ring(core: FlagdCore, cohort_set: str, context: dict[str, Any]) -> str:
    attributes = {name: value for name, value in context.items() if name != "targetingKey"}
    resolved = core.resolve_string_value(
        ring_flag_key(cohort_set), "<none>", EvaluationContext(context.get("targetingKey"), attributes)
    )
    return str(resolved.value)


def disagreements(compiled: CompiledCohortSet, contexts: list[dict[str, Any]], epoch: int) -> list[Any]:
    core = FlagdCore()
    # Through JSON text, as a provider receives it.
    core.set_flags(json.dumps(flagd_document(compiled, epoch)))
    found = []
    for context in contexts:
        ours = assign(compiled, context, epoch).ring
        theirs = flagd_ring(core, compiled.name, context)
        if ours != theirs:
            found.append((context, ours, theirs))
    return found


def power_users(query: UsageQuery) -> frozenset[str]:
    return frozenset(f"power-{number}" for number in range(200))


def test_documents_are_valid_flagd() -> None:
    validator = flagd_validator()
    for spec in (default_cohort_set(), parse_cohort_set(EVERY_OPERATOR)):
        compiled = compile_cohort_set(spec, version=4, compiled_at=NOW, opted_in=["o1"], opted_out=["o2"],
                                      usage_keys=power_users)
        document = flagd_document(compiled, 150)
        assert [error.message for error in validator.iter_errors(document)] == []


def test_the_validator_would_catch_an_invalid_document() -> None:
    compiled = compile_cohort_set(default_cohort_set(), version=1, compiled_at=NOW)
    document = flagd_document(compiled, 1)
    document["flags"]["ring-default"]["state"] = "ON"
    assert list(flagd_validator().iter_errors(document))


def test_the_stock_flagd_evaluator_agrees_with_assign_on_12000_generated_contexts() -> None:
    chooser = random.Random(20261127)
    opted_in = [f"in-{number}" for number in range(50)]
    opted_out = [f"out-{number}" for number in range(50)]
    compiled = compile_cohort_set(
        parse_cohort_set(EVERY_OPERATOR), version=2, compiled_at=NOW,
        opted_in=opted_in, opted_out=opted_out, usage_keys=power_users,
    )
    known_keys = ["pin-c1", "pin-c2", "pin-l1", *opted_in[:5], *opted_out[:5], "power-3", "power-150", ""]
    contexts = [random_context(chooser, known_keys) for _ in range(12_000)]
    assert disagreements(compiled, contexts, epoch=150) == []
    # Every kind of decision was exercised, so agreement is not agreement on defaults.
    kinds = {assign(compiled, context, 150).kind for context in contexts}
    rules = {assign(compiled, context, 150).rule for context in contexts}
    assert kinds == {"pin", "opt-in", "opt-out", "rule", "split", "default"}
    assert rules >= {rule["name"] for rule in EVERY_OPERATOR["rules"]}


def test_the_default_set_agrees_across_epochs() -> None:
    compiled = compile_cohort_set(default_cohort_set(), version=1, compiled_at=NOW)
    contexts = [{"targetingKey": f"customer-{number}"} for number in range(2000)]
    for epoch in (0, 1, 2938):
        assert disagreements(compiled, contexts, epoch) == []


SCALARS = st.one_of(st.sampled_from(STRINGS), st.sampled_from(NUMBERS), st.booleans())
ATTRIBUTES = ["a", "b", "c.d"]
LEAVES = st.one_of(
    st.builds(lambda attribute, value: {"attribute": attribute, "op": "equals", "value": value},
              st.sampled_from(ATTRIBUTES), SCALARS),
    st.builds(lambda attribute, value: {"attribute": attribute, "op": "not_equals", "value": value},
              st.sampled_from(ATTRIBUTES), SCALARS),
    st.builds(lambda attribute, op, values: {"attribute": attribute, "op": op, "value": values},
              st.sampled_from(ATTRIBUTES), st.sampled_from(["in", "not_in"]),
              st.lists(SCALARS, min_size=1, max_size=4)),
    st.builds(lambda attribute, op, value: {"attribute": attribute, "op": op, "value": value},
              st.sampled_from(ATTRIBUTES), st.sampled_from(["lt", "lte", "gt", "gte"]),
              st.sampled_from(NUMBERS)),
    st.builds(lambda attribute, op, value: {"attribute": attribute, "op": op, "value": value},
              st.sampled_from(ATTRIBUTES), st.sampled_from(["starts_with", "ends_with"]),
              st.sampled_from(["eu", "-west", "1", "staff", "@example.com"])),
    st.builds(lambda attribute, op, version: {"attribute": attribute, "op": "sem_ver", "value": op + version},
              st.sampled_from(ATTRIBUTES), st.sampled_from(["", "=", "!=", "<", "<=", ">", ">=", "^", "~"]),
              st.sampled_from(["1", "2.1", "2.0.0", "v5.3.1", "2.0.0-beta"])),
    st.builds(lambda number: {"metric": "active_days_30d", "op": "gte", "value": number}, st.integers(0, 30)),
)
CONDITIONS = st.recursive(
    LEAVES,
    lambda children: st.one_of(
        st.builds(lambda parts: {"all": parts}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda parts: {"any": parts}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda part: {"not": part}, children),
    ),
    max_leaves=6,
)


@st.composite
def cohort_sets(draw: st.DrawFn) -> CohortSetSpec:
    rings = ["r0", "r1", "r2"]
    conditions = draw(st.lists(CONDITIONS, max_size=4))
    cut_low = draw(st.integers(0, 10000))
    cut_high = draw(st.integers(cut_low, 10000))
    shares = {"r0": cut_low / 100, "r1": (cut_high - cut_low) / 100, "r2": (10000 - cut_high) / 100}
    split: dict[str, Any] = {"shares": shares, "bucketBy": draw(st.sampled_from(["targetingKey", "a", "c.d"]))}
    if shares["r0"] > 0 and draw(st.booleans()):
        split["rotation"] = {"period": "1d", "rings": ["r0"]}
    return parse_cohort_set(
        {
            "name": "generated",
            "rings": rings,
            "rules": [{"name": f"rule-{index}", "ring": draw(st.sampled_from(rings)), "when": condition}
                      for index, condition in enumerate(conditions)],
            "split": split,
        }
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cohort_sets(), st.integers(0, 10_000), st.randoms(use_true_random=False))
def test_generated_cohort_sets_agree_with_the_stock_evaluator(
    spec: CohortSetSpec, epoch: int, chooser: random.Random
) -> None:
    compiled = compile_cohort_set(spec, version=1, compiled_at=NOW, usage_keys=power_users)
    contexts = []
    for _ in range(40):
        context: dict[str, Any] = {"targetingKey": f"power-{chooser.randrange(400)}"}
        for attribute in ("a", "b"):
            if chooser.random() < 0.7:
                context[attribute] = random_value(chooser)
        if chooser.random() < 0.5:
            context["c"] = {"d": random_value(chooser)} if chooser.random() < 0.8 else random_value(chooser)
        contexts.append(context)
    assert disagreements(compiled, contexts, epoch) == []
