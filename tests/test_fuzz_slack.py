"""Requests to /slack/events that Slack never sends, generated: unsigned, badly signed or stale; replayed;
malformed (bad form encoding, missing fields, the wrong content type, huge bodies, interaction payloads that are
not JSON or not of the shape Slack sends). Each gets 401 (not signed by Slack in the last 5 minutes, or signed
before), 400 (signed, but not a request Ringmaster acts on, the fields at fault named) or 413 (past the body
limit), and nothing changes: no pull, no release, nothing said in Slack. tests/test_slack.py has the hand-written
cases this extends, and the fixtures used here."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, note
from hypothesis import settings as examples
from hypothesis import strategies as st
from sqlalchemy import Engine

from rollout.andon.store import AndonStore
from rollout.api.app import create_app
from rollout.settings import ServiceSettings
from tests.test_slack import FORM, PULLER, FakeSlack, button_click, reason_submitted, sign, slash_command
from tests.test_slack import engine as engine  # the fixtures: the service's settings and database, a fake Slack
from tests.test_slack import fake_slack as fake_slack
from tests.test_slack import settings as settings
from tests.test_slack import sqlite_url as sqlite_url

RESPONSE_URL = "http://127.0.0.1:9/response/fuzz"  # nothing listens there: no listener may ever post to it
MAX_BODY_BYTES = 1024 * 1024
FUZZ = examples(max_examples=200, derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

@pytest.fixture
def service(settings: ServiceSettings) -> Iterator[TestClient]:
    """The service of tests/test_slack.py, without the limit on failed authentications (tested on its own), which
    would answer 429 to all but the first few of the badly signed requests generated here."""
    with TestClient(create_app(replace(settings, auth_failure_limit=0))) as client:
        yield client


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10)


def command_fields(text: str = "pull checkout errors up in eu-west") -> dict[str, str]:
    return dict(parse_qsl(slash_command(PULLER, text, RESPONSE_URL)))


# What a listener needs and how to break it: the field, and values it can never be.
COMMAND_BREAKS: dict[str, list[str | None]] = {
    "command": [None, "", "/andon2", "/ANDON", "andon"],
    "user_id": [None, ""],
    "response_url": [None, ""],
}
BUTTON_BREAKS: dict[tuple[str | int, ...], list[Any]] = {
    ("type",): [None, "message_action", "view_closed", 5],
    ("user",): [None, "U0PULLER", []],
    ("user", "id"): [None, "", 7, ["U0PULLER"]],
    ("trigger_id",): [None, "", 1337],
    ("actions",): [None, [], "andon_pull", [{"action_id": "other"}], [{"action_id": "andon_pull"}] * 2],
    ("actions", 0, "action_id"): [None, "other", 1],
}
REASON_BREAKS: dict[tuple[str | int, ...], list[Any]] = {
    ("type",): [None, "view_closed", "block_actions"],
    ("user", "id"): [None, "", 7],
    ("view",): [None, "modal", []],
    ("view", "callback_id"): [None, "other"],
    ("view", "state"): [None, [], {"values": {}}, {"values": {"reason": {}}}],
    ("view", "private_metadata"): ["not json", "[1]", "5", 5],
}
DROP = None


def broken(document: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    """`document` with the value at `path` replaced (None: removed); containers along the path are copied."""
    copied: dict[str, Any] = json.loads(json.dumps(document))
    parent: Any = copied
    for key in path[:-1]:
        parent = parent[key]
    if value is DROP:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return copied


@st.composite
def malformed_bodies(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """A body (and its content type) no listener can act on: each has at least one thing Slack never sends."""
    kind = draw(st.sampled_from(["command", "button", "reason", "payload text", "payload json", "bytes",
                                 "content type"]))
    note(kind)
    if kind == "command":
        fields: dict[str, str | None] = dict(command_fields(draw(st.text(max_size=40))))
        field = draw(st.sampled_from(sorted(COMMAND_BREAKS)))
        fields[field] = draw(st.sampled_from(COMMAND_BREAKS[field]))
        extra = draw(st.dictionaries(st.text(min_size=1, max_size=8).filter(lambda name: name != "payload"),
                                     st.text(max_size=20), max_size=3))
        form = {name: value for name, value in fields.items() if value is not None} | \
            {name: value for name, value in extra.items() if name not in COMMAND_BREAKS}
        return urlencode(form).encode(), FORM
    if kind in ("button", "reason"):
        valid = json.loads(dict(parse_qsl(button_click(PULLER, RESPONSE_URL) if kind == "button" else
                                          reason_submitted(PULLER, "checkout errors", "{}")))["payload"])
        breaks = BUTTON_BREAKS if kind == "button" else REASON_BREAKS
        path = draw(st.sampled_from(sorted(breaks, key=str)))
        payload = broken(valid, path, draw(st.sampled_from(breaks[path])))
        return urlencode({"payload": json.dumps(payload)}).encode(), FORM
    if kind == "payload text":
        text = draw(st.text(max_size=60))
        return urlencode({"payload": text}).encode(), FORM
    if kind == "payload json":
        return urlencode({"payload": json.dumps(draw(json_values))}).encode(), FORM
    if kind == "bytes":
        return draw(st.binary(max_size=300)), draw(st.sampled_from([FORM, None]))
    # A slash command Slack would send, but not as Slack sends it.
    body, content_type = draw(st.sampled_from([
        (urlencode(command_fields()).encode(), None), (urlencode(command_fields()).encode(), "text/plain"),
        (json.dumps(command_fields()).encode(), "application/json"),
        (json.dumps(command_fields()).encode(), FORM + "x"),
        (urlencode(command_fields()).encode(), "multipart/form-data; boundary=x"),
    ]))
    return body, content_type


def _unsigned(body: bytes) -> dict[str, str]:
    return {}


def _wrong_secret(body: bytes) -> dict[str, str]:
    return sign(body, secret="not-the-signing-secret")


# Well past the 5 minutes either way: the verifier compares whole seconds, so 301 s ahead can round to 300.
def _stale(body: bytes) -> dict[str, str]:
    return sign(body, at=time.time() - 310)


def _from_the_future(body: bytes) -> dict[str, str]:
    return sign(body, at=time.time() + 310)


def _of_another_body(body: bytes) -> dict[str, str]:
    return sign(body + b"&")


def _signed(body: bytes) -> dict[str, str]:
    return sign(body)


SIGNINGS: list[Callable[[bytes], dict[str, str]]] = [_unsigned, _wrong_secret, _stale, _from_the_future,
                                                     _of_another_body, _signed]


def headers_for(body: bytes, signing: Callable[[bytes], dict[str, str]], content_type: str | None) -> dict[str, str]:
    headers = {name: value for name, value in signing(body).items() if name != "Content-Type"}
    return headers | ({"Content-Type": content_type} if content_type is not None else {})


def assert_nothing_changed(engine: Engine, fake_slack: FakeSlack) -> None:
    assert AndonStore(engine).history() == []
    assert fake_slack.said() == []


def test_requests_slack_never_sends_are_refused_and_change_nothing(
        service: TestClient, engine: Engine, fake_slack: FakeSlack) -> None:
    accepted_signatures: set[str] = set()

    @FUZZ
    @given(body_and_type=malformed_bodies(), signing=st.sampled_from(SIGNINGS))
    def refused(body_and_type: tuple[bytes, str | None], signing: Callable[[bytes], dict[str, str]]) -> None:
        body, content_type = body_and_type
        headers = headers_for(body, signing, content_type)
        response = service.post("/slack/events", content=body, headers=headers)

        problem = response.json()
        if signing is _signed and headers["X-Slack-Signature"] in accepted_signatures:
            # The same body signed in the same second as an earlier example: a replay.
            assert response.status_code == 401 and problem["type"].endswith("/replayed-slack-request"), problem
        elif signing is _signed and body.decode("utf-8", errors="replace").encode() == body:
            accepted_signatures.add(headers["X-Slack-Signature"])
            assert response.status_code == 400, problem
            assert problem["type"].endswith("/bad-slack-request") and problem["errors"], problem
            assert all(error["field"] for error in problem["errors"]), problem
        else:
            # Not signed now by Slack, or not UTF-8 (which nothing Slack signs is): refused before it is read.
            assert response.status_code == 401 and problem["type"].endswith("/bad-slack-signature"), problem
        assert response.headers["content-type"] == "application/problem+json"
        assert_nothing_changed(engine, fake_slack)

    refused()


def test_a_huge_body_is_refused_unread_signed_or_not(
        service: TestClient, engine: Engine, fake_slack: FakeSlack) -> None:
    body = urlencode(command_fields("pull " + "x" * (2 * MAX_BODY_BYTES))).encode()
    for headers in (headers_for(body, _signed, FORM), headers_for(body, _unsigned, FORM)):
        response = service.post("/slack/events", content=body, headers=headers)
        assert response.status_code == 413 and response.json()["type"].endswith("/content-too-large")
    assert_nothing_changed(engine, fake_slack)


def test_a_signed_request_sent_again_is_refused_as_a_replay_and_acts_once(
        service: TestClient, engine: Engine, fake_slack: FakeSlack) -> None:
    response_url = fake_slack.response_url()
    body = slash_command(PULLER, "pull checkout errors up in eu-west", response_url)
    headers = sign(body)

    first = service.post("/slack/events", content=body, headers=headers)
    again = service.post("/slack/events", content=body, headers=headers)

    assert (first.status_code, first.text) == (200, "")
    assert again.status_code == 401 and again.json()["type"].endswith("/replayed-slack-request")
    assert "You pulled" in fake_slack.answer_at(response_url)["text"]
    assert len(AndonStore(engine).history()) == 1


def test_a_command_whose_text_says_payload_reaches_the_listener_whole(
        service: TestClient, engine: Engine, fake_slack: FakeSlack) -> None:
    """Bolt's parser takes any body containing "payload" for an interaction; Ringmaster reads the form itself."""
    response_url = fake_slack.response_url()
    body = slash_command(PULLER, "pull payload service returns 500s", response_url)

    response = service.post("/slack/events", content=body, headers=sign(body))

    assert (response.status_code, response.text) == (200, "")
    assert "You pulled" in fake_slack.answer_at(response_url)["text"]
    assert [pull.reason for pull in AndonStore(engine).active()] == ["payload service returns 500s"]


def _without(fields: dict[str, str], name: str) -> dict[str, str]:
    return {key: value for key, value in fields.items() if key != name}


def _payload(body: str) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(dict(parse_qsl(body))["payload"])
    return payload


@pytest.mark.parametrize(("body", "content_type", "field"), [
    pytest.param(urlencode(_without(command_fields(), "user_id")), FORM, "user_id", id="command without user_id"),
    pytest.param(urlencode(command_fields() | {"command": "/deploy"}), FORM, "command", id="another command"),
    pytest.param(urlencode({"payload": json.dumps(_without(_payload(button_click(PULLER, RESPONSE_URL)),
                                                           "trigger_id"))}), FORM, "payload.trigger_id",
                 id="click without trigger_id"),
    pytest.param(json.dumps(command_fields()), "application/json", "Content-Type", id="a command as JSON"),
])
def test_a_signed_request_without_what_its_listener_reads_is_a_400_naming_the_field(
        service: TestClient, engine: Engine, fake_slack: FakeSlack, body: str, content_type: str, field: str) -> None:
    """They were acknowledged and then failed in the listener (a KeyError nobody heard of), were answered 404 by
    Bolt (no listener for them), or, as JSON, were carried out although Slack never sends a command so."""
    headers = headers_for(body.encode(), _signed, content_type)

    response = service.post("/slack/events", content=body.encode(), headers=headers)

    assert response.status_code == 400 and field in [error["field"] for error in response.json()["errors"]]
    assert_nothing_changed(engine, fake_slack)
