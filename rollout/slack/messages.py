"""What Ringmaster says in Slack (pure): the announcements of a pull and a release, the cord's
status, the help with its red button, and the modal asking for a reason. Each is Block Kit built with
slack_sdk's models, plus the plain `text` Slack shows in notifications.

Everything a person typed (reasons, actors) is escaped, so a reason cannot ping `<!channel>` or
forge a link; `slack:<member id>` actors are shown as mentions, which Slack renders as names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ConfirmObject,
    ContextBlock,
    InputBlock,
    MarkdownTextObject,
    PlainTextInputElement,
    PlainTextObject,
    SectionBlock,
)
from slack_sdk.models.views import View

from rollout.andon.scope import MAX_REASON, MIN_REASON
from rollout.andon.store import Pull

COMMAND = "/andon"
PULL_BUTTON = "andon_pull"  # action_id of the red button
REASON_VIEW = "andon_reason"  # callback_id of the modal
REASON_BLOCK = "reason"  # block_id and action_id of the modal's reason input
REASON_INPUT = "reason"
SLACK_ACTOR = "slack:"
STATUS_LISTED = 20  # Slack takes at most 50 blocks in a message; the rest are counted, not listed


@dataclass(frozen=True)
class SlackMessage:
    text: str  # shown in notifications, and where blocks cannot be
    blocks: Sequence[Block] = field(default_factory=tuple)

    def as_dicts(self) -> list[dict[str, Any]]:
        return [block.to_dict() for block in self.blocks]


def escape(typed: str) -> str:
    """`typed` as literal text in Slack's mrkdwn: no mentions, links or dates of its own."""
    return typed.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_actor(user_id: str) -> str:
    """How a Slack user is named as the actor of a pull or release: by member id, which cannot be changed."""
    return SLACK_ACTOR + user_id


def who(actor: str) -> str:
    if actor.startswith(SLACK_ACTOR):
        return f"<@{escape(actor.removeprefix(SLACK_ACTOR))}>"
    return f"*{escape(actor)}*"


def when(at: datetime) -> str:
    """`at` in each reader's own time zone (Slack's date formatting), UTC where it cannot be."""
    return f"<!date^{int(at.timestamp())}^{{date_short_pretty}} {{time}}|{at:%Y-%m-%d %H:%M} UTC>"


def plain(text: str) -> SlackMessage:
    return SlackMessage(text, (SectionBlock(text=MarkdownTextObject(text=text)),))


def pulled(pull: Pull) -> SlackMessage:
    """The announcement of a pull, for the andon channel."""
    headline = (f":rotating_light: *The andon cord is pulled* over {pull.scope}: those rollouts hold at their "
                "current step.")
    return SlackMessage(
        escape(f"Andon cord pulled over {pull.scope} by {pull.actor}: {pull.reason}"),
        (SectionBlock(text=MarkdownTextObject(text=f"{headline}\n>{escape(pull.reason)}")),
         ContextBlock(elements=[MarkdownTextObject(
             text=f"Pull {pull.id} by {who(pull.actor)} via {pull.via}, {when(pull.at)}. "
                  f"Release it with `{COMMAND} release {pull.id} <reason>`.")])),
    )


def released(pull: Pull) -> SlackMessage:
    """The announcement of a release, for the andon channel."""
    assert pull.release is not None, "only a released pull is announced as released"
    release = pull.release
    return SlackMessage(
        escape(f"Andon pull {pull.id} released by {release.actor}: {release.reason}"),
        (SectionBlock(text=MarkdownTextObject(
            text=f":white_check_mark: *Andon pull {pull.id} is released* ({pull.scope}).\n>{escape(release.reason)}")),
         ContextBlock(elements=[MarkdownTextObject(
             text=f"Released by {who(release.actor)} via {release.via}, {when(release.at)}. It was pulled by "
                  f"{who(pull.actor)}, {when(pull.at)}: {escape(pull.reason)}")])),
    )


def status(active: Sequence[Pull]) -> SlackMessage:
    """The active pulls: who, when, why and over what."""
    if not active:
        return plain(":large_green_circle: The andon cord is not pulled; rollouts go on as planned.")
    listed = [SectionBlock(text=MarkdownTextObject(
        text=f"*Pull {pull.id}* over {pull.scope}, by {who(pull.actor)} {when(pull.at)} via {pull.via}\n"
             f">{escape(pull.reason)}")) for pull in active[:STATUS_LISTED]]
    more = len(active) - len(listed)
    closing = f"…and {more} more: `GET /api/v1/andon` lists them all. " if more > 0 else ""
    return SlackMessage(
        f"The andon cord is pulled ({len(active)} active)",
        (SectionBlock(text=MarkdownTextObject(text=f":rotating_light: *The andon cord is pulled* "
                                                   f"({len(active)} active):")),
         *listed,
         ContextBlock(elements=[MarkdownTextObject(
             text=f"{closing}Release one with `{COMMAND} release <id> <reason>`.")])),
    )


def name_one(active: Sequence[Pull]) -> SlackMessage:
    """The answer to a release that names no pull while several are active."""
    lead = (f":warning: {len(active)} pulls are active; say which one to release with "
            f"`{COMMAND} release <id> <reason>`.")
    return SlackMessage(f"{len(active)} pulls are active; name the one to release",
                        (SectionBlock(text=MarkdownTextObject(text=lead)), *status(active).blocks))


def help_message(active_pulls: int, problem: str | None = None) -> SlackMessage:
    """How to use `/andon`, with the red button that opens the reason modal."""
    state = (f":rotating_light: The cord is pulled ({active_pulls} active)." if active_pulls
             else ":large_green_circle: The cord is not pulled.")
    usage = (f"`{COMMAND} pull <reason>` stops every rollout, `{COMMAND} release [<id>] <reason>` lets them go on, "
             f"`{COMMAND} status` lists the active pulls.")
    lead = f":warning: {escape(problem)}\n" if problem else ""
    button = ButtonElement(
        text=PlainTextObject(text="Pull the andon cord"), action_id=PULL_BUTTON, value="global", style="danger",
        confirm=ConfirmObject(
            title=PlainTextObject(text="Stop every rollout?"),
            text=MarkdownTextObject(text="Every rollout holds at its current step until someone releases the cord. "
                                         "You will be asked why."),
            confirm=PlainTextObject(text="Pull the cord"), deny=PlainTextObject(text="Cancel"), style="danger"),
    )
    return SlackMessage(
        f"{lead}{state} {usage}",
        (SectionBlock(text=MarkdownTextObject(text=f"{lead}{state}\n{usage}")), ActionsBlock(elements=[button])),
    )


def reason_modal(private_metadata: str) -> View:
    """The modal the red button opens: a required reason of MIN_REASON to MAX_REASON characters."""
    return View(
        type="modal", callback_id=REASON_VIEW, private_metadata=private_metadata,
        title=PlainTextObject(text="Pull the andon cord"), submit=PlainTextObject(text="Pull the cord"),
        close=PlainTextObject(text="Cancel"),
        blocks=[
            SectionBlock(text=MarkdownTextObject(text="Every rollout will hold at its current step until someone "
                                                      "releases the cord.")),
            InputBlock(block_id=REASON_BLOCK, label=PlainTextObject(text="Why?"),
                       hint=PlainTextObject(text="Shown to everyone in the andon channel and kept in the record."),
                       element=PlainTextInputElement(
                           action_id=REASON_INPUT, multiline=True, min_length=MIN_REASON, max_length=MAX_REASON,
                           placeholder=PlainTextObject(text="checkout errors up in eu-west"))),
        ],
    )


def pull_done(pull: Pull) -> SlackMessage:
    """The answer to whoever pulled."""
    return plain(f":rotating_light: You pulled the andon cord: pull {pull.id} over {pull.scope}. "
                 f"Release it with `{COMMAND} release {pull.id} <reason>`.")


def release_done(pull: Pull) -> SlackMessage:
    """The answer to whoever released."""
    return plain(f":white_check_mark: You released pull {pull.id} ({pull.scope}, pulled by {who(pull.actor)}: "
                 f"{escape(pull.reason)}).")
