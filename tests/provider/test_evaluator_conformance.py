"""flagd's evaluator conformance suite (testbed evaluator/gherkin/*.feature) against `Evaluator`.

Every scenario of the suite runs against evaluator/flags/testkit-flags.json, except the rows whose
tags tests/provider/testbed.py excludes, for the reasons it gives.
"""

from __future__ import annotations

import pytest
from pytest_bdd import given, parsers, scenarios, when
from ringmaster_flagd import Evaluator

from tests.provider.conftest import Evaluation, Outcome
from tests.provider.testbed import flagd_testbed

scenarios(str(flagd_testbed() / "evaluator" / "gherkin"))


@pytest.fixture(scope="module")
def testkit_evaluator() -> Evaluator:
    evaluator = Evaluator()
    evaluator.set_document((flagd_testbed() / "evaluator" / "flags" / "testkit-flags.json").read_text(encoding="utf-8"))
    return evaluator


@given("an evaluator")
def an_evaluator(testkit_evaluator: Evaluator) -> None:
    assert testkit_evaluator.flag_keys


@given(parsers.re(r'a (?P<type_name>\w+)-flag with key "(?P<key>[^"]*)" and a fallback value "(?P<default>.*)"'))
def a_flag(evaluation: Evaluation, type_name: str, key: str, default: str) -> None:
    evaluation.ask(type_name, key, default)


@when("the flag was evaluated with details")
def evaluate(evaluation: Evaluation, testkit_evaluator: Evaluator) -> None:
    resolution = testkit_evaluator.resolve(
        evaluation.flag_key,
        # The testbed names types Boolean, String, Integer, Float, Object.
        evaluation.flag_type.lower(),  # type: ignore[arg-type]
        evaluation.default,
        evaluation.attributes,
        evaluation.targeting_key,
    )
    evaluation.outcome = Outcome(
        resolution.value, resolution.reason, resolution.error_code, resolution.variant, resolution.flag_metadata
    )
