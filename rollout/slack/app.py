"""The andon cord in Slack: `POST /slack/events`, the one request URL of the `/andon` slash command
and of the interactions (the red button, the reason modal), served by a Bolt app.

Slack wants an answer within 3 seconds. Bolt's sync App (process_before_response=False) runs each
listener on its own threads and answers the HTTP request as soon as the listener calls `ack()`;
every listener here acknowledges first and then reads or writes the database, answering through the
request's response_url (`respond`) or `views.open`.

The signature (v0, HMAC-SHA256 of `v0:<timestamp>:<body>` with the signing secret, at most 5 minutes
old) is checked before Bolt sees the request, because Bolt parses the body before it verifies it (a
body it cannot parse, or a timestamp that is not a number, would be a 500 there). Bolt checks again.
A signature already accepted is refused when it comes again (a replay within those 5 minutes), and
the body must be a slash command or interaction with every field its listener reads (payloads.py).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, assert_never

from fastapi import APIRouter, Request, Response
from slack_bolt import Ack, App, BoltContext, Respond
from slack_bolt.adapter.starlette.handler import to_bolt_request, to_starlette_response
from slack_bolt.request.internals import build_context
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier
from slack_sdk.webhook import WebhookClient
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from rollout.andon.announce import Announcer, Silent
from rollout.andon.scope import Scope, check_reason
from rollout.andon.store import AndonError, AndonStore
from rollout.api.problems import problem, problems
from rollout.auth.tokens import Role
from rollout.settings import ServiceSettings
from rollout.slack import messages
from rollout.slack.announce import SlackAnnouncer
from rollout.slack.commands import AndonCommand, Help, PullCord, ReleaseCord, Status, needed, parse
from rollout.slack.messages import COMMAND, REASON_BLOCK, REASON_INPUT, SlackMessage, escape, slack_actor
from rollout.slack.payloads import BadSlackRequest, slack_request
from rollout.slack.users import refusal

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
LISTENER_THREADS = 4
SIGNATURE_MAX_AGE_S = 5 * 60  # what slack_sdk's SignatureVerifier accepts, either way from now
REMEMBERED_SIGNATURES = 10_000  # far beyond what Slack sends in 5 minutes; only signed requests are remembered
SLACK_TIMEOUT_S = 10  # for each Web API call and response_url post; all are made after the ack

router = APIRouter(tags=["slack"])


@router.post(EVENTS_PATH, summary="Slack's request URL for /andon and its button and modal", response_class=Response,
             responses={200: {"description": "Bolt's acknowledgement: empty, or the modal's errors as JSON",
                              "content": {"text/plain": {}, "application/json": {}}},
                        **problems(400, 401, 413, 429, 503,
                                   s400="signed, but not a body Slack sends; `errors` names the fields at fault",
                                   s401="not signed by Slack, signed more than 5 minutes ago, or signed before",
                                   s503="Slack is not configured; the problem names the variables to set")})
async def slack_events(request: Request) -> Response:
    slack: SlackConnection = request.app.state.slack
    if slack.andon is None:
        return problem(503, "slack-not-configured", "Slack is not configured",
                       f"set {' and '.join(slack.missing)} and restart Ringmaster; docs/slack.md says where to "
                       "find them")
    return await slack.andon.handle(request)


class SeenSignatures:
    """The signatures of the requests accepted in the last SIGNATURE_MAX_AGE_S (twice over, for clocks ahead).

    Slack signs each request it sends once, with its time: the same signature again is someone replaying a
    request they captured, within the minutes its timestamp still passes. Kept in memory, so each process
    (each replica, each worker) refuses the replays it sees itself.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: OrderedDict[str, float] = OrderedDict()

    def first_time(self, signature: str) -> bool:
        """Whether `signature` is new, remembering it from now on."""
        now = self._clock()
        with self._lock:
            while self._seen and (next(iter(self._seen.values())) < now - 2 * SIGNATURE_MAX_AGE_S
                                  or len(self._seen) >= REMEMBERED_SIGNATURES):
                self._seen.popitem(last=False)
            if signature in self._seen:
                return False
            self._seen[signature] = now
            return True


class SlackAndon:
    """The Bolt app behind /slack/events and what its listeners act on."""

    def __init__(self, *, signing_secret: str, client: WebClient, users: Mapping[str, Role], store: AndonStore,
                 announcer: Announcer, release_by_other: bool) -> None:
        self.users = users
        self.store = store
        self.announcer = announcer
        self.release_by_other = release_by_other
        self.verifier = SignatureVerifier(signing_secret)
        self.seen = SeenSignatures()
        self._listeners = ThreadPoolExecutor(max_workers=LISTENER_THREADS, thread_name_prefix="slack-listener")
        # token_verification_enabled=False: auth.test on the first request, not at start-up, so Ringmaster
        # starts (and its HTTP andon works) while Slack is unreachable.
        self.bolt = App(signing_secret=signing_secret, client=client, token_verification_enabled=False,
                        process_before_response=False, listener_executor=self._listeners)
        self.bolt.command(COMMAND)(self._on_command)
        self.bolt.action(messages.PULL_BUTTON)(self._on_pull_button)
        self.bolt.view(messages.REASON_VIEW)(self._on_reason)

    def close(self) -> None:
        """Let the listeners still at work finish, then stop."""
        self._listeners.shutdown(wait=True)

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        if not self._signed_by_slack(body, request.headers):
            log.warning("refused a request to %s from %s: not signed by Slack with this signing secret, or stale",
                        EVENTS_PATH, request.client.host if request.client else "an unknown address")
            return problem(401, "bad-slack-signature", "The request is not signed by Slack",
                           "X-Slack-Signature must be v0= and the HMAC-SHA256 of v0:<timestamp>:<body> with the "
                           "app's signing secret, and X-Slack-Request-Timestamp at most 5 minutes from now")
        if not self.seen.first_time(request.headers["X-Slack-Signature"]):
            log.warning("refused a request to %s from %s: its signature was accepted before (a replay)", EVENTS_PATH,
                        request.client.host if request.client else "an unknown address")
            return problem(401, "replayed-slack-request", "The request was received before",
                           "Slack signs each request once; this signature was already accepted, so the request "
                           "is a replay")
        try:
            fields = slack_request(body, request.headers.get("Content-Type"))
            bolt_request = to_bolt_request(request, body)
        except BadSlackRequest as error:
            return problem(400, "bad-slack-request", "The request is not one Slack sends",
                           f"not a {COMMAND} command or an interaction of its messages: {error}", error.errors)
        except ValueError as error:  # what Bolt's parser raises on a body it cannot read
            return problem(400, "bad-slack-request", "The request is not one Slack sends",
                           f"the body is not a slash command or an interaction payload ({error})")
        # Bolt's own parse of the body may differ (see payloads.py); the listeners read the fields checked.
        bolt_request.body = fields
        bolt_request.context = build_context(BoltContext(), fields)
        # dispatch blocks until the listener's ack(): on a worker thread, not the event loop.
        return to_starlette_response(await run_in_threadpool(self.bolt.dispatch, bolt_request))

    def _signed_by_slack(self, body: bytes, headers: Mapping[str, str]) -> bool:
        try:
            return self.verifier.is_valid_request(body, dict(headers))
        except ValueError:  # a timestamp that is not a number, or a body that is not UTF-8 (Slack's are)
            return False

    def _on_command(self, ack: Ack, command: dict[str, Any], respond: Respond) -> None:
        ack()
        answer = self._carry_out(parse(str(command.get("text") or "")), str(command["user_id"]))
        respond(text=answer.text, blocks=answer.as_dicts(), response_type="ephemeral")

    def _on_pull_button(self, ack: Ack, body: dict[str, Any], client: WebClient, respond: Respond) -> None:
        ack()
        user_id = str(body["user"]["id"])
        refused = refusal(self.users, user_id, "puller", "pull the andon cord")
        if refused is not None:
            respond(text=f":no_entry: {refused}", response_type="ephemeral", replace_original=False)
            return
        # The modal's submission has no response_url of its own: it answers through the button's.
        reply_to = json.dumps({"response_url": body.get("response_url")})
        try:
            client.views_open(trigger_id=body["trigger_id"], view=messages.reason_modal(reply_to))
        except SlackApiError as error:
            log.error("could not open the andon reason modal for slack user %s: %s", user_id,
                      error.response.get("error"))
            respond(text=f":warning: Slack would not open the reason form ({error.response.get('error')}); "
                         f"use `{COMMAND} pull <reason>` instead.", response_type="ephemeral", replace_original=False)

    def _on_reason(self, ack: Ack, body: dict[str, Any], view: dict[str, Any]) -> None:
        user_id = str(body["user"]["id"])
        typed = str(view["state"]["values"][REASON_BLOCK][REASON_INPUT].get("value") or "")
        refused = refusal(self.users, user_id, "puller", "pull the andon cord")
        if refused is not None:
            ack(response_action="errors", errors={REASON_BLOCK: refused})
            return
        try:
            check_reason(typed)
        except ValueError as error:
            ack(response_action="errors", errors={REASON_BLOCK: str(error)})
            return
        ack()  # closes the modal
        answer = self._guarded(lambda: self._pull(typed, user_id))
        reply_to = json.loads(view.get("private_metadata") or "{}").get("response_url")
        if reply_to:
            self._reply(str(reply_to), answer)

    def _carry_out(self, asked: AndonCommand, user_id: str) -> SlackMessage:
        role, doing = needed(asked)
        refused = refusal(self.users, user_id, role, doing)
        if refused is not None:
            log.info("slack user %s may not %s: %s", user_id, doing, refused)
            return messages.plain(f":no_entry: {refused}")
        match asked:
            case Help(problem=problem_text):
                return self._guarded(lambda: messages.help_message(len(self.store.active()), problem_text))
            case Status():
                return self._guarded(lambda: messages.status(self.store.active()))
            case PullCord(reason=reason):
                return self._guarded(lambda: self._pull(reason, user_id))
            case ReleaseCord(reason=reason, pull_id=pull_id):
                return self._guarded(lambda: self._release(reason, pull_id, user_id))
            case _:
                assert_never(asked)

    def _pull(self, reason: str, user_id: str) -> SlackMessage:
        try:
            reason = check_reason(reason)
        except ValueError as error:
            return messages.plain(f":warning: Nothing was pulled: {error}. Write e.g. "
                                  f"`{COMMAND} pull checkout errors up in eu-west`.")
        pull = self.store.pull(Scope(), reason, slack_actor(user_id), "slack")
        log.info("andon pull %d by slack user %s: %s", pull.id, user_id, reason)
        self.announcer.pulled(pull)
        return messages.pull_done(pull)

    def _release(self, reason: str, pull_id: int | None, user_id: str) -> SlackMessage:
        if pull_id is None:
            active = self.store.active()
            if not active:
                return messages.plain("Nothing to release: the andon cord is not pulled.")
            if len(active) > 1:
                return messages.name_one(active)
            pull_id = active[0].id
        try:
            reason = check_reason(reason)
        except ValueError as error:
            return messages.plain(f":warning: Nothing was released: {error}. Write e.g. "
                                  f"`{COMMAND} release {pull_id} fixed by the rollback of web 1.4.2`.")
        released = self.store.release(pull_id, reason, slack_actor(user_id), "slack",
                                      release_by_other=self.release_by_other)
        log.info("andon pull %d released by slack user %s: %s", pull_id, user_id, reason)
        self.announcer.released(released)
        return messages.release_done(released)

    def _guarded(self, work: Callable[[], SlackMessage]) -> SlackMessage:
        """What `work` says, or why the andon cord refused it or could not be reached."""
        try:
            return work()
        except AndonError as error:
            return messages.plain(f":warning: {escape(str(error))}")
        except SQLAlchemyError as error:
            log.error("the andon cord's database failed a Slack request: %s", error)
            return messages.plain(":warning: Ringmaster cannot reach its database right now; try again, or use "
                                  "its HTTP API (`/api/v1/andon`).")

    @staticmethod
    def _reply(response_url: str, answer: SlackMessage) -> None:
        try:
            WebhookClient(response_url, timeout=SLACK_TIMEOUT_S).send(
                text=answer.text, blocks=answer.as_dicts(), response_type="ephemeral", replace_original=True)
        except OSError as error:
            log.error("could not answer through Slack's response_url: %s", error)


class SlackConnection:
    """Ringmaster's Slack, as far as it is configured: the announcer of pulls and releases (Silent
    without a bot token and a channel) and the Bolt app (None without a signing secret and a bot token)."""

    def __init__(self, settings: ServiceSettings, store: AndonStore) -> None:
        client = None if settings.slack_bot_token is None else WebClient(
            token=settings.slack_bot_token, base_url=settings.slack_api_url, timeout=SLACK_TIMEOUT_S)
        self.announcer: Announcer = (SlackAnnouncer(client, settings.slack_channel)
                                     if client is not None and settings.slack_channel else Silent())
        self.missing = [name for name, value in (("RINGMASTER_SLACK_SIGNING_SECRET", settings.slack_signing_secret),
                                                 ("RINGMASTER_SLACK_BOT_TOKEN", settings.slack_bot_token))
                        if not value]
        self.andon: SlackAndon | None = None
        if client is not None and settings.slack_signing_secret:
            if not settings.slack_users:
                log.warning("Slack is connected but RINGMASTER_SLACK_USERS is empty: every /andon is refused")
            self.andon = SlackAndon(signing_secret=settings.slack_signing_secret, client=client,
                                    users=settings.slack_users, store=store, announcer=self.announcer,
                                    release_by_other=settings.andon_release_by_other)

    def close(self) -> None:
        if self.andon is not None:
            self.andon.close()
        if isinstance(self.announcer, SlackAnnouncer):
            self.announcer.close()
