"""Bad input, generated: flags, flagd documents, cohort sets and Rollout specs made of arbitrary JSON, and of valid
examples with a few things broken (a field dropped, a wrong type, a number out of range, a huge string, odd
unicode, deep nesting). Validation either accepts a document or refuses it with its package's error, naming the
path of each field at fault; nothing else is ever raised. Through the API a refused write is a 4xx problem naming
the field, and leaves the store as it was; a Rollout with a refused spec gets the InvalidSpec condition and
changes nothing."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from ringmaster_flagd.errors import DocumentError
from ringmaster_flagd.evaluator import FLAG_TYPES, Evaluator

from cohorts.assign import assign, compile_cohort_set
from cohorts.db import upgrade
from cohorts.errors import InvalidCohortSet
from cohorts.flagd import flagd_document
from cohorts.spec import DEFAULT_RINGS, CohortSetSpec, default_cohort_set, parse_cohort_set
from rollout.api.app import create_app
from rollout.controller.spec import InvalidRolloutSpec, parse_rollout_spec
from rollout.flags.errors import InvalidFlag
from rollout.flags.spec import FlagSpec, parse_flag
from rollout.settings import ServiceSettings
from tests.auth_helpers import authorized
from tests.shared_data import shared_dir
from tests.simulated_world import STATEFULSET, World
from tests.test_plan import rollout_spec, writes

REPOSITORY = Path(__file__).resolve().parent.parent
FUZZ = settings(max_examples=150, derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])

# Generated JSON: every type, with the awkward values (NaN, infinities, huge integers) among the numbers.
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30))
json_values = st.recursive(
    scalars, lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children,
                                                                              max_size=4),
    max_leaves=16)
AWKWARD_NUMBERS = (-1, 0, 2**31, -(2**31) - 1, 2**63, 2**64 + 1, 10**40, 1e308, -1e308, 1e-320,
                   float("inf"), float("-inf"), float("nan"), 0.1 + 0.2)
AWKWARD_TEXT = ("", " ", "\x00", "nul\x00inside", "\u202eevil", "Ǆǅǆ", "💥🚀", "e\u0301", "\ufeff", "a" * 100_000,
                "ü" * 20_000, "${jndi:ldap://x}", "../../etc/passwd", "<!channel>", "1h30x", "-5m", "NaN")
TYPE_SAMPLES: tuple[Any, ...] = (None, True, 7, 1.5, "text", [], {}, [1, "two"], {"unexpected": "object"})
# Shapes of nesting that validators descend into: lists, conditions, JsonLogic, plain objects.
WRAPPERS: tuple[Callable[[Any], Any], ...] = (
    lambda inner: [inner], lambda inner: {"not": inner}, lambda inner: {"all": [inner]},
    lambda inner: {"!": [inner]}, lambda inner: {"if": [inner, "on", "off"]}, lambda inner: {"nested": inner},
)
DEPTHS = (30, 300, 3000)

Path_ = tuple[str | int, ...]


def paths_of(document: Any, prefix: Path_ = ()) -> Iterator[Path_]:
    """Every place in a document a value sits at (not the document itself)."""
    children = document.items() if isinstance(document, dict) else enumerate(document) \
        if isinstance(document, list) else ()
    for key, child in children:
        yield (*prefix, key)
        yield from paths_of(child, (*prefix, key))


def with_value(document: Any, path: Path_, change: Callable[[Any], Any]) -> Any:
    """A copy of `document` with the value at `path` replaced by change(value) (the marker DROP removes it);
    only the containers along the path are copied, so values below stay shared."""
    if not path:
        return change(document)
    key, rest = path[0], path[1:]
    copied: Any = dict(document) if isinstance(document, dict) else list(document)
    changed = with_value(copied[key], rest, change)
    if changed is DROP and not rest:
        del copied[key]
    else:
        copied[key] = changed
    return copied


DROP = object()


class Document:
    """A generated document; shown by what was done to it, since printing one nested 3,000 deep would fail."""

    def __init__(self, value: Any, story: str) -> None:
        self.value = value
        self.story = story

    def __repr__(self) -> str:
        return f"Document({self.story})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # how hypothesis prints a failing example
        printer.text(repr(self))


@st.composite
def near_valid(draw: st.DrawFn, valid: list[Any], *, deep: bool = True) -> Document:
    """A valid document with one to three things broken, and perhaps something nested very deep."""
    index = draw(st.integers(0, len(valid) - 1))
    document, story = valid[index], [f"example {index}"]
    for _ in range(draw(st.integers(1, 3))):
        paths = list(paths_of(document))
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        kind = draw(st.sampled_from(["drop", "replace", "wrong type", "number", "text"]))
        if kind == "drop":
            document = with_value(document, path, lambda _: DROP)
        else:
            replacement = draw({"replace": json_values, "wrong type": st.sampled_from(TYPE_SAMPLES),
                                "number": st.sampled_from(AWKWARD_NUMBERS),
                                "text": st.sampled_from(AWKWARD_TEXT) | st.text(min_size=1, max_size=40)}[kind])
            document = with_value(document, path, replaced_by(replacement))
            kind += f" {replacement!r:.60}"
        story.append(f"{kind} at {path}")
    if deep and draw(st.booleans()):
        # Last, as nothing below walks a structure this deep recursively.
        path = draw(st.sampled_from(list(paths_of(document)) or [()]))
        wrap, depth = draw(st.sampled_from(WRAPPERS)), draw(st.sampled_from(DEPTHS))
        story.append(f"nested {depth} deep in {wrap(None)} at {path}")
        document = with_value(document, path, lambda inner: nest(inner, wrap, depth))
    return Document(document, "; ".join(story))


def documents(valid: list[Any], *, deep: bool = True) -> st.SearchStrategy[Document]:
    """Arbitrary JSON, and valid examples with things broken."""
    return json_values.map(lambda value: Document(value, f"{value!r:.300}")) | near_valid(valid, deep=deep)


def replaced_by(value: Any) -> Callable[[Any], Any]:
    return lambda _: value


def nest(inner: Any, wrap: Callable[[Any], Any], depth: int) -> Any:
    for _ in range(depth):
        inner = wrap(inner)
    return inner


def roots(field: str) -> str:
    return re.split(r"[.\[]", field, maxsplit=1)[0]


def assert_names_fields(problems: list[Any], message: str, allowed_roots: set[str], document: Any) -> None:
    """Each problem names a field the document has or should have; the error's message names them all."""
    assert problems, message
    written = [key for key in document if isinstance(key, str)] if isinstance(document, dict) else []
    for problem in problems:
        assert problem.field and problem.message, problem
        assert roots(problem.field) in allowed_roots or any(
            problem.field == key or problem.field.startswith((f"{key}.", f"{key}[")) for key in written), problem
        assert f"{problem.field}: " in message


# Flags (rollout/flags/spec.py)

COHORT_RINGS = {"default": list(DEFAULT_RINGS), "web": ["insiders", "everyone"]}
VERSION_RINGS = {("default", 1): list(DEFAULT_RINGS), ("web", 1): ["insiders", "everyone"]}
FLAG_FIELDS = {field.alias or name for name, field in FlagSpec.model_fields.items()}
VALID_FLAGS: list[dict[str, Any]] = [
    {"key": "new-checkout", "description": "The one-page checkout.", "type": "boolean",
     "variants": {"on": True, "off": False}, "defaultVariant": "off", "state": "ENABLED",
     "targeting": {"rings": {"cohortSet": "default", "variants": {"canary": "on", "early-adopter": "on"},
                             "otherwise": "off"}},
     "flagSet": "web", "metadata": {"owner": "payments", "ticket": 42}},
    {"key": "banner.colour", "type": "string", "variants": {"blue": "#00f", "grey": "#888"}, "defaultVariant": "grey",
     "targeting": {"jsonLogic": {"if": [{"===": [{"$ref": "ring-web"}, "insiders"]}, "blue",
                                        {"fractional": [{"var": "email"}, ["blue", 10], ["grey", 90]]}]}}},
    {"key": "price-factor", "type": "float", "variants": {"low": 0.5, "high": 2}, "defaultVariant": "low",
     "targeting": {"rings": {"cohortSet": "default", "version": 1, "epoch": 3, "variants": {"canary": "high"}}}},
    {"key": "layout", "type": "object", "variants": {"wide": {"columns": 3}, "narrow": {"columns": 1}},
     "state": "DISABLED",
     "targeting": {"jsonLogic": {"if": [{"sem_ver": [{"var": "appVersion"}, ">=", "2.0.0"]}, "wide", "narrow"]}}},
    {"key": "retries", "type": "integer", "variants": {"few": 1, "many": 5}},
]


@FUZZ
@given(generated=documents(VALID_FLAGS))
def test_a_flag_is_accepted_or_refused_naming_each_field_at_fault(generated: Document) -> None:
    document = generated.value
    note(generated.story)
    try:
        spec = parse_flag(document, COHORT_RINGS, VERSION_RINGS)
    except InvalidFlag as refused:
        assert_names_fields(refused.problems, str(refused), FLAG_FIELDS | {"flag"}, document)
        return
    json.dumps(spec.to_document())  # as the store keeps it


def too_deep(depth: int = 70) -> Any:
    return nest("leaf", lambda inner: [inner], depth)


@pytest.mark.parametrize(("parse", "document", "field"), [
    (lambda document: parse_flag(document, COHORT_RINGS), {**VALID_FLAGS[3], "variants": {"wide": too_deep()}},
     "variants.wide"),
    (lambda document: parse_flag(document, COHORT_RINGS), {**VALID_FLAGS[0], "metadata": {"owner": too_deep()}},
     "metadata.owner"),
    (lambda document: parse_flag(document, COHORT_RINGS),
     {**VALID_FLAGS[1], "targeting": {"jsonLogic": {"if": too_deep()}}}, "targeting.jsonLogic"),
    (parse_cohort_set, {"name": "deep", "rules": [{"name": "r", "ring": "canary",
                                                    "when": nest({"seenWithin": "7d"}, lambda inner: {"not": inner},
                                                                 70)}]}, "rules[0].when"),
    (parse_rollout_spec, rollout_spec(image=None, container=None,
                                      template={"spec": {"containers": [{"name": "web", "image": "web:2"}]},
                                                "metadata": {"labels": {}}, "extra": too_deep()}),
     "spec.template"),
])
def test_data_nested_past_the_limit_is_refused_naming_its_field(
        parse: Callable[[Any], Any], document: Any, field: str) -> None:
    """It crashed: a flag's variant, metadata or raw targeting nested thousands of levels deep raised
    RecursionError (in the checks, in repr) or pydantic's 'Circular reference detected' when stored; a Rollout's
    template, a RecursionError hashing its revision; a cohort set's conditions recursed when compiled."""
    with pytest.raises((InvalidFlag, InvalidCohortSet, InvalidRolloutSpec)) as refused:
        parse(document)
    problems = refused.value.problems  # type: ignore[attr-defined]
    assert [problem.field for problem in problems] == [field]
    assert "nests more than 64 levels" in problems[0].message


def test_a_field_whose_name_starts_with_a_capital_is_named_as_written() -> None:
    """It was named by its parent (or not at all): names starting with a capital were taken for pydantic's tags."""
    with pytest.raises(InvalidFlag) as refused:
        parse_flag({**VALID_FLAGS[4], "Owner": "payments", "metadata": {"Team": too_deep()}}, COHORT_RINGS)
    assert {problem.field for problem in refused.value.problems} >= {"Owner", "metadata.Team"}


# flagd documents, as the provider reads them (flagd-provider/ringmaster_flagd/document.py)

FLAGD_EXAMPLES = sorted((shared_dir() / "flagd-schema" / "test").glob("flag*/*/*.json"))  # flagd/, flags/
VALID_FLAGD = [json.loads(path.read_text()) for path in FLAGD_EXAMPLES if "positive" in path.parts]
# Where a DocumentError's message starts: the path of the field at fault, or the document as a whole.
FLAGD_PATHS = re.compile(r"^(flags\.|metadata[.:]|metadata must|'flags'|'\$evaluators'|a flag document|"
                         r"the flag document)")
CONTEXTS: list[dict[str, Any]] = [{}, {"email": "ana@ringmaster.dev", "appVersion": "2.1.0"},
                                  {"email": 5, "appVersion": ["x"], "nested": {"deep": None}}]


@pytest.mark.parametrize("example", FLAGD_EXAMPLES, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_flagds_schema_examples_load_or_are_refused_with_a_path(example: Path) -> None:
    loads_or_is_refused_with_a_path(json.loads(example.read_text()))


@FUZZ
@given(generated=documents(VALID_FLAGD))
def test_a_flagd_document_loads_or_is_refused_with_a_path_and_its_flags_evaluate_without_raising(
        generated: Document) -> None:
    note(generated.story)
    loads_or_is_refused_with_a_path(generated.value)


def loads_or_is_refused_with_a_path(document: Any) -> None:
    evaluator = Evaluator(clock=lambda: 1_700_000_000.0)
    try:
        evaluator.set_document(document)
    except DocumentError as refused:
        assert FLAGD_PATHS.match(str(refused)), str(refused)
        assert evaluator.flag_keys == []  # the previous document (none) is kept
        return
    for key in evaluator.flag_keys:
        for context in CONTEXTS:
            for flag_type in FLAG_TYPES:
                resolution = evaluator.resolve(key, flag_type, None, context, "user-1")
                assert resolution.reason in ("STATIC", "TARGETING_MATCH", "DEFAULT", "DISABLED", "ERROR")


# Cohort sets (cohorts/spec.py)

COHORT_FIELDS = {field.alias or name for name, field in CohortSetSpec.model_fields.items()}
VALID_SETS: list[dict[str, Any]] = [
    default_cohort_set().to_document(),
    json.loads((REPOSITORY / "examples" / "cohort-sets" / "web.json").read_text()),
    {"name": "tiny", "rings": ["only"]},
]
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


@FUZZ
@given(generated=documents(VALID_SETS))
def test_a_cohort_set_is_accepted_or_refused_naming_each_field_and_an_accepted_one_compiles(
        generated: Document) -> None:
    document = generated.value
    note(generated.story)
    try:
        spec = parse_cohort_set(document)
    except InvalidCohortSet as refused:
        assert_names_fields(refused.problems, str(refused), COHORT_FIELDS | {"cohort set"}, document)
        return
    compiled = compile_cohort_set(spec, version=1, compiled_at=NOW)
    for context in [*CONTEXTS, {"targetingKey": "ana", "team": "staff", "location": "eu-west"}]:
        assert assign(compiled, context, epoch=7).ring in spec.rings
    json.dumps(flagd_document(compiled, epoch=7))


# Rollout specs (rollout/controller/spec.py) and the controller's plan()

VALID_ROLLOUTS: list[dict[str, Any]] = [
    yaml.safe_load((REPOSITORY / "examples" / "rollout.yaml").read_text())["spec"],
    yaml.safe_load((REPOSITORY / "examples" / "bad-release" / "rollout.yaml").read_text())["spec"],
    rollout_spec(),
]


@FUZZ
@given(generated=documents(VALID_ROLLOUTS))
def test_a_rollout_spec_is_accepted_or_refused_naming_each_field_under_spec(generated: Document) -> None:
    document = generated.value
    note(generated.story)
    try:
        spec = parse_rollout_spec(document)
    except InvalidRolloutSpec as refused:
        assert refused.problems
        for problem in refused.problems:
            assert problem.field == "spec" or problem.field.startswith(("spec.", "spec[")), problem
            assert f"{problem.field}: {problem.message}" in str(refused)
        return
    spec.revision()  # what the controller computes first


@settings(FUZZ, max_examples=60)
@given(generated=near_valid([rollout_spec()], deep=False))
def test_the_controller_marks_a_refused_spec_invalid_and_changes_nothing(generated: Document) -> None:
    document = generated.value
    note(generated.story)
    world = World(document, replicas=3)

    plans = [world.step() for _ in range(3)]

    invalid = world.status.condition("InvalidSpec")
    assert invalid is not None
    try:
        parse_rollout_spec(document)
    except InvalidRolloutSpec as refused:
        assert invalid.status == "True" and invalid.message.startswith(refused.problems[0].field)
        assert all(not writes(decided) for decided in plans)
        assert set(world.statefulsets) == {STATEFULSET} and world.flag is None


# Through the API: a refused write is a problem naming the field, and nothing is written


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    database_url = f"sqlite:///{tmp_path_factory.mktemp('fuzz-api') / 'ringmaster.db'}"
    upgrade(database_url)
    with TestClient(create_app(ServiceSettings(database_url=database_url)),
                    headers=authorized(database_url)) as client:
        for flag in VALID_FLAGS[:1]:
            assert client.post("/api/v1/flags", json=flag).status_code == 201
        assert client.post("/api/v1/cohort-sets", json=VALID_SETS[1]).status_code == 201
        yield client


def stored(api: TestClient) -> list[Any]:
    """Everything a write may change: the flags, the cohort sets, and the audit log."""
    return [api.get(path).json() for path in ("/api/v1/flags", "/api/v1/cohort-sets", "/api/v1/audit?limit=1000")]


def as_json(document: Any) -> bytes:
    return json.dumps(document).encode()  # NaN and Infinity as Python writes them, which the service reads


def assert_refused_naming_a_field(response: Any, document: Any) -> None:
    """A problem document; an invalid body (422) names each field at fault, within the body when it is an object."""
    assert 400 <= response.status_code < 500, response.text[:2000]
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    if response.status_code != 422:
        assert response.status_code == 409, problem  # a flag or cohort set of that name exists
        return
    assert problem["errors"], problem
    for error in problem["errors"]:
        assert error["in"] in ("body", "query", "path", "header") and error["field"], error
        # Within an object body, the field itself (a key that is empty names no path: the body is named).
        assert error["field"] != "body" or not isinstance(document, dict) or "" in document, problem


WRITES: dict[str, Callable[[Any], tuple[str, str]]] = {
    "create flag": lambda document: ("POST", "/api/v1/flags"),
    "update flag": lambda document: ("PUT", f"/api/v1/flags/{VALID_FLAGS[0]['key']}"),
    "create cohort set": lambda document: ("POST", "/api/v1/cohort-sets"),
    "update cohort set": lambda document: ("PUT", f"/api/v1/cohort-sets/{VALID_SETS[1]['name']}"),
}


def api_documents(kind: str) -> st.SearchStrategy[Document]:
    valid = VALID_FLAGS if "flag" in kind else VALID_SETS
    if kind.startswith("update"):
        valid = [example for example in valid if example.get("key", example.get("name")) in
                 (VALID_FLAGS[0]["key"], VALID_SETS[1]["name"])]
    # Not nested past what JSON encoders can write; the deep documents have a test of their own below.
    return documents(valid, deep=False)


@pytest.mark.parametrize("kind", list(WRITES))
def test_a_refused_write_is_a_problem_naming_the_field_and_writes_nothing(api: TestClient, kind: str) -> None:
    @settings(FUZZ, max_examples=60)
    @given(generated=api_documents(kind))
    def refused_writes_nothing(generated: Document) -> None:
        document = generated.value
        note(generated.story)
        before = stored(api)
        method, path = WRITES[kind](document)
        response = api.request(method, path, content=as_json(document), headers={"Content-Type": "application/json"})
        if response.status_code < 300:
            return
        assert_refused_naming_a_field(response, document)
        assert stored(api) == before

    refused_writes_nothing()


def deep_json(depth: int, opening: str, closing: str, inner: str) -> str:
    return opening * depth + inner + closing * depth


DEEP_BODIES: dict[str, Callable[[int], str]] = {
    "flag targeting": lambda depth: f'{{"key": "deep-{depth}", "type": "boolean", "variants": {{"on": true, '
                                    f'"off": false}}, "targeting": {{"jsonLogic": '
                                    + deep_json(depth, '{"!": [', "]}", "true") + "}}",
    "flag variant value": lambda depth: f'{{"key": "deep-value-{depth}", "type": "object", "variants": {{"on": '
                                        + deep_json(depth, '{"a": ', "}", "1") + "}}",
    "cohort set condition": lambda depth: f'{{"name": "deep-{depth}", "rules": [{{"name": "r", "ring": "canary", '
                                          '"when": ' + deep_json(depth, '{"not": ', "}",
                                                                 '{"attribute": "team", "op": "equals", "value": "x"}')
                                          + "}]}",
    "usage attributes": lambda depth: f'{{"rows": [{{"targetingKey": "deep-{depth}", "attributes": {{"a": '
                                      + deep_json(depth, "[", "]", "1") + "}}]}",
}
DEEP_PATHS = {"flag targeting": "/api/v1/flags", "flag variant value": "/api/v1/flags",
              "cohort set condition": "/api/v1/cohort-sets", "usage attributes": "/api/v1/usage"}
DEEP_FIELDS = {"flag targeting": "targeting.jsonLogic", "flag variant value": "variants.on",
               "cohort set condition": "rules[0].when", "usage attributes": "rows[0].attributes"}
READS = ("/api/v1/flags", "/api/v1/cohort-sets", "/flagd/v1/flags.json", "/api/v1/cohort-sets/default/estimate",
         "/api/v1/audit")


@pytest.mark.parametrize("depth", [50, 500, 5_000, 100_000])
@pytest.mark.parametrize("kind", list(DEEP_BODIES))
def test_a_deeply_nested_body_is_stored_or_refused_as_a_problem_and_never_crashes(
        api: TestClient, kind: str, depth: int) -> None:
    body = DEEP_BODIES[kind](depth)
    before = stored(api)

    response = api.post(DEEP_PATHS[kind], content=body.encode(), headers={"Content-Type": "application/json"})

    if response.status_code < 300:
        assert all(api.get(path).status_code == 200 for path in READS), f"{kind} nested {depth} deep broke a read"
        return
    assert 400 <= response.status_code < 500, response.text[:2000]
    assert response.headers["content-type"] == "application/problem+json"
    assert stored(api) == before
    if response.status_code == 422:
        assert [error["field"] for error in response.json()["errors"]] == [DEEP_FIELDS[kind]], response.json()
