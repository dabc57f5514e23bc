"""Steps shared by the two conformance suites (the testbed's evaluator suite and its provider suite).

A scenario fills an `Evaluation` (flag, type, default, context), evaluates it through the
evaluator or through a provider, and checks the `Outcome`. The testbed's tags become pytest
marks; the excluded ones (see tests/provider/testbed.py for why) become skips that say why.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pytest_bdd import given, parsers, then

from tests.provider.testbed import EXCLUDED_TAGS, feature_tags, flagd_testbed, typed

HERE = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    features = [*flagd_testbed().glob("gherkin/*.feature"), *flagd_testbed().glob("evaluator/gherkin/*.feature")]
    for tag in sorted(feature_tags(features)):
        config.addinivalue_line("markers", f"{tag}: flagd testbed tag @{tag}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if not item.path.is_relative_to(HERE):
            continue
        for tag, reason in EXCLUDED_TAGS.items():
            if item.get_closest_marker(tag) is not None:
                item.add_marker(pytest.mark.skip(reason=f"@{tag}: {reason}"))
                break


@dataclass
class Outcome:
    value: Any
    reason: str | None
    error_code: str | None
    variant: str | None
    metadata: Mapping[str, Any]


@dataclass
class Evaluation:
    """One scenario's flag evaluation: what is asked, and what came back."""

    flag_type: str = ""
    flag_key: str = ""
    default: Any = None
    attributes: dict[str, Any] = field(default_factory=dict)
    targeting_key: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    outcome: Outcome | None = None

    def ask(self, type_name: str, flag_key: str, default: str) -> None:
        self.flag_type, self.flag_key, self.default = type_name, flag_key, typed(type_name, default)

    def answered(self) -> Outcome:
        assert self.outcome is not None, "the flag was not evaluated"
        return self.outcome


@pytest.fixture
def evaluation() -> Evaluation:
    return Evaluation()


@given(
    parsers.re(
        r'a context containing a key "(?P<key>[^"]*)", with type "(?P<type_name>\w+)" and with value "(?P<value>.*)"'
    )
)
def context_key(evaluation: Evaluation, key: str, type_name: str, value: str) -> None:
    evaluation.attributes[key] = typed(type_name, value)


@given(parsers.re(r'a context containing a targeting key with value "(?P<value>.*)"'))
def context_targeting_key(evaluation: Evaluation, value: str) -> None:
    evaluation.targeting_key = typed("String", value)


@given(
    parsers.re(
        r'a context containing a nested property with outer key "(?P<outer>[^"]*)" and inner key "(?P<inner>[^"]*)",'
        r' with value "(?P<value>.*)"'
    )
)
def context_nested(evaluation: Evaluation, outer: str, inner: str, value: str) -> None:
    evaluation.attributes.setdefault(outer, {})[inner] = typed("String", value)


@then(parsers.re(r'the resolved details value should be "(?P<value>.*)"'))
def value_is(evaluation: Evaluation, value: str) -> None:
    expected = typed(evaluation.flag_type, value)
    actual = evaluation.answered().value
    assert (actual, type(actual)) == (expected, type(expected))


@then(parsers.re(r'the reason should be "(?P<reason>.*)"'))
def reason_is(evaluation: Evaluation, reason: str) -> None:
    assert evaluation.answered().reason == reason


@then(parsers.re(r'the error-code should be "(?P<error_code>.*)"'))
def error_code_is(evaluation: Evaluation, error_code: str) -> None:
    assert evaluation.answered().error_code == (error_code or None)


@then("the resolved metadata should contain")
def metadata_contains(evaluation: Evaluation, datatable: list[list[str]]) -> None:
    header, *rows = datatable
    assert header == ["key", "metadata_type", "value"]
    metadata = evaluation.answered().metadata
    for key, type_name, value in rows:
        expected = typed(type_name, value)
        assert key in metadata, f"metadata {dict(metadata)} has no {key!r}"
        assert (metadata[key], type(metadata[key])) == (expected, type(expected))


@then("the resolved metadata is empty")
def metadata_empty(evaluation: Evaluation) -> None:
    assert dict(evaluation.answered().metadata) == {}
