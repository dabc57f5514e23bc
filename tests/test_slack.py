"""The andon cord in Slack, without Slack: requests signed as Slack signs them, sent to the real
service (FastAPI, Bolt, a migrated SQLite database), and a fake Slack Web API on 127.0.0.1 that
records every call, the response_url posts included (WebClient's base_url points at it)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
from fastapi.testclient import TestClient
from slack_bolt import App, BoltRequest
from slack_sdk import WebClient
from sqlalchemy import Engine

from cohorts.db import make_engine, upgrade
from rollout.andon.announce import Silent
from rollout.andon.scope import Scope
from rollout.andon.store import AndonStore, Pull
from rollout.api.app import create_app
from rollout.settings import ServiceSettings, SettingsError
from rollout.slack import messages
from rollout.slack.announce import SlackAnnouncer
from rollout.slack.commands import Help, PullCord, ReleaseCord, Status, parse
from rollout.slack.users import parse_slack_users
from tests.polling import eventually

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
BOT_TOKEN = "xoxb-test"
CHANNEL = "C0ANDON"
PULLER, RELEASER, OTHER_RELEASER, VIEWER, STRANGER = "U0PULLER", "U0RELEASER", "U0OTHER", "U0VIEWER", "U0STRANGER"
USERS = f"{PULLER}=puller,{RELEASER}=releaser,{OTHER_RELEASER}=releaser,{VIEWER}=viewer"
FORM = "application/x-www-form-urlencoded"


@dataclass(frozen=True)
class SlackCall:
    path: str
    authorization: str | None
    body: dict[str, Any]


@dataclass
class FakeSlack:
    """Slack's Web API (/api/<method>) and its response_urls (/response/<id>), recording each call."""

    url: str = ""
    calls: list[SlackCall] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # method -> the error Slack answers it with
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, call: SlackCall) -> None:
        with self.lock:
            self.calls.append(call)

    def to(self, path: str) -> list[SlackCall]:
        with self.lock:
            return [call for call in self.calls if call.path == path]

    def said(self) -> list[SlackCall]:
        """Every call that says something to someone: all but auth.test (Bolt's look at its own token)."""
        with self.lock:
            return [call for call in self.calls if call.path != "/api/auth.test"]

    def method(self, name: str) -> list[SlackCall]:
        return self.to(f"/api/{name}")

    def response_url(self) -> str:
        return f"{self.url}/response/{uuid.uuid4().hex}"

    def wait_for(self, path: str, count: int = 1) -> list[SlackCall]:
        """The calls to `path`, once there are at least `count` of them."""
        def enough() -> list[SlackCall] | None:
            calls = self.to(path)
            return calls if len(calls) >= count else None
        return eventually(enough, timeout_s=10, what=f"{count} call(s) to {path}")

    def answer_at(self, response_url: str) -> dict[str, Any]:
        """The one post to `response_url`, waited for."""
        (answer,) = self.wait_for(response_url.removeprefix(self.url))
        return answer.body


class _FakeSlackHandler(BaseHTTPRequestHandler):
    fake: FakeSlack

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        if "json" in self.headers.get("Content-Type", ""):
            body: dict[str, Any] = json.loads(raw) if raw else {}
        else:
            body = dict(parse_qsl(raw))
        self.fake.record(SlackCall(self.path, self.headers.get("Authorization"), body))
        method = self.path.removeprefix("/api/")
        if self.path.startswith("/response/"):
            self._send("ok", "text/plain")
        elif method in self.fake.errors:
            self._send(json.dumps({"ok": False, "error": self.fake.errors[method]}))
        elif method == "auth.test":
            self._send(json.dumps({"ok": True, "url": "https://acme.slack.com/", "team": "Acme", "user": "ringmaster",
                                   "team_id": "T0ACME", "user_id": "U0BOT", "bot_id": "B0BOT"}))
        else:
            self._send(json.dumps({"ok": True, "channel": body.get("channel"), "ts": "1700000000.000100"}))

    def _send(self, text: str, content_type: str = "application/json") -> None:
        encoded = text.encode()
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(encoded)))
        self.end_headers()
        self.wfile.write(encoded)

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    fake = FakeSlack()
    handler = type("Handler", (_FakeSlackHandler,), {"fake": fake})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-slack",
                              daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def sqlite_url(tmp_path: Any) -> str:
    url = f"sqlite:///{tmp_path / 'ringmaster.db'}"
    upgrade(url)
    return url


@pytest.fixture
def engine(sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(sqlite_url)
    yield engine
    engine.dispose()


@pytest.fixture
def settings(sqlite_url: str, fake_slack: FakeSlack) -> ServiceSettings:
    return ServiceSettings(database_url=sqlite_url, slack_signing_secret=SECRET, slack_bot_token=BOT_TOKEN,
                           slack_channel=CHANNEL, slack_api_url=fake_slack.url + "/api/",
                           slack_users=parse_slack_users(USERS))


@pytest.fixture
def service(settings: ServiceSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def sign(body: str | bytes, secret: str = SECRET, at: float | None = None) -> dict[str, str]:
    """The headers Slack sends with `body`: v0=HMAC-SHA256(secret, "v0:<timestamp>:<body>")."""
    raw = body.encode() if isinstance(body, str) else body
    timestamp = str(int(time.time() if at is None else at))
    digest = hmac.new(secret.encode(), b"v0:" + timestamp.encode() + b":" + raw, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": timestamp, "X-Slack-Signature": f"v0={digest}", "Content-Type": FORM}


def slash_command(user_id: str, text: str, response_url: str) -> str:
    return urlencode({"token": "deprecated", "team_id": "T0ACME", "team_domain": "acme", "channel_id": "C0OPS",
                      "channel_name": "ops", "user_id": user_id, "user_name": f"name-of-{user_id}",
                      "command": "/andon", "text": text, "api_app_id": "A0RING", "is_enterprise_install": "false",
                      "response_url": response_url, "trigger_id": "1337.42.abc"})


def interaction(payload: dict[str, Any]) -> str:
    return urlencode({"payload": json.dumps(payload)})


def andon(service: TestClient, fake: FakeSlack, user_id: str, text: str) -> dict[str, Any]:
    """Run `/andon <text>` as `user_id`: the HTTP answer must be the bare ack; returns what came to response_url."""
    response_url = fake.response_url()
    body = slash_command(user_id, text, response_url)
    response = service.post("/slack/events", content=body, headers=sign(body))
    assert (response.status_code, response.text) == (200, ""), response.text
    return fake.answer_at(response_url)


def button_click(user_id: str, response_url: str, trigger_id: str = "1337.43.button") -> str:
    return interaction({
        "type": "block_actions", "api_app_id": "A0RING", "token": "deprecated", "trigger_id": trigger_id,
        "user": {"id": user_id, "username": f"name-of-{user_id}", "team_id": "T0ACME"},
        "team": {"id": "T0ACME", "domain": "acme"}, "channel": {"id": "C0OPS", "name": "ops"},
        "container": {"type": "message", "message_ts": "1700000000.000200", "channel_id": "C0OPS",
                      "is_ephemeral": True},
        "response_url": response_url,
        "actions": [{"type": "button", "action_id": messages.PULL_BUTTON, "block_id": "b1", "value": "global",
                     "style": "danger", "text": {"type": "plain_text", "text": "Pull the andon cord"},
                     "action_ts": "1700000000.000300"}],
    })


def reason_submitted(user_id: str, reason: str, private_metadata: str) -> str:
    return interaction({
        "type": "view_submission", "api_app_id": "A0RING", "token": "deprecated", "trigger_id": "1337.44.submit",
        "user": {"id": user_id, "username": f"name-of-{user_id}", "team_id": "T0ACME"},
        "team": {"id": "T0ACME", "domain": "acme"},
        "view": {"id": "V0MODAL", "team_id": "T0ACME", "type": "modal", "callback_id": messages.REASON_VIEW,
                 "private_metadata": private_metadata, "hash": "1700000000.abc",
                 "title": {"type": "plain_text", "text": "Pull the andon cord"},
                 "state": {"values": {messages.REASON_BLOCK: {messages.REASON_INPUT: {
                     "type": "plain_text_input", "value": reason}}}}},
        "response_urls": [],
    })


def text_of(answer: dict[str, Any]) -> str:
    """Everything a person reads of a message: its text and its blocks' texts."""
    return json.dumps(answer, ensure_ascii=False)


def announcements(fake: FakeSlack, count: int) -> list[dict[str, Any]]:
    posts = fake.wait_for("/api/chat.postMessage", count)
    assert all(post.authorization == f"Bearer {BOT_TOKEN}" and post.body["channel"] == CHANNEL for post in posts)
    return [post.body for post in posts]


def test_slash_pull_is_acked_at_once_then_pulls_globally_as_the_slack_user_and_announces_it(
        service: TestClient, fake_slack: FakeSlack, engine: Engine) -> None:
    answer = andon(service, fake_slack, PULLER, "pull checkout errors up in eu-west <!channel>")

    (pull,) = AndonStore(engine).active()
    assert (pull.scope, pull.actor, pull.via) == (Scope(), f"slack:{PULLER}", "slack")
    assert pull.reason == "checkout errors up in eu-west <!channel>"
    assert answer["response_type"] == "ephemeral" and f"pull {pull.id}" in answer["text"]
    (announced,) = announcements(fake_slack, 1)
    assert f"<@{PULLER}>" in text_of(announced) and f"Pull {pull.id} by" in text_of(announced)
    # A reason is shown, never obeyed: no @channel ping, no link of the puller's making.
    assert "&lt;!channel&gt;" in announced["text"] and "<!channel>" not in text_of(announced)


class GatedStore(AndonStore):
    """Pulls only once the test opens the gate, so a pull written before the HTTP answer cannot happen."""

    def __init__(self, engine: Engine, gate: threading.Event) -> None:
        super().__init__(engine)
        self.gate = gate

    def pull(self, scope: Scope, reason: str, actor: str, via: Any = "api") -> Pull:
        assert self.gate.wait(timeout=10), "the pull waited for the HTTP answer, which never came"
        return super().pull(scope, reason, actor, via)


def test_the_http_answer_is_the_ack_and_comes_before_the_database_work(
        service: TestClient, fake_slack: FakeSlack, engine: Engine) -> None:
    gate = threading.Event()
    service.app.state.slack.andon.store = GatedStore(engine, gate)  # type: ignore[attr-defined]
    response_url = fake_slack.response_url()
    body = slash_command(PULLER, "pull latency doubled on checkout", response_url)

    response = service.post("/slack/events", content=body, headers=sign(body))

    assert (response.status_code, response.text) == (200, "")
    assert AndonStore(engine).history() == [] and fake_slack.to(response_url.removeprefix(fake_slack.url)) == []
    gate.set()
    assert "You pulled" in fake_slack.answer_at(response_url)["text"]
    assert [pull.reason for pull in AndonStore(engine).active()] == ["latency doubled on checkout"]


def test_release_of_the_only_pull_needs_no_id_and_is_announced(
        service: TestClient, fake_slack: FakeSlack, engine: Engine) -> None:
    andon(service, fake_slack, PULLER, "pull checkout errors")

    answer = andon(service, fake_slack, RELEASER, "release rolled back web 1.4.2, errors gone")

    (released,) = [AndonStore(engine).get(event.pull_id) for event in AndonStore(engine).history()
                   if event.kind == "release"]
    assert released.release is not None and AndonStore(engine).active() == []
    assert (released.release.actor, released.release.via) == (f"slack:{RELEASER}", "slack")
    assert released.release.reason == "rolled back web 1.4.2, errors gone"
    assert f"You released pull {released.id}" in answer["text"]
    assert "released" in announcements(fake_slack, 2)[1]["text"]


def test_with_several_pulls_a_release_must_name_one(
        service: TestClient, fake_slack: FakeSlack, engine: Engine) -> None:
    store = AndonStore(engine)
    first = store.pull(Scope(), "checkout errors", "ana", "api")
    second = store.pull(Scope(namespace="shop"), "db migration running", "bo", "cli")

    unnamed = andon(service, fake_slack, RELEASER, "release all good now")
    assert "2 pulls are active" in unnamed["text"]
    assert f"Pull {first.id}* over every rollout" in text_of(unnamed["blocks"])
    assert f"Pull {second.id}* over namespace shop" in text_of(unnamed["blocks"])
    assert [pull.id for pull in store.active()] == [first.id, second.id]

    named = andon(service, fake_slack, RELEASER, f"release #{second.id} migration finished")
    assert f"You released pull {second.id}" in named["text"]
    assert [pull.id for pull in store.active()] == [first.id]
    release = store.get(second.id).release
    assert release is not None and release.reason == "migration finished"


def test_releasing_when_nothing_is_pulled_says_so(service: TestClient, fake_slack: FakeSlack, engine: Engine) -> None:
    answer = andon(service, fake_slack, RELEASER, "release just in case")
    assert "Nothing to release" in answer["text"] and AndonStore(engine).history() == []


def test_status_shows_who_pulled_when_why_and_over_what(
        service: TestClient, fake_slack: FakeSlack, engine: Engine) -> None:
    assert "not pulled" in andon(service, fake_slack, VIEWER, "status")["text"]
    pull = AndonStore(engine).pull(Scope(namespace="shop", rollout="web"), "p99 latency x3", "slack:U0ANA", "slack")

    shown = text_of(andon(service, fake_slack, VIEWER, "status")["blocks"])

    assert f"Pull {pull.id}" in shown and "rollout shop/web" in shown and "<@U0ANA>" in shown
    assert "p99 latency x3" in shown and f"<!date^{int(pull.at.timestamp())}^" in shown


def test_someone_not_on_the_allowlist_is_refused_and_nothing_changes(
        service: TestClient, fake_slack: FakeSlack, engine: Engine) -> None:
    for text in ("pull stop everything", "status", "release because", ""):
        answer = andon(service, fake_slack, STRANGER, text)
        assert answer["response_type"] == "ephemeral" and "not on Ringmaster's Slack allowlist" in answer["text"]
        assert f"{STRANGER}=" in answer["text"]
    assert AndonStore(engine).history() == [] and fake_slack.method("chat.postMessage") == []


def test_a_puller_cannot_release(service: TestClient, fake_slack: FakeSlack, engine: Engine) -> None:
    andon(service, fake_slack, PULLER, "pull checkout errors")

    answer = andon(service, fake_slack, PULLER, "release I changed my mind")

    assert "takes the releaser role" in answer["text"] and "you hold puller" in answer["text"]
    assert len(AndonStore(engine).active()) == 1


def test_a_viewer_cannot_pull(service: TestClient, fake_slack: FakeSlack, engine: Engine) -> None:
    answer = andon(service, fake_slack, VIEWER, "pull stop it")
    assert "takes the puller role" in answer["text"] and AndonStore(engine).history() == []


def test_a_reason_too_short_is_refused_and_nothing_is_pulled(
        service: TestClient, fake_slack: FakeSlack, engine: Engine) -> None:
    for text in ("pull", "pull x"):
        answer = andon(service, fake_slack, PULLER, text)
        assert "Nothing was pulled: reason must be 3 to 500 characters" in answer["text"]
    assert AndonStore(engine).history() == [] and fake_slack.method("chat.postMessage") == []


def test_with_release_by_other_the_puller_cannot_release_their_own_pull(
        settings: ServiceSettings, fake_slack: FakeSlack, engine: Engine) -> None:
    with TestClient(create_app(replace(settings, andon_release_by_other=True))) as service:
        andon(service, fake_slack, RELEASER, "pull checkout errors")

        own = andon(service, fake_slack, RELEASER, "release fixed it myself")
        assert "requires someone else to release it" in own["text"] and len(AndonStore(engine).active()) == 1

        other = andon(service, fake_slack, OTHER_RELEASER, "release checked the fix, all good")
        assert "You released" in other["text"] and AndonStore(engine).active() == []


def test_without_release_by_other_the_puller_may_release_their_own_pull(
        service: TestClient, fake_slack: FakeSlack, engine: Engine) -> None:
    andon(service, fake_slack, RELEASER, "pull checkout errors")
    assert "You released" in andon(service, fake_slack, RELEASER, "release fixed it myself")["text"]
    assert AndonStore(engine).active() == []


def test_help_offers_a_red_button_behind_a_confirm_dialog(service: TestClient, fake_slack: FakeSlack) -> None:
    for text in ("", "help", "frobnicate"):
        answer = andon(service, fake_slack, VIEWER, text)
        (button,) = [element for block in answer["blocks"] if block["type"] == "actions"
                     for element in block["elements"]]
        assert (button["action_id"], button["style"]) == (messages.PULL_BUTTON, "danger")
        assert button["text"]["text"] == "Pull the andon cord"
        assert button["confirm"]["style"] == "danger" and button["confirm"]["title"]["text"]
    assert "`frobnicate` is not an andon command" in answer["text"]


def test_the_button_opens_the_reason_modal_and_submitting_it_pulls(
        service: TestClient, fake_slack: FakeSlack, engine: Engine) -> None:
    button_response_url = fake_slack.response_url()
    clicked = service.post("/slack/events", content=(body := button_click(PULLER, button_response_url)),
                           headers=sign(body))
    assert (clicked.status_code, clicked.text) == (200, "")

    (opened,) = fake_slack.wait_for("/api/views.open")
    assert opened.authorization == f"Bearer {BOT_TOKEN}" and opened.body["trigger_id"] == "1337.43.button"
    view = opened.body["view"]
    (reason_input,) = [block for block in view["blocks"] if block["type"] == "input"]
    assert (view["type"], view["callback_id"]) == ("modal", messages.REASON_VIEW)
    assert (reason_input["element"]["min_length"], reason_input["element"]["max_length"]) == (3, 500)
    assert AndonStore(engine).history() == []

    submitted = service.post("/slack/events", content=(body := reason_submitted(
        PULLER, "error budget burning 14x", view["private_metadata"])), headers=sign(body))

    assert (submitted.status_code, submitted.text) == (200, "")  # the modal closes
    answer = fake_slack.answer_at(button_response_url)
    (pull,) = AndonStore(engine).active()
    assert (pull.reason, pull.actor, pull.via) == ("error budget burning 14x", f"slack:{PULLER}", "slack")
    assert answer["replace_original"] is True and f"pull {pull.id}" in answer["text"]
    assert "error budget burning 14x" in text_of(announcements(fake_slack, 1)[0])


@pytest.mark.parametrize(("user_id", "reason", "says"), [
    (PULLER, " x ", "reason must be 3 to 500 characters"),
    (VIEWER, "checkout errors", "takes the puller role"),
])
def test_the_modal_refuses_a_short_reason_or_a_user_who_may_not_pull_inline_and_nothing_is_pulled(
        service: TestClient, fake_slack: FakeSlack, engine: Engine, user_id: str, reason: str, says: str) -> None:
    metadata = json.dumps({"response_url": fake_slack.response_url()})
    response = service.post("/slack/events", content=(body := reason_submitted(user_id, reason, metadata)),
                            headers=sign(body))

    assert response.status_code == 200 and response.json()["response_action"] == "errors"
    assert says in response.json()["errors"][messages.REASON_BLOCK]
    assert AndonStore(engine).history() == [] and fake_slack.said() == []


def test_the_button_refuses_someone_who_may_not_pull_and_opens_no_modal(
        service: TestClient, fake_slack: FakeSlack, engine: Engine) -> None:
    response_url = fake_slack.response_url()
    for user_id in (STRANGER, VIEWER):
        clicked = service.post("/slack/events", content=(body := button_click(user_id, response_url)),
                               headers=sign(body))
        assert (clicked.status_code, clicked.text) == (200, "")
    refusals = fake_slack.wait_for(response_url.removeprefix(fake_slack.url), 2)
    assert {"not on Ringmaster's Slack allowlist" in call.body["text"] for call in refusals} == {True, False}
    assert fake_slack.method("views.open") == [] and AndonStore(engine).history() == []


def _unsigned(body: str) -> dict[str, str]:
    return {"Content-Type": FORM}


def _wrong_secret(body: str) -> dict[str, str]:
    return sign(body, secret="not-the-signing-secret")


def _replayed(body: str) -> dict[str, str]:
    return sign(body, at=time.time() - 310)  # the verifier compares whole seconds


def _from_the_future(body: str) -> dict[str, str]:
    return sign(body, at=time.time() + 310)


def _signature_of_another_body(body: str) -> dict[str, str]:
    return sign(body.replace("pull", "status"))


def _timestamp_not_a_number(body: str) -> dict[str, str]:
    return sign(body) | {"X-Slack-Request-Timestamp": "yesterday"}


NOT_SIGNED_NOW = [_unsigned, _wrong_secret, _replayed, _from_the_future, _signature_of_another_body]


@pytest.mark.parametrize("headers_for", [*NOT_SIGNED_NOW, _timestamp_not_a_number])
def test_a_request_not_signed_by_slack_in_the_last_5_minutes_gets_401_and_changes_nothing(
        service: TestClient, fake_slack: FakeSlack, engine: Engine,
        headers_for: Callable[[str], dict[str, str]]) -> None:
    body = slash_command(PULLER, "pull stop everything", fake_slack.response_url())

    response = service.post("/slack/events", content=body, headers=headers_for(body))

    assert response.status_code == 401 and response.json()["type"].endswith("/bad-slack-signature")
    assert AndonStore(engine).history() == [] and fake_slack.calls == []


@pytest.mark.parametrize("headers_for", NOT_SIGNED_NOW)
def test_bolt_behind_the_route_refuses_the_same_requests_with_401(
        service: TestClient, fake_slack: FakeSlack, engine: Engine,
        headers_for: Callable[[str], dict[str, str]]) -> None:
    body = slash_command(PULLER, "pull stop everything", fake_slack.response_url())
    bolt: App = service.app.state.slack.andon.bolt  # type: ignore[attr-defined]

    refused = bolt.dispatch(BoltRequest(body=body, headers={name.lower(): value
                                                            for name, value in headers_for(body).items()}))

    assert refused.status == 401  # before any listener, so nothing can be written later either
    assert AndonStore(engine).history() == [] and fake_slack.calls == []


@pytest.mark.parametrize(("body", "signed_status"), [
    (b"payload=notjson", 400), (b"payload=%5B1%5D", 400), (b"payload=%7B%22user%22%3A5%7D", 400), (b"{not json", 400),
    (b"\xff\xfe pull", 401),  # not UTF-8, which every Slack body is: slack_sdk's verifier cannot even read it
])
def test_a_malformed_body_is_refused_and_changes_nothing(
        service: TestClient, fake_slack: FakeSlack, engine: Engine, body: bytes, signed_status: int) -> None:
    unsigned = service.post("/slack/events", content=body, headers={"Content-Type": FORM})
    signed = service.post("/slack/events", content=body, headers=sign(body))

    assert unsigned.status_code == 401 and signed.status_code == signed_status
    assert signed.json()["type"].endswith("/bad-slack-request" if signed_status == 400 else "/bad-slack-signature")
    assert AndonStore(engine).history() == [] and fake_slack.calls == []


def test_without_slack_configured_the_request_url_answers_503_naming_what_to_set(sqlite_url: str) -> None:
    with TestClient(create_app(ServiceSettings(database_url=sqlite_url))) as service:
        body = slash_command(PULLER, "pull stop", "https://hooks.slack.invalid/x")
        response = service.post("/slack/events", content=body, headers=sign(body))
        assert isinstance(service.app.state.andon_announcer, Silent)  # type: ignore[attr-defined]

    assert response.status_code == 503 and response.headers["content-type"] == "application/problem+json"
    assert "RINGMASTER_SLACK_SIGNING_SECRET and RINGMASTER_SLACK_BOT_TOKEN" in response.json()["detail"]


def test_the_service_announces_through_slack_when_a_bot_token_and_channel_are_set(
        service: TestClient, fake_slack: FakeSlack, engine: Engine) -> None:
    announcer = service.app.state.andon_announcer  # type: ignore[attr-defined]
    pull = AndonStore(engine).pull(Scope(namespace="shop"), "payment provider down", "ana", "api")

    announcer.pulled(pull)

    (announced,) = announcements(fake_slack, 1)
    assert "namespace shop" in announced["text"] and "*ana*" in text_of(announced["blocks"])


def test_an_announcement_slack_refuses_is_logged_and_never_fails_or_blocks_the_pull(
        fake_slack: FakeSlack, engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    fake_slack.errors["chat.postMessage"] = "not_in_channel"
    announcer = SlackAnnouncer(WebClient(token=BOT_TOKEN, base_url=fake_slack.url + "/api/"), CHANNEL)
    pull = AndonStore(engine).pull(Scope(), "checkout errors", "ana", "api")

    with caplog.at_level(logging.ERROR, logger="rollout.slack.announce"):
        announcer.pulled(pull)
        announcer.close()

    assert f"pull {pull.id} was not announced" in caplog.text and "not_in_channel" in caplog.text


def test_an_unreachable_slack_is_logged_and_never_fails_the_pull(
        engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    nowhere = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = nowhere.server_address[1]
    nowhere.server_close()  # a port nothing listens on
    announcer = SlackAnnouncer(WebClient(token=BOT_TOKEN, base_url=f"http://127.0.0.1:{port}/api/", timeout=2),
                               CHANNEL)
    pull = AndonStore(engine).pull(Scope(), "checkout errors", "ana", "api")

    with caplog.at_level(logging.ERROR, logger="rollout.slack.announce"):
        announcer.pulled(pull)
        announcer.close()

    assert f"pull {pull.id} was not announced" in caplog.text


def test_the_allowlist_reads_member_ids_and_roles() -> None:
    assert parse_slack_users(" U01ABC=releaser, U02DEF=puller\nW03GHI=admin ") == {
        "U01ABC": "releaser", "U02DEF": "puller", "W03GHI": "admin"}
    assert parse_slack_users("") == {}


@pytest.mark.parametrize(("raw", "says"), [
    ("U01ABC", "is not a Slack member id and a role"),
    ("ana=releaser", "is not a Slack member id and a role"),
    ("U01ABC=boss", "'boss' is not a role"),
    ("U01ABC=puller,U01ABC=admin", "listed twice"),
])
def test_a_wrong_allowlist_stops_the_service_saying_what_is_wrong(
        raw: str, says: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RINGMASTER_SLACK_USERS", raw)
    with pytest.raises(SettingsError, match=says):
        ServiceSettings.from_environment()


def test_slack_settings_come_from_the_environment_and_secrets_stay_out_of_reprs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RINGMASTER_SLACK_SIGNING_SECRET", SECRET)
    monkeypatch.setenv("RINGMASTER_SLACK_BOT_TOKEN", BOT_TOKEN)
    monkeypatch.setenv("RINGMASTER_SLACK_CHANNEL", CHANNEL)
    monkeypatch.setenv("RINGMASTER_SLACK_API_URL", "http://127.0.0.1:9/api")
    monkeypatch.setenv("RINGMASTER_SLACK_USERS", "U01ABC=releaser")

    settings = ServiceSettings.from_environment()

    assert (settings.slack_signing_secret, settings.slack_bot_token, settings.slack_channel) == (
        SECRET, BOT_TOKEN, CHANNEL)
    assert settings.slack_api_url == "http://127.0.0.1:9/api/" and settings.slack_users == {"U01ABC": "releaser"}
    assert SECRET not in repr(settings) and BOT_TOKEN not in repr(settings)


@pytest.mark.parametrize(("text", "asked"), [
    ("", Help()), ("  HELP ", Help()), ("status", Status()),
    ("pull  checkout errors\nin eu-west", PullCord("checkout errors\nin eu-west")), ("pull", PullCord("")),
    ("release fixed", ReleaseCord("fixed")), ("release 7 fixed", ReleaseCord("fixed", 7)),
    ("release #7 fixed", ReleaseCord("fixed", 7)), ("release 7", ReleaseCord("", 7)),
    ("release \uff17 fixed", ReleaseCord("\uff17 fixed")),  # a full-width digit is not an id
    ("stop", Help(problem="`stop` is not an andon command.")),
])
def test_andon_text_is_read_as_a_command(text: str, asked: object) -> None:
    assert parse(text) == asked
