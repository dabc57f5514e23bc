"""flagd's provider conformance suite, file mode, against `RingmasterProvider` through the OpenFeature client.

Runs the testbed's targeting, evaluation, disabled and metadata features with the provider reading
the testbed's flags merged into one allFlags.json, as flagd's own file-mode runs do, except the
rows whose tags tests/provider/testbed.py excludes, for the reasons it gives. The `cache` option
is accepted and has nothing to act on (the provider evaluates in-process and caches nothing);
the `selector` option picks the file the provider reads.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.evaluation_context import EvaluationContext
from pytest_bdd import given, parsers, scenarios, when
from ringmaster_flagd import RingmasterProvider

from tests.provider.conftest import Evaluation, Outcome
from tests.provider.testbed import flagd_testbed, merged_testbed_flags

FEATURES = ("targeting.feature", "evaluation.feature", "disabled.feature", "metadata.feature")
DOMAIN = "ringmaster-conformance"

scenarios(*(str(flagd_testbed() / "gherkin" / feature) for feature in FEATURES))


@pytest.fixture(scope="module")
def all_flags_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("testbed") / "allFlags.json"
    path.write_text(json.dumps(merged_testbed_flags(), indent=2), encoding="utf-8")
    return path


@pytest.fixture
def providers() -> Iterator[list[RingmasterProvider]]:
    started: list[RingmasterProvider] = []
    yield started
    for provider in started:
        provider.shutdown()


@pytest.fixture
def client() -> OpenFeatureClient:
    return api.get_client(DOMAIN)


def flag_file(evaluation: Evaluation, all_flags_file: Path) -> Path:
    selector = evaluation.options.get("selector", "flags/allFlags.json")
    if selector == "flags/allFlags.json":
        return all_flags_file
    if selector.startswith("rawflags/"):
        return flagd_testbed() / "flags" / selector.removeprefix("rawflags/")
    raise AssertionError(f"selector {selector!r} names no testbed flag file")


@given(parsers.re(r'an option "(?P<name>[^"]*)" of type "(?P<type_name>\w+)" with value "(?P<value>.*)"'))
def an_option(evaluation: Evaluation, name: str, type_name: str, value: str) -> None:
    evaluation.options[name] = value


@given(parsers.re(r"a (stable|metadata) flagd provider"))
def a_provider(evaluation: Evaluation, all_flags_file: Path, providers: list[RingmasterProvider]) -> None:
    provider = RingmasterProvider(f"file:{flag_file(evaluation, all_flags_file)}")
    providers.append(provider)
    api.set_provider_and_wait(provider, DOMAIN)


@given(parsers.re(r'a (?P<type_name>\w+)-flag with key "(?P<key>[^"]*)" and a default value "(?P<default>.*)"'))
def a_flag(evaluation: Evaluation, type_name: str, key: str, default: str) -> None:
    evaluation.ask(type_name, key, default)


@when("the flag was evaluated with details")
def evaluate(evaluation: Evaluation, client: OpenFeatureClient) -> None:
    context = EvaluationContext(evaluation.targeting_key, evaluation.attributes)
    get_details = getattr(client, f"get_{evaluation.flag_type.lower()}_details")
    details = get_details(evaluation.flag_key, evaluation.default, context)
    evaluation.outcome = Outcome(
        details.value, details.reason, details.error_code, details.variant, details.flag_metadata
    )
