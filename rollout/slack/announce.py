"""Announcing pulls and releases in the andon channel (RINGMASTER_SLACK_CHANNEL).

A pull must never wait for Slack nor fail because of it: `pulled` and `released` hand the message
to one background thread and return at once; a post that fails is logged and dropped. One thread,
so a channel reads pulls and releases in the order they happened.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from rollout.andon.store import Pull
from rollout.slack import messages
from rollout.slack.messages import SlackMessage

log = logging.getLogger(__name__)


class SlackAnnouncer:
    """The Announcer (rollout/andon/announce.py) that posts to a Slack channel."""

    def __init__(self, client: WebClient, channel: str) -> None:
        self.client = client
        self.channel = channel
        self._poster = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slack-announce")

    def pulled(self, pull: Pull) -> None:
        self._post(f"pull {pull.id}", messages.pulled(pull))

    def released(self, pull: Pull) -> None:
        self._post(f"release of pull {pull.id}", messages.released(pull))

    def close(self) -> None:
        """Post what is queued (each post gives up after the client's timeout), then stop."""
        self._poster.shutdown(wait=True)

    def _post(self, what: str, message: SlackMessage) -> None:
        try:
            self._poster.submit(self._send, what, message)
        except RuntimeError:  # closed: the service is stopping
            log.warning("the %s was not announced in Slack: the service is stopping", what)

    def _send(self, what: str, message: SlackMessage) -> None:
        try:
            self.client.chat_postMessage(channel=self.channel, text=message.text, blocks=message.as_dicts())
        except SlackApiError as error:
            log.error("the %s was not announced in Slack channel %s: Slack answered %s; check the bot token and "
                      "that the bot is in the channel (/invite @Ringmaster)", what, self.channel,
                      error.response.get("error"))
        except Exception as error:  # a background post has nobody to raise to: log whatever stopped it
            log.error("the %s was not announced in Slack channel %s: %s: %s", what, self.channel,
                      type(error).__name__, error)
