"""Who hears of a pull or a release besides the controller: Slack, when it is configured
(rollout/slack/), nobody otherwise. An announcer must not block or fail the pull it announces."""

from __future__ import annotations

from typing import Protocol

from rollout.andon.store import Pull


class Announcer(Protocol):
    def pulled(self, pull: Pull) -> None: ...

    def released(self, pull: Pull) -> None: ...


class Silent:
    """Tells nobody."""

    def pulled(self, pull: Pull) -> None:
        return None

    def released(self, pull: Pull) -> None:
        return None
